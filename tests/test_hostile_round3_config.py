"""Hostile configs, round three (issue 40): sizes, names, YAML and --resume.

- One bounds check (`pipeline/run/sizes.py`) estimates what a config asks to allocate (the model's
  parameters; per batch, its input-node rows and the common-neighbour predictor's pair tables; the memory
  store) before anything is allocated: when a config is validated (for the smallest stream) and when a run's
  objects are built for a stream (`build_setup`, for training and `evaluate.py` alike). Over a limit is one
  line naming the keys and the estimate, exit 2.
- `pipeline.auto.rounds` has a sane maximum; `sampler.fanouts` must have one entry per attention layer;
  list items are integers below 2**63 like every other integer.
- `model` must be a registered name; `--set key=` (no value) is refused; `--set memory=null` is a value.
- The config loader refuses a duplicate key (file and lines) and reads `1e-3` as a float, as YAML 1.2 does.
- `--resume` compares the run's identity as a whole with the checkpoint's: seed, dataset, config, plugins.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from graph.synthetic import synthetic_events
from pipeline.run import setup as run_setup
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import (
    MAX_AUTO_ROUNDS, NULL, apply_overrides, load_config, parse_settings, read_yaml, validate_config,
)
from pipeline.run.setup import build_setup
from pipeline.run.sizes import MAX_PARAMETERS, MAX_TENSOR_BYTES, SMALLEST, StreamSizes, check_sizes, tensors
from small import small_sections
from test_faults import assert_one_error_line, cli_args
from test_hostile_config import refused  # one short ConfigError line, quickly

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CN = {"predictor": {"module": "common_neighbours"}}


def with_settings(config: Path, *settings: str):
    return apply_overrides(load_config(config), parse_settings(list(settings)))


@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    path = workdir / "small.yml"
    path.write_text(yaml.safe_dump(small_sections(train={"epochs": 1})))
    return path


@pytest.fixture(scope="module")
def events():
    return synthetic_events(num_nodes=60, num_events=3000, seed=3)


# --- 3: pipeline.auto.rounds -------------------------------------------------------------------------------

@pytest.mark.parametrize("rounds", [MAX_AUTO_ROUNDS + 1, 100_000_000, 2**63 - 1])
def test_auto_rounds_have_a_sane_maximum(rounds):
    refused(lambda: validate_config({"pipeline": {"auto": {"rounds": rounds}}}, "x.yml"),
            "x.yml", "'pipeline.auto.rounds'", f"at most {MAX_AUTO_ROUNDS}")
    assert validate_config({"pipeline": {"auto": {"rounds": MAX_AUTO_ROUNDS}}}).pipeline.auto.rounds == MAX_AUTO_ROUNDS


# --- 4 and 9: one bounds check on what a config allocates --------------------------------------------------

@pytest.mark.parametrize("config, settings, keys", [
    ("tgn.yml", ["memory.dim=100000"], ["'memory.dim'", "parameters"]),
    ("tgn.yml", ["memory.dim=1000000000"], ["'memory.dim'", "parameters"]),
    ("tgn.yml", ["embedding.dim_out=1000000"], ["'embedding.dim_out'", "parameters"]),
    ("tgat.yml", ["embedding.layers=2", "embedding.dim_time=10000000"], ["'embedding.dim_time'", "parameters"]),
    ("tgn_cn.yml", ["sampler.fanouts=[100000]"], ["'sampler.fanouts'", "pair table"]),
    ("tgn_cn.yml", ["sampler.fanouts=[1000000000]"], ["'sampler.fanouts'"]),
    ("tgn.yml", ["memory.mailbox_size=1000000000"], ["'memory.mailbox_size'", "GiB"]),
    ("tgn.yml", ["eval.mrr_negatives=10000000000"], ["'eval.mrr_negatives'"]),
    ("tgn.yml", ["train.num_neg=100000000000"], ["'train.num_neg'"]),
])
def test_sizes_past_the_limits_are_refused_while_the_config_is_validated(config, settings, keys):
    message = refused(lambda: with_settings(CONFIGS / config, *settings), "command line", "about", *keys)
    assert "MAX_PARAMETERS" in message or "MAX_TENSOR_BYTES" in message


def test_integers_in_lists_are_below_2_63_too():
    refused(lambda: with_settings(CONFIGS / "tgn.yml", "sampler.fanouts=[99999999999999999999]"),
            "'sampler.fanouts'", "below 2**63")


def test_the_stream_bounds_what_the_config_alone_cannot(events, monkeypatch):
    """A common-neighbour fanout of 20,000 fits a one-event batch but not this stream's batches of 100:
    refused by build_setup before the model (or anything else of that size) is built."""
    cfg = validate_config(small_sections(sampler={"fanouts": [20000]}, **CN))
    monkeypatch.setattr(run_setup, "build_model", lambda *args: pytest.fail("the model was built"))
    refused(lambda: build_setup(cfg, events, torch.device("cpu"), 0), "the config", "'sampler.fanouts'",
            "pair table", f"on {events.name}", "GiB")


def test_a_huge_fanout_that_the_degrees_bound_is_not_refused(events):
    """The recent sampler draws at most a node's degree: fanouts of a billion on a small stream are fine."""
    cfg = validate_config(small_sections(sampler={"fanouts": [10**9]}))
    check_sizes(cfg, "x", StreamSizes.of(events))


