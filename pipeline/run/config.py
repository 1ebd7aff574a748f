"""Run configuration: TGL-style YAML (sampler, memory, embedding, train, eval, pipeline) validated on load.

A config names the parts a model is composed from; every key has a default here, so a YAML file only
states what differs. An unknown key, a wrong type or an out-of-range value is a `ConfigError` naming the
file and the dotted key, because a silently ignored typo would train a different model than intended.

A config is small, so whatever it came from (a YAML file, `--set`, a checkpoint) is bounded before it is
read: at most `MAX_CONFIG_BYTES` of YAML, `MAX_DEPTH` levels of nesting, `MAX_VALUES` values (a YAML alias
counts once per use, so an alias bomb is refused without being expanded) and strings of `MAX_STRING`
characters. Every error message shows a value through `shown`, which never builds more than a short repr.

The swappable parts (`memory.updater`, `embedding.module`, `predictor.module`, `sampler.strategy`,
`pipeline.mode`) are checked against their registries, after importing the config's `plugins`, so a
part a plugin registers is as valid as a built-in one.
"""
from __future__ import annotations

import copy
import math
import re
import reprlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

import yaml

from common.errors import ConfigError, DataError, one_line, shorten
from common.registry import Registry
from graph.loaders import open_regular_file, path_status
from graph.negatives import NEGATIVE_STRATEGIES
from models.edgebank import EDGEBANK_MEMORIES
from models.config import DELIVERIES, MODELS, QUERY_TIMES, UPDATE_TIMES, EmbeddingConfig, MemoryConfig, PredictorConfig
from models.embedding import EMBEDDINGS
from models.memory_updaters import UPDATERS
from models.predictor import PREDICTORS
from pipeline.engine.config import PipelineConfig
from pipeline.engine.schedulers import SCHEDULERS
from pipeline.run.plugins import load_plugins
from pipeline.run.sizes import check_sizes
from pipeline.stages.mitigation import SIMILARITIES, MitigationConfig
from sampler.config import SamplerConfig
from sampler.temporal import STRATEGIES

