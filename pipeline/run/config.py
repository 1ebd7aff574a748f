"""Run configuration: TGL-style YAML (sampler, memory, embedding, train, eval, pipeline) validated on load.

A config names the parts a model is composed from; every key has a default here, so a YAML file only
states what differs. An unknown key, a wrong type or an out-of-range value is a `ConfigError` naming the
file and the dotted key, because a silently ignored typo would train a different model than intended.

The swappable parts (`memory.updater`, `embedding.module`, `predictor.module`, `sampler.strategy`,
`pipeline.mode`) are checked against their registries, after importing the config's `plugins`, so a
part a plugin registers is as valid as a built-in one.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from common.errors import ConfigError, one_line
from common.registry import Registry
from graph.negatives import NEGATIVE_STRATEGIES
from models.config import DELIVERIES, UPDATE_TIMES, EmbeddingConfig, MemoryConfig, PredictorConfig
from models.embedding import EMBEDDINGS
from models.memory_updaters import UPDATERS
from models.predictor import PREDICTORS
from pipeline.engine.config import SIMILARITIES, PipelineConfig
from pipeline.engine.schedulers import SCHEDULERS
from pipeline.run.plugins import load_plugins
from sampler.config import SamplerConfig
from sampler.temporal import STRATEGIES

MODES = SCHEDULERS.names()  # the built-in modes; a plugin's scheduler is selected in the YAML
RANKINGS = ("none", "all")
EDGEBANK_MEMORIES = ("unlimited", "window")


@dataclass(frozen=True)
class TrainConfig:
    """`train`: optimisation and early stopping (`patience` epochs without a better validation AP; 0: never)."""

    batch_size: int = 600
    epochs: int = 10
    lr: float = 0.0001
    weight_decay: float = 0.0
    num_neg: int = 1
    patience: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """`eval`: how validation and test are scored and how the stream is split.

    `negatives` are DyGLib's strategies to report (random always: it selects the best epoch);
    `mrr_negatives` > 0 adds MRR against that many random negatives; `ranking: all` adds TGB's filtered
    one-vs-all MRR against every destination.
    """

    batch_size: int = 600
    mrr_negatives: int = 0
    negatives: tuple[str, ...] = ("random",)
    ranking: str = "none"
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    inductive_ratio: float = 0.1


@dataclass(frozen=True)
class EdgeBankConfig:
    """`edgebank`: read when `model` is edgebank (pipeline/run/baselines.py)."""

    memory: str = "unlimited"
    window_ratio: float = 0.15


@dataclass(frozen=True)
class RunConfig:
    """A whole validated run config. `model` is a label for logs and results; the sections compose the model."""

    model: str = "tgn"
    plugins: tuple[str, ...] = ()
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    memory: MemoryConfig | None = field(default_factory=MemoryConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    edgebank: EdgeBankConfig = field(default_factory=EdgeBankConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON data (lists, not tuples), as checkpoints and results.json keep it."""
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _record(cls: type, values: dict[str, Any]) -> Any:
    """The frozen record `cls` from a validated mapping; nested sections become their records, lists tuples."""
    hints = get_type_hints(cls)
    kwargs = {}
    for item in fields(cls):
        value = values[item.name]
        section = next((kind for kind in get_args(hints[item.name]) or (hints[item.name],) if is_dataclass(kind)), None)
        if section is not None and value is not None:
            value = _record(section, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[item.name] = value
    return cls(**kwargs)


DEFAULTS: dict[str, Any] = RunConfig().to_dict()

REGISTRIES: tuple[Registry, ...] = (STRATEGIES, UPDATERS, EMBEDDINGS, PREDICTORS, SCHEDULERS)
CHOICES: dict[str, tuple[str, ...] | Registry] = {
    "memory.deliver_to": DELIVERIES,
    "memory.update_time": UPDATE_TIMES,
    "edgebank.memory": EDGEBANK_MEMORIES,
    "eval.ranking": RANKINGS,
    "pipeline.mitigation.similarity": SIMILARITIES,
    **{registry.config_key: registry for registry in REGISTRIES},
}
STRING_LISTS = {"plugins", "eval.negatives", "pipeline.auto.candidates"}  # every other list holds integers

POSITIVE = {
    "memory.dim", "memory.dim_time", "memory.mailbox_size", "embedding.layers", "embedding.heads",
    "embedding.dim_out", "train.batch_size", "train.epochs", "train.lr", "train.num_neg",
    "eval.batch_size", "pipeline.k", "pipeline.k_max", "pipeline.mitigation.top_k",
    "pipeline.mitigation.refresh_every", "pipeline.auto.rounds", "pipeline.auto.recheck_every",
}
NON_NEGATIVE = {"train.weight_decay"}
FRACTIONS = {
    "embedding.dropout", "eval.val_ratio", "eval.test_ratio", "eval.inductive_ratio",
    "pipeline.mitigation.quantile", "pipeline.mitigation.gamma", "edgebank.window_ratio",
}
RANGES: tuple[tuple[set[str], Callable[[float], bool], str], ...] = (
    (POSITIVE, lambda value: value > 0, "> 0"),
    (NON_NEGATIVE, lambda value: value >= 0, ">= 0"),
    (FRACTIONS, lambda value: 0 <= value <= 1, "within [0, 1]"),
)


def _merge(defaults: Any, given: Any, key: str, source: str) -> Any:
    """Overlay `given` on `defaults`, refusing keys the defaults do not have and mismatched types."""
    if isinstance(defaults, dict):
        if given is None and key == "memory":
            return None
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise ConfigError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(defaults))})")
        return {
            name: _merge(value, given[name], f"{key}.{name}" if key else name, source) if name in given
            else copy.deepcopy(value)
            for name, value in defaults.items()
        }
    if isinstance(defaults, bool):
        if not isinstance(given, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {given!r}")
        return given
    if isinstance(defaults, (int, float)):
        if isinstance(given, bool) or not isinstance(given, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {given!r}")
        if isinstance(defaults, int) and not isinstance(given, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {given!r}")
        return given
    if isinstance(defaults, list):
        strings = key in STRING_LISTS
        if not isinstance(given, list) or not all(_is_list_item(v, strings) for v in given):
            raise ConfigError(f"{source}: key '{key}' must be a list of {'strings' if strings else 'integers'}, "
                              f"got {given!r}")
        return list(given)
    if not isinstance(given, str):
        raise ConfigError(f"{source}: key '{key}' must be a string, got {given!r}")
    return given


def _is_list_item(value: Any, strings: bool) -> bool:
    if strings:
        return isinstance(value, str)
    return isinstance(value, int) and not isinstance(value, bool)


def _lookup(cfg: RunConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def _check_values(cfg: RunConfig, source: str) -> None:
    for key, allowed in CHOICES.items():
        value = _lookup(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{source}: key '{key}' is {value!r}, expected one of {', '.join(allowed)}")
    for keys, in_range, expected in RANGES:
        for key in keys:
            value = _lookup(cfg, key)
            if value is not None and not in_range(value):
                raise ConfigError(f"{source}: key '{key}' must be {expected}, got {value!r}")
    unknown = [strategy for strategy in cfg.eval.negatives if strategy not in NEGATIVE_STRATEGIES]
    if unknown:
        raise ConfigError(f"{source}: key 'eval.negatives' has {unknown[0]!r}, expected a list of "
                          f"{', '.join(NEGATIVE_STRATEGIES)}")
    auto = cfg.pipeline.auto
    wrong = [mode for mode in auto.candidates if mode not in SCHEDULERS or mode == "auto"]
    if not auto.candidates or wrong:
        got = repr(wrong[0])[:80] if wrong else "an empty list"
        raise ConfigError(f"{source}: key 'pipeline.auto.candidates' must list modes other than auto "
                          f"({', '.join(m for m in SCHEDULERS.names() if m != 'auto')}), got {got}")
    if auto.trial_batches < 2:
        raise ConfigError(f"{source}: key 'pipeline.auto.trial_batches' must be >= 2 (a time per batch needs two "
                          f"train steps), got {auto.trial_batches}")
    fanouts = cfg.sampler.fanouts
    if not fanouts or any(f < 0 for f in fanouts):
        raise ConfigError(f"{source}: key 'sampler.fanouts' must be a non-empty list of counts >= 0, got {fanouts!r}")
    if cfg.embedding.dim_out % cfg.embedding.heads:
        raise ConfigError(f"{source}: key 'embedding.dim_out' must be divisible by 'embedding.heads'")
    if cfg.memory is None and cfg.embedding.module != "attention":
        raise ConfigError(f"{source}: key 'embedding.module' must be 'attention' for a model without memory")
    if cfg.eval.val_ratio + cfg.eval.test_ratio >= 1:
        raise ConfigError(f"{source}: keys 'eval.val_ratio' + 'eval.test_ratio' must be < 1")


def validate_config(given: dict, source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """The full config: defaults overlaid with `given`, checked key by key, as a `RunConfig`.

    Imports the `plugins` first (`.py` paths relative to `base_dir`, default the working directory) and
    stores them as absolute paths, so the parts they register can be named and the config stays valid.
    """
    merged = _merge(DEFAULTS, given, "", source)
    merged["plugins"] = load_plugins(merged["plugins"], base_dir or Path.cwd(), source)
    cfg = _record(RunConfig, merged)
    _check_values(cfg, source)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    return validate_config(given, str(path), path.parent)


def parse_settings(settings: list[str], source: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings as `{dotted key: value}`, each value read as YAML (`16`, `true`, `[10, 10]`, `batch`)."""
    overrides = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: '{setting}' is not KEY=VALUE (e.g. memory.update_time=batch)")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: value of '{key.strip()}' is not valid YAML ({one_line(error)})") from None
    return overrides


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str = "command line") -> RunConfig:
    """Set dotted keys (`train.epochs`) from the command line, validated like the file."""
    given = cfg.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = given
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: key '{dotted}' does not exist in this config")
            node = node[part]
        node[parts[-1]] = value
    return validate_config(given, source)