def test_the_stream_sizes_come_from_the_stream(events):
    sizes = StreamSizes.of(events)
    assert (sizes.num_events, sizes.num_nodes, sizes.dim_edge_feat) == (3000, events.num_nodes, 0)
    degrees = [int(((events.src == v) | (events.dst == v)).sum() + ((events.src == v) & (events.dst == v)).sum())
               for v in range(events.num_nodes)]
    assert sizes.max_degree == max(degrees)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("stream", [
    StreamSizes("wikipedia", 157_474, 9_227, 0, 172, 1_937),
    StreamSizes("enron", 125_235, 184, 0, 0, 21_512),
    StreamSizes("100M events", 100_000_000, 2_000_000, 0, 0, 1_000_000),
])
def test_the_shipped_configs_fit_the_limits_on_large_streams(path, stream):
    cfg = load_config(path)
    check_sizes(cfg, str(path), stream)
    assert max(size.amount for size in tensors(cfg, stream)) < MAX_TENSOR_BYTES / 4


def test_the_smallest_stream_is_a_lower_bound():
    """What validate_config refuses is refused on every stream: the smallest has one event, one node, no
    features and no earlier neighbour."""
    assert (SMALLEST.num_events, SMALLEST.num_nodes, SMALLEST.dim_node_feat, SMALLEST.dim_edge_feat,
            SMALLEST.max_degree) == (1, 1, 0, 0, 0)
    assert MAX_PARAMETERS == 2**30 and MAX_TENSOR_BYTES == 2**33


@pytest.mark.parametrize("settings, fragments", [
    (["memory.dim=100000"], ["'memory.dim'", "parameters"]),
    (["memory.dim=1000000000"], ["'memory.dim'", "parameters"]),
    (["sampler.fanouts=[1000000000]", "predictor.module=common_neighbours"], ["'sampler.fanouts'"]),
    (["sampler.fanouts=[99999999999999999999]"], ["'sampler.fanouts'", "2**63"]),
    (["pipeline.auto.rounds=9223372036854775807"], ["'pipeline.auto.rounds'"]),
])
def test_hostile_sizes_on_the_command_line_are_one_line_exit_2(config_file, data_file, train_cli, tmp_path,
                                                              settings, fragments):
    out = tmp_path / "run"
    extra = [arg for setting in settings for arg in ("--set", setting)]
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, *extra))
    assert code == 2, stderr
    assert_one_error_line(stderr, *fragments)
    assert not out.exists()