MODES = SCHEDULERS.names()  # the built-in modes; a plugin's scheduler is selected in the YAML
RANKINGS = ("none", "all", "sampled", "tgb")
PROTOCOLS = ("native", "dyglib", "tgb")
TGB_RATIOS = (0.15, 0.15)  # TGB's validation and test shares (tgb/linkproppred/dataset.py, generate_splits)

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; a megabyte of YAML is not a config
MAX_DEPTH = 16  # levels of mappings and lists (a config uses 4: pipeline.auto.candidates[0])
MAX_VALUES = 10_000  # mappings, lists and scalars, each use of a YAML alias counting again
MAX_STRING = 4096  # characters of one string (a plugin path at most PATH_MAX)
MAX_INTEGER = 2**63 - 1  # integers must fit the int64 they end up in
SHOWN_CHARS = 80  # how much of a value an error message shows
MAX_AUTO_ROUNDS = 100  # pipeline.auto.rounds: each round trains every candidate mode (the default is 2)


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
    one-vs-all MRR against every destination, `ranking: sampled` TGB's MRR against `ranking_negatives`
    negatives per positive, historical and random mixed as TGB generates them (seeded by `ranking_seed`),
    and `ranking: tgb` TGB's MRR against the negatives of TGB's own files (`val_negatives_file`,
    `test_negatives_file`; pipeline/run/tgb.py). `protocol` says whose split, held-out nodes and negatives:
    this project's, seeded by the run's seed (`native`), DyGLib's, drawn as its code draws them, with
    EdgeBank remembering only the events DyGLib gives it (`dyglib`; docs/results.md lists the differences),
    or TGB's: its 70/15/15 split at time quantiles, no held-out nodes (`tgb`).
    """

    protocol: str = "native"
    batch_size: int = 600
    mrr_negatives: int = 0
    negatives: tuple[str, ...] = ("random",)
    ranking: str = "none"
    ranking_negatives: int = 100
    ranking_seed: int = 42
    val_negatives_file: str = ""
    test_negatives_file: str = ""
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    inductive_ratio: float = 0.1


@dataclass(frozen=True)
class EdgeBankConfig:
    """`edgebank`: read when `model` is edgebank (pipeline/run/baselines.py); `memory` is one of
    `EDGEBANK_MEMORIES` (models/edgebank.py), `window_ratio` the share of time the `window` and
    `proportion` memories keep."""

    memory: str = "unlimited"
    window_ratio: float = 0.15


@dataclass(frozen=True)
class PipelineSection(PipelineConfig):
    """`pipeline`: the engine's scheduler settings, the link-prediction stages' staleness mitigation, and
    how many threads read the rows of a memory-mapped feature file in the fetch stage (a prepared stream)."""

    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    feature_readers: int = 32


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
    pipeline: PipelineSection = field(default_factory=PipelineSection)

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

REGISTRIES: tuple[Registry, ...] = (MODELS, STRATEGIES, UPDATERS, EMBEDDINGS, PREDICTORS, SCHEDULERS)
CHOICES: dict[str, tuple[str, ...] | Registry] = {
    "memory.deliver_to": DELIVERIES,
    "memory.update_time": UPDATE_TIMES,
    "embedding.query_time": QUERY_TIMES,
    "edgebank.memory": EDGEBANK_MEMORIES,
    "eval.ranking": RANKINGS,
    "eval.protocol": PROTOCOLS,
    "pipeline.mitigation.similarity": SIMILARITIES,
    **{registry.config_key: registry for registry in REGISTRIES},
}
STRING_LISTS = {"plugins", "eval.negatives", "pipeline.auto.candidates"}
NUMBER_LISTS = {"predictor.half_lives"}  # numbers, `.inf` included; every other list holds integers

POSITIVE = {
    "memory.dim", "memory.dim_time", "memory.mailbox_size", "embedding.layers", "embedding.heads",
    "embedding.dim_out", "train.batch_size", "train.epochs", "train.lr", "train.num_neg",
    "eval.batch_size", "eval.ranking_negatives", "pipeline.k", "pipeline.k_max", "pipeline.mitigation.top_k",
    "pipeline.mitigation.refresh_every", "pipeline.auto.rounds", "pipeline.auto.recheck_every",
    "pipeline.feature_readers", "predictor.history_dim",
}
NON_NEGATIVE = {"train.weight_decay", "eval.ranking_seed", "pipeline.auto.drop", "pipeline.auto.slowdown"}
FRACTIONS = {
    "embedding.dropout", "eval.val_ratio", "eval.test_ratio", "eval.inductive_ratio",
    "pipeline.mitigation.quantile", "pipeline.mitigation.gamma", "edgebank.window_ratio", "pipeline.auto.margin",
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
            raise ConfigError(f"{source}: {_where(key)} must be a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults), key=str)
        if unknown:
            where = f"{key}.{_key_name(unknown[0])}" if key else _key_name(unknown[0])
            raise ConfigError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(defaults))})")
        return {
            name: _merge(value, given[name], f"{key}.{name}" if key else name, source) if name in given
            else copy.deepcopy(value)
            for name, value in defaults.items()
        }
    if isinstance(defaults, bool):
        if not isinstance(given, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {shown(given)}")
        return given
    if isinstance(defaults, (int, float)):
        if isinstance(given, bool) or not isinstance(given, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {shown(given)}")
        if isinstance(defaults, int):
            if not isinstance(given, int):
                raise ConfigError(f"{source}: key '{key}' must be an integer, got {shown(given)}")
            if abs(given) > MAX_INTEGER:
                raise ConfigError(f"{source}: key '{key}' must be an integer below 2**63, got {shown(given)}")
        elif not _finite(given):
            raise ConfigError(f"{source}: key '{key}' must be a finite number, got {shown(given)}")
        return given
    if isinstance(defaults, list):
        kind = "strings" if key in STRING_LISTS else "numbers" if key in NUMBER_LISTS else "integers"
        if not isinstance(given, list) or not all(_is_list_item(v, kind) for v in given):
            raise ConfigError(f"{source}: key '{key}' must be a list of {kind}, got {shown(given)}")
        too_large = next((v for v in given if kind == "integers" and abs(v) > MAX_INTEGER), None)
        if too_large is not None:
            raise ConfigError(f"{source}: key '{key}' must be a list of integers below 2**63, got {shown(too_large)}")
        return list(given)
    if not isinstance(given, str):
        raise ConfigError(f"{source}: key '{key}' must be a string, got {shown(given)}")
    return given


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


def _is_list_item(value: Any, kind: str) -> bool:
    if kind == "strings":
        return isinstance(value, str)
    if kind == "numbers" and isinstance(value, float):
        return not math.isnan(value)
    return isinstance(value, int) and not isinstance(value, bool) and (kind == "integers" or _finite(value))


class _ShortRepr(reprlib.Repr):
    """reprlib's abbreviated repr, also for what it would otherwise print in full: huge integers (whose
    repr Python refuses past 4300 digits) and objects of other types (bytes, dates, anything unpickled)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 4, 4, 4, 4
        self.maxstring = self.maxother = self.maxlong = SHOWN_CHARS

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * SHOWN_CHARS:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, (float, bool, type(None))):
            return repr(x)
        return f"<{type(x).__name__}>"


