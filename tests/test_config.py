"""Config loading: defaults fill what a YAML omits; unknown keys, wrong types and bad values are refused
with a message naming the file and the key."""
import dataclasses
from pathlib import Path

import pytest

from common.errors import ConfigError
from models.config import MemoryConfig
from pipeline.engine.config import PipelineConfig
from pipeline.engine.schedulers import MSPipe
from pipeline.run.config import RunConfig, apply_overrides, load_config, parse_settings, validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.model in ("tgn", "jodie", "apan", "tgat", "dyrep", "edgebank")
    assert cfg.train.batch_size in (200, 600)


@pytest.mark.parametrize("path", CONFIGS[:3], ids=lambda p: p.name)
def test_a_config_is_a_frozen_record_that_round_trips_through_plain_data(path):
    cfg = load_config(path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    assert validate_config(cfg.to_dict()) == cfg


def test_each_default_has_one_source():
    """The YAML defaults, the model's and the schedulers' defaults all read the section records."""
    assert validate_config({}) == RunConfig()
    assert validate_config({"memory": None}).memory is None
    assert RunConfig().memory == MemoryConfig()
    default = MSPipe()
    assert (default.k_max, default.warmup_batches, default.delayed_fetch) == (
        PipelineConfig.k_max, PipelineConfig.warmup_batches, PipelineConfig.delayed_fetch)


def test_defaults_fill_missing_keys():
    cfg = validate_config({"train": {"lr": 0.001}})
    assert cfg.train.lr == 0.001
    assert cfg.train.batch_size == 600
    assert cfg.pipeline.mitigation.quantile == 0.99


def write(tmp_path, text):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key", [
    ("trian: {lr: 0.1}\n", "trian"),
    ("train: {lr: 0.1, batchsize: 3}\n", "train.batchsize"),
    ("pipeline: {mitigation: {gama: 0.5}}\n", "pipeline.mitigation.gama"),
])
def test_unknown_key_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message


@pytest.mark.parametrize("text, key", [
    ("train: {batch_size: 0}\n", "train.batch_size"),
    ("train: {batch_size: 2.5}\n", "train.batch_size"),
    ("train: {lr: fast}\n", "train.lr"),
    ("train: {weight_decay: -0.1}\n", "train.weight_decay"),
    ("pipeline: {mode: turbo}\n", "pipeline.mode"),
    ("embedding: {dropout: 1.5}\n", "embedding.dropout"),
    ("sampler: {fanouts: [-1]}\n", "sampler.fanouts"),
    ("embedding: {heads: 3}\n", "embedding.dim_out"),
    ("pipeline: {delayed_fetch: 1}\n", "pipeline.delayed_fetch"),
    ("embedding: {query_time: query}\n", "embedding.query_time"),
    ("memory: {deliver_to: neighbours}\nembedding: {query_time: batch}\n", "embedding.query_time"),
])
def test_bad_values_are_refused(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "train: {lr: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")


def test_overrides_are_validated():
    cfg = validate_config({})
    assert apply_overrides(cfg, {"train.epochs": 3, "pipeline.k": None}).train.epochs == 3
    with pytest.raises(ConfigError, match="pipeline.k"):
        apply_overrides(cfg, {"pipeline.k": 0})
    with pytest.raises(ConfigError, match="nosuch.key"):
        apply_overrides(cfg, {"nosuch.key": 1})


def test_settings_are_read_as_yaml_and_validated_like_the_file():
    overrides = parse_settings(["memory.update_time=batch", "pipeline.k=16", "pipeline.mitigation.enabled=true",
                                "sampler.fanouts=[5, 5]", "embedding.layers=2"])
    assert overrides == {"memory.update_time": "batch", "pipeline.k": 16, "pipeline.mitigation.enabled": True,
                         "sampler.fanouts": [5, 5], "embedding.layers": 2}
    cfg = apply_overrides(validate_config({}), overrides)
    assert (cfg.memory.update_time, cfg.pipeline.k) == ("batch", 16)
    with pytest.raises(ConfigError, match="memory.update_time"):
        apply_overrides(cfg, parse_settings(["memory.update_time=later"]))
    for bad in ("memory.update_time", "=batch", "pipeline.k=[1"):
        with pytest.raises(ConfigError, match="--set"):
            parse_settings([bad])


def test_memoryless_model_needs_attention():
    cfg = validate_config({"memory": None})
    assert cfg.memory is None
    with pytest.raises(ConfigError, match="embedding.module"):
        validate_config({"memory": None, "embedding": {"module": "jodie"}})


@pytest.mark.parametrize("text, key", [
    ("pipeline: {auto: {candidates: [sequential, auto]}}\n", "pipeline.auto.candidates"),
    ("pipeline: {auto: {candidates: [turbo]}}\n", "pipeline.auto.candidates"),
    ("pipeline: {auto: {candidates: []}}\n", "pipeline.auto.candidates"),
    ("pipeline: {auto: {trial_batches: 1}}\n", "pipeline.auto.trial_batches"),
    ("pipeline: {auto: {margin: 1.0}}\n", "pipeline.auto.margin"),
    ("pipeline: {auto: {margin: -0.1}}\n", "pipeline.auto.margin"),
    ("pipeline: {auto: {drop: -0.5}}\n", "pipeline.auto.drop"),
    ("pipeline: {auto: {recheck_every: 0}}\n", "pipeline.auto.recheck_every"),
])
def test_bad_auto_settings_are_refused(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))