def test_the_issues_common_neighbour_run_is_refused_before_training(data_file, train_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = train_cli(*cli_args(CONFIGS / "tgn_cn.yml", data_file, out, "--epochs", "1",
                                               "--set", "sampler.fanouts=[100000]"))
    assert code == 2, stderr
    assert_one_error_line(stderr, "'sampler.fanouts'", "pair table", "GiB")
    assert "stage" not in stderr and "epoch" not in stdout


@pytest.fixture(scope="module")
def one_epoch_run(config_file, data_file, workdir, scripts_dir) -> Path:
    import subprocess
    import sys
    out = workdir / "trained"
    subprocess.run([sys.executable, str(scripts_dir / "train.py"), *cli_args(config_file, data_file, out),
                    "--mode", "sequential"], check=True, capture_output=True)
    return out


def stored_config_edited(run: Path, tmp_path: Path, **sections) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    state = torch.load(copy / CHECKPOINT_NAME, weights_only=True)
    for section, values in sections.items():
        state["config"][section].update(values)
    torch.save(state, copy / CHECKPOINT_NAME)
    return copy


@pytest.mark.parametrize("sections, fragments", [
    ({"memory": {"dim": 10**9}}, ["'memory.dim'", "parameters"]),
    ({"memory": {"dim": 100_000}}, ["'memory.dim'", "parameters"]),
    ({"sampler": {"fanouts": [100_000]}, "predictor": {"module": "common_neighbours"}},
     ["'sampler.fanouts'", "pair table"]),
])
def test_evaluate_bounds_a_checkpoints_stored_config(one_epoch_run, data_file, evaluate_cli, tmp_path, sections,
                                                     fragments):
    run = stored_config_edited(one_epoch_run, tmp_path, **sections)
    code, stdout, stderr = evaluate_cli("--run", str(run), "--data", str(data_file))
    assert code == 2, stderr
    assert_one_error_line(stderr, str(run / CHECKPOINT_NAME), "stored config", *fragments)
    assert stdout == ""


# --- 13: sampler.fanouts and embedding.layers -----------------------------------------------------------------

@pytest.mark.parametrize("fanouts, layers", [([10, 10], 1), ([10], 2), ([10, 10, 10], 2)])
def test_fanouts_and_attention_layers_must_agree(fanouts, layers):
    refused(lambda: validate_config({"sampler": {"fanouts": fanouts}, "embedding": {"layers": layers}}, "x.yml"),
            "x.yml", "'sampler.fanouts'", "'embedding.layers'", f"is {layers}")


def test_embeddings_without_layers_take_any_fanouts():
    cfg = validate_config({"sampler": {"fanouts": [0, 0]}, "memory": {"updater": "rnn"},
                           "embedding": {"module": "jodie", "layers": 1}})
    assert cfg.sampler.fanouts == (0, 0)


def test_a_fanout_layer_mismatch_on_the_command_line_is_a_config_error_not_a_bug(config_file, data_file, train_cli,
                                                                                 tmp_path):
    code, _, stderr = train_cli(*cli_args(config_file, data_file, tmp_path / "run", "--set", "sampler.fanouts=[5,5]"))
    assert code == 2, stderr
    assert_one_error_line(stderr, "'sampler.fanouts'", "'embedding.layers'")
    assert "stage" not in stderr


# --- 6: the model name ------------------------------------------------------------------------------------------

def test_an_unknown_model_name_is_refused_with_the_registered_names():
    message = refused(lambda: validate_config({"model": "nosuchmodel"}, "x.yml"), "x.yml", "'model'", "nosuchmodel")
    for name in ("tgn", "jodie", "apan", "tgat", "dyrep", "edgebank"):
        assert name in message


def test_a_plugin_may_register_a_model_name():
    from models.config import MODELS
    MODELS.register("round3_label")("a label registered by a test")
    assert validate_config({"model": "round3_label"}).model == "round3_label"


def test_an_unknown_model_on_the_command_line(config_file, data_file, train_cli, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, "--set", "model=nosuchmodel"))
    assert code == 2, stderr
    assert_one_error_line(stderr, "'model'", "nosuchmodel", "tgn")
    assert not out.exists()


# --- 7: duplicate keys --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, lines", [
    ("train: {lr: 0.001}\ntrain: {epochs: 3}\n", "'train'", "lines 1 and 2"),
    ("model: tgn\ntrain:\n  lr: 0.001\n  epochs: 2\n  lr: 0.01\n", "'train.lr'", "lines 3 and 5"),
    ("pipeline: {auto: {rounds: 2, rounds: 3}}\n", "'pipeline.auto.rounds'", "lines 1 and 1"),
])
def test_a_duplicate_key_is_refused_with_file_and_lines(tmp_path, text, key, lines):
    path = tmp_path / "dup.yml"
    path.write_text(text)
    refused(lambda: load_config(path), str(path), key, "twice", lines)


def test_a_duplicate_key_in_a_set_value_is_refused():
    refused(lambda: parse_settings(["train={lr: 0.1, lr: 0.2}"]), "--set", "'lr'", "twice")


def test_keys_merged_in_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yml"
    path.write_text("memory: &m {dim: 16, dim_time: 8}\nembedding: {dim_out: 16, dim_time: 8}\n"
                    "train: {<<: {lr: 0.1, epochs: 2}, lr: 0.01}\n")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.epochs, cfg.memory.dim) == (0.01, 2, 16)


# --- 8: empty and null values in --set ------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["train.lr=", "train.lr=  ", "memory.dim="])
def test_an_empty_set_value_is_refused_naming_the_key(setting):
    refused(lambda: parse_settings([setting]), "--set", f"'{setting.split('=')[0]}'", "no value")