_SHORT_REPR = _ShortRepr()


def shown(value: Any) -> str:
    """`repr(value)` for an error message, cut to about `SHOWN_CHARS` characters; its cost does not grow with
    the value (a list of a billion items, a recursive one or a huge integer show as quickly as a number)."""
    return shorten(_SHORT_REPR.repr(value), SHOWN_CHARS)


def _key_name(name: Any) -> str:
    """A mapping key as part of a dotted key in a message (a YAML key may be any scalar, of any length)."""
    return name if isinstance(name, str) and len(name) <= SHOWN_CHARS else shown(name)


def _where(key: str) -> str:
    """'key <dotted key>' for a message, at most about two values long; 'the config' for the top level."""
    if not key:
        return "the config"
    return f"key '{key}'" if len(key) <= 2 * SHOWN_CHARS else f"key '{key[:SHOWN_CHARS]}...{key[-SHOWN_CHARS:]}'"


def check_bounds(given: Any, source: str) -> None:
    """Refuse a config value that nests deeper than `MAX_DEPTH`, holds more than `MAX_VALUES` values
    (counting every use of a shared or recursive part: YAML aliases, a checkpoint's pickled references) or
    a string longer than `MAX_STRING`. Iterative and stops at the first bound it passes, so it costs at
    most `MAX_VALUES` steps whatever `given` is."""
    count = 0
    stack: list[tuple[Iterator[tuple[Any, str]], int]] = [(iter([(given, "")]), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        value, key = item
        where = _where(key)
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{source}: {where} holds more than {MAX_VALUES} values (every use of a YAML "
                              f"alias counts); a config is far smaller")
        if isinstance(value, (dict, list, tuple)):
            children = _children(value, key)
        else:
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise ConfigError(f"{source}: {where} holds a string of {len(value)} characters "
                                  f"(at most {MAX_STRING})")
            continue
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{source}: {where} nests deeper than {MAX_DEPTH} levels")
        stack.append((children, depth + 1))


def _children(value: dict | list | tuple, key: str) -> Iterator[tuple[Any, str]]:
    """The items of a mapping or list, each with its dotted key (a list's items share the list's)."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield child, f"{key}.{_key_name(name)}" if key else _key_name(name)
    else:
        for child in value:
            yield child, key


class _OverBound(Exception):
    """A YAML document past a bound (`message`), at dotted `key` and `line` (None: the message says where),
    found while composing or constructing."""

    def __init__(self, message: str, key: str, line: int | None) -> None:
        super().__init__(message, key, line)
        self.message, self.key, self.line = message, key, line


class _BoundedLoader(yaml.SafeLoader):
    """The YAML loader of every config (a `--config` file, a `--set` value): `yaml.SafeLoader` that

    - refuses, while composing and so before anything is built, a document nested deeper than `MAX_DEPTH`
      (its composer recurses once per level: `[[[...]]]` a thousand deep would end in a `RecursionError`),
      one holding more than `MAX_VALUES` values once its aliases are expanded (each node's expanded size is
      summed from its children's, so an alias bomb is never expanded), and an alias inside its own anchor;
    - refuses a mapping that names a key twice (`train: {lr: 0.001}` then `train: {epochs: 3}`), which
      PyYAML would silently resolve to the last; keys merged in by `<<` may still be overridden, as YAML says;
    - reads `1e-3`, `5E4` and `1.0e3` as floats, as YAML 1.2 does (YAML 1.1, PyYAML's default, reads them as
      strings unless they have a dot and a signed exponent); on this class only, not on `yaml.SafeLoader`.

    `check_bounds` applies the same bounds to the data, whatever its source."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str | None] = []  # per open node: its mapping key, or None (list item, key, root)
        self._sizes: dict[int, int] = {}  # id(node) -> values it holds with aliases expanded
        self._keys: dict[int, str] = {}  # id(mapping node) -> its dotted key, for a duplicate key's message

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping `node`, refused if two of its own keys (not those merged in by `<<`) are equal."""
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor refuses it
                    continue
                if earlier is not key_node:
                    parent = self._keys.get(id(node), "")
                    dotted = f"{parent}.{_key_name(key)}" if parent else _key_name(key)
                    raise _OverBound(f"appears twice, on lines {earlier.start_mark.line + 1} and "
                                     f"{key_node.start_mark.line + 1} (a key may be given once)", dotted, None)
        return super().construct_mapping(node, deep=deep)

    def _refuse(self, message: str) -> NoReturn:
        key = ".".join(name for name in self._path if name is not None)
        raise _OverBound(message, key, self.peek_event().start_mark.line + 1)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._path.append(_key_name(index.value) if isinstance(index, yaml.ScalarNode) else None)
        try:
            if len(self._path) > MAX_DEPTH + 1:
                self._refuse(f"nests deeper than {MAX_DEPTH} levels")
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor
                if anchor in self.anchors and id(self.anchors[anchor]) not in self._sizes:
                    self._refuse(f"holds an alias to itself (*{_key_name(anchor)})")
                return super().compose_node(parent, index)
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                self._keys[id(node)] = ".".join(name for name in self._path if name is not None)
                size = 1 + sum(self._sizes[id(key)] + self._sizes[id(value)] for key, value in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(item)] for item in node.value)
            else:
                size = 1
            if size > MAX_VALUES:
                self._refuse(f"holds more than {MAX_VALUES} values (every use of a YAML alias counts)")
            self._sizes[id(node)] = size
            return node
        finally:
            self._path.pop()


# YAML 1.2's floats with an exponent but no dot or an unsigned exponent (`1e-3`, `5E4`, `1.0e3`, `.5e1`), which
# YAML 1.1's resolver leaves as strings; the numbers it already reads (`1.5`, `1.0e-3`, `.inf`) are unchanged
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str, source: str) -> Any:
    """`text` as YAML data (safe types only); a document past the bounds (`_BoundedLoader`), a number Python
    will not convert or anything else the parser rejects is one `ConfigError` naming `source`."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _OverBound as err:
        line = "" if err.line is None else f" (line {err.line})"
        raise ConfigError(f"{source}: {_where(err.key)} {err.message}{line}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = one_line(getattr(err, "problem", None) or err)
        raise ConfigError(f"{source}:{where} invalid YAML ({shown(problem)})") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: invalid YAML ({shown(one_line(err))})") from None
    finally:
        loader.dispose()


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
            raise ConfigError(f"{source}: key '{key}' is {shown(value)}, expected one of {', '.join(allowed)}")
    for keys, in_range, expected in RANGES:
        for key in keys:
            value = _lookup(cfg, key)
            if value is not None and not in_range(value):
                raise ConfigError(f"{source}: key '{key}' must be {expected}, got {shown(value)}")
    unknown = [strategy for strategy in cfg.eval.negatives if strategy not in NEGATIVE_STRATEGIES]
    if unknown:
        raise ConfigError(f"{source}: key 'eval.negatives' has {shown(unknown[0])}, expected a list of "
                          f"{', '.join(NEGATIVE_STRATEGIES)}")
    if cfg.eval.protocol == "dyglib" and cfg.eval.mrr_negatives:
        raise ConfigError(f"{source}: key 'eval.mrr_negatives' must be 0 under 'eval.protocol' dyglib (DyGLib draws "
                          f"one negative per event), got {cfg.eval.mrr_negatives}")
    _check_tgb(cfg, source)
    _check_pair_history(cfg, source)
    auto = cfg.pipeline.auto
    wrong = [mode for mode in auto.candidates if mode not in SCHEDULERS or mode == "auto"]
    if not auto.candidates or wrong:
        got = shown(wrong[0]) if wrong else "an empty list"
        raise ConfigError(f"{source}: key 'pipeline.auto.candidates' must list modes other than auto "
                          f"({', '.join(m for m in SCHEDULERS.names() if m != 'auto')}), got {got}")
    for key in ("trial_batches", "watch_batches"):
        if getattr(auto, key) < 2:
            raise ConfigError(f"{source}: key 'pipeline.auto.{key}' must be >= 2 (a time per batch needs two "
                              f"train steps), got {getattr(auto, key)}")
    if auto.probe_batches < 0 or auto.probe_batches == 1:
        raise ConfigError(f"{source}: key 'pipeline.auto.probe_batches' must be 0 (no probes) or >= 2 (a time per "
                          f"batch needs two train steps), got {auto.probe_batches}")
    if any(count < 1 for count in auto.threads):
        raise ConfigError(f"{source}: key 'pipeline.auto.threads' must list thread counts >= 1 (or be empty: the "
                          f"run's count and half of it), got {shown(list(auto.threads))}")
    if auto.margin >= 1:
        raise ConfigError(f"{source}: key 'pipeline.auto.margin' must be below 1 (a fraction of the first "
                          f"candidate's time per batch), got {auto.margin}")
    if auto.rounds > MAX_AUTO_ROUNDS:
        raise ConfigError(f"{source}: key 'pipeline.auto.rounds' must be at most {MAX_AUTO_ROUNDS} (each round trains "
                          f"every candidate for 'pipeline.auto.trial_batches' batches), got {shown(auto.rounds)}")
    fanouts = cfg.sampler.fanouts
    if not fanouts or any(f < 0 for f in fanouts):
        raise ConfigError(f"{source}: key 'sampler.fanouts' must be a non-empty list of counts >= 0, "
                          f"got {shown(list(fanouts))}")
    if getattr(EMBEDDINGS.get(cfg.embedding.module), "layered", False) and len(fanouts) != cfg.embedding.layers:
        raise ConfigError(f"{source}: keys 'sampler.fanouts' and 'embedding.layers' must agree: embedding "
                          f"'{cfg.embedding.module}' runs one layer per sampled hop, so 'sampler.fanouts' must have one "
                          f"entry per layer ('embedding.layers' is {cfg.embedding.layers}), got {len(fanouts)}: "
                          f"{shown(list(fanouts))}")
    if cfg.embedding.dim_out % cfg.embedding.heads:
        raise ConfigError(f"{source}: key 'embedding.dim_out' must be divisible by 'embedding.heads'")
    if cfg.memory is None and cfg.embedding.module != "attention":
        raise ConfigError(f"{source}: key 'embedding.module' must be 'attention' for a model without memory")
    if cfg.embedding.query_time == "batch" and cfg.memory is not None and cfg.memory.deliver_to == "neighbours":
        raise ConfigError(f"{source}: key 'embedding.query_time' batch samples each node once per batch, but "
                          "'memory.deliver_to' neighbours delivers mails to each positive event's own sampled "
                          "neighbours; use 'embedding.query_time' event")
    if cfg.eval.val_ratio + cfg.eval.test_ratio >= 1:
        raise ConfigError(f"{source}: keys 'eval.val_ratio' + 'eval.test_ratio' must be < 1")


def _check_tgb(cfg: RunConfig, source: str) -> None:
    """`eval.protocol: tgb` splits as TGB does (70/15/15); `eval.ranking: tgb` reads TGB's files, which are
    keyed by the events of TGB's split, so it needs that protocol and both files; a file named for any other
    ranking would be silently unread, so it is refused."""
    ev = cfg.eval
    if ev.protocol == "tgb" and (ev.val_ratio, ev.test_ratio) != TGB_RATIOS:
        raise ConfigError(f"{source}: keys 'eval.val_ratio' and 'eval.test_ratio' must be {TGB_RATIOS[0]} under "
                          f"'eval.protocol' tgb (TGB's split), got {ev.val_ratio} and {ev.test_ratio}")
    if ev.ranking == "tgb" and ev.protocol != "tgb":
        raise ConfigError(f"{source}: key 'eval.ranking' tgb needs 'eval.protocol' tgb (TGB's negatives files are "
                          f"keyed by the events of TGB's split), got {shown(ev.protocol)}")
    for key in ("val_negatives_file", "test_negatives_file"):
        given = bool(getattr(ev, key))
        if given and ev.ranking != "tgb":
            raise ConfigError(f"{source}: key 'eval.{key}' is read only under 'eval.ranking' tgb, but 'eval.ranking' "
                              f"is {shown(ev.ranking)}")
        if not given and ev.ranking == "tgb":
            raise ConfigError(f"{source}: key 'eval.{key}' must name TGB's {key.split('_')[0]} negatives pickle under "
                              f"'eval.ranking' tgb")


def _check_pair_history(cfg: RunConfig, source: str) -> None:
    """`predictor.history_dim` and `predictor.half_lives` size and decay the pair history a predictor that
    reads it keeps in the memory store: for any other predictor a value of theirs would be silently unread,
    and without memory there is no store to keep it in."""
    pred = cfg.predictor
    if not getattr(PREDICTORS.get(pred.module), "reads_histories", False):
        for key in ("history_dim", "half_lives"):
            if getattr(pred, key) != getattr(PredictorConfig, key):
                raise ConfigError(f"{source}: key 'predictor.{key}' is read only by a predictor of pair history "
                                  f"(pair_history), but 'predictor.module' is {shown(pred.module)}")
        return
    if cfg.memory is None:
        raise ConfigError(f"{source}: key 'predictor.module' {shown(pred.module)} keeps each node's pair history in "
                          f"the memory store, so it needs a 'memory' section (got memory: null)")
    if not pred.half_lives or any(half_life <= 0 or not math.isfinite(math.log(2) / half_life)
                                  for half_life in pred.half_lives):
        raise ConfigError(f"{source}: key 'predictor.half_lives' must be a non-empty list of half-lives > 0 (.inf: "
                          f"never decays; ln 2 / half-life must be a finite rate), got {shown(list(pred.half_lives))}")


def validate_config(given: dict, source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """The full config: defaults overlaid with `given`, checked key by key, as a `RunConfig`.

    Imports the `plugins` first (`.py` paths relative to `base_dir`, default the working directory) and
    stores them as absolute paths, so the parts they register can be named and the config stays valid.
    Last, its sizes are bounded for the smallest stream (`pipeline/run/sizes.py`; `build_setup` bounds them
    again for the stream a run reads).
    """
    check_bounds(given, source)
    merged = _merge(DEFAULTS, given, "", source)
    merged["plugins"] = load_plugins(merged["plugins"], base_dir or Path.cwd(), source)
    cfg = _record(RunConfig, merged)
    _check_values(cfg, source)
    check_sizes(cfg, source)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if path_status(path) is None:
        raise ConfigError(f"{path}: config file not found")
    try:  # a directory, FIFO or device is refused without reading (or blocking on) it
        with open_regular_file(path) as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except DataError as err:
        raise ConfigError(str(err).replace("(save the data to a file first)", "(a config is a YAML file)")) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few "
                          f"hundred bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: config file is not UTF-8 text (byte {err.start})") from None
    given = read_yaml(text, str(path))
    return validate_config({} if given is None else given, str(path), path.parent)


def parse_settings(settings: list[str], source: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings as `{dotted key: value}`, each value read as YAML (`16`, `true`, `[10, 10]`, `batch`,
    `1e-3`, `null`). An empty value (`train.lr=`) is refused: it would read as null, which is no value at all
    for most keys and, where an override of None means "not given", would keep the default unnoticed."""
    overrides = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: {shown(setting)} is not KEY=VALUE (e.g. memory.update_time=batch)")
        if not text.strip():
            raise ConfigError(f"{source}: key '{_key_name(key.strip())}' has no value (KEY=VALUE, e.g. "
                              f"train.lr=0.001; null where a key may be empty, as memory=null)")
        value = read_yaml(text, f"{source}: value of '{_key_name(key.strip())}'")
        overrides[key.strip()] = NULL if value is None else value
    return overrides


class _Null:
    """A `null` written in `--set` (`memory=null`): a value, unlike None, which `apply_overrides` skips."""

    def __repr__(self) -> str:
        return "null"


NULL = _Null()


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str = "command line") -> RunConfig:
    """Set dotted keys (`train.epochs`) from the command line, validated like the file. None is an option
    that was not given and is skipped; `NULL` (`parse_settings`' null) sets the key to None (`memory=null`:
    a model without memory; `train.lr=null`: an error naming the key)."""
    given = cfg.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        if value is NULL:
            value = None
        node = given
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: key '{_key_name(dotted)}' does not exist in this config")
            node = node[part]
        node[parts[-1]] = value
    return validate_config(given, source)