def test_null_in_set_is_a_value_not_an_option_left_out():
    assert parse_settings(["memory=null"]) == {"memory": NULL}
    cfg = apply_overrides(load_config(CONFIGS / "tgat.yml"), parse_settings(["memory=null"]))
    assert cfg.memory is None
    assert apply_overrides(load_config(CONFIGS / "tgn.yml"), {"memory": None, "train.epochs": None}).memory is not None
    refused(lambda: apply_overrides(validate_config({}), parse_settings(["train.lr=null"])), "'train.lr'", "number")


def test_an_empty_learning_rate_on_the_command_line(config_file, data_file, train_cli, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, "--set", "train.lr="))
    assert code == 2, stderr
    assert_one_error_line(stderr, "'train.lr'", "no value")
    assert not out.exists()


# --- 16: floats as YAML 1.2 reads them ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("5e4", 5e4), ("1.0e3", 1e3), ("1.e3", 1e3), (".5e1", 5.0), ("-2e-2", -2e-2),
    ("+1e+2", 100.0), ("1.0e-3", 1e-3), ("0.5", 0.5), ("10", 10),
])
def test_floats_with_an_exponent_are_numbers(text, value):
    read = read_yaml(text, "x")
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize("text", ["1e", "e3", "1e3x", "'1e-3'", "1.2.3e4"])
def test_what_is_not_a_float_stays_a_string(text):
    assert isinstance(read_yaml(text, "x"), str)


def test_the_float_resolver_is_the_config_loaders_only():
    assert yaml.safe_load("1e-3") == "1e-3"


def test_a_learning_rate_of_1e_3_in_set_and_in_a_file(tmp_path):
    assert with_settings(CONFIGS / "tgn.yml", "train.lr=1e-3").train.lr == 1e-3
    path = tmp_path / "lr.yml"
    path.write_text("train: {lr: 5e-4, weight_decay: 1e-5}\n")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.weight_decay) == (5e-4, 1e-5)


# --- 5: --resume with another identity ------------------------------------------------------------------------------

def resumed(train_cli, config_file, data_file, run: Path, tmp_path: Path, *extra: str) -> tuple[int, str, str, Path]:
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    code, stdout, stderr = train_cli(*cli_args(config_file, data_file, copy, "--epochs", "2", "--resume",
                                               "--mode", "sequential", *extra))
    return code, stdout, stderr, copy


def test_resume_with_another_seed_is_refused(one_epoch_run, config_file, data_file, train_cli, tmp_path):
    code, stdout, stderr, _ = resumed(train_cli, config_file, data_file, one_epoch_run, tmp_path, "--seed", "5")
    assert code == 2, stderr
    assert_one_error_line(stderr, CHECKPOINT_NAME, "seed 0, not 5", "--seed 0")
    assert "epoch" not in stdout


def test_resume_names_every_field_and_config_key_that_differs(one_epoch_run, config_file, data_file, train_cli,
                                                               tmp_path):
    code, _, stderr, _ = resumed(train_cli, config_file, data_file, one_epoch_run, tmp_path, "--seed", "5",
                                 "--set", "train.lr=1e-3")
    assert code == 2, stderr
    assert_one_error_line(stderr, "seed 0, not 5", "different config", "'train.lr' 0.002 there, 0.001 here")


def test_resume_with_the_same_identity_continues_and_records_its_seed(one_epoch_run, config_file, data_file,
                                                                      train_cli, tmp_path):
    import json
    code, _, stderr, copy = resumed(train_cli, config_file, data_file, one_epoch_run, tmp_path, "--seed", "0")
    assert code == 0, stderr
    results = json.loads((copy / "results.json").read_text())
    assert (results["seed"], results["epochs"]) == (0, 2)


def test_resume_with_a_plugin_the_run_was_not_trained_with_is_refused(one_epoch_run, config_file, data_file,
                                                                      train_cli, tmp_path):
    plugin = tmp_path / "round3_plugin.py"
    plugin.write_text("")
    with_plugin = tmp_path / "with_plugin.yml"
    with_plugin.write_text(yaml.safe_dump({**yaml.safe_load(config_file.read_text()), "plugins": [str(plugin)]}))
    code, _, stderr, _ = resumed(train_cli, with_plugin, data_file, one_epoch_run, tmp_path)
    assert code == 2, stderr
    assert_one_error_line(stderr, "without plugin(s)", "round3_plugin.py")


