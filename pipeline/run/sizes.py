"""What a run config asks the machine to allocate, estimated from its numbers before anything is allocated.

A config's sizes multiply: `memory.dim` squares into the memory updater's weights, `sampler.fanouts` and
`train.batch_size` multiply into every batch's rows, and the common-neighbour predictor compares every pair
of its roots' neighbour slots, `pairs x fanout x fanout`. A typo or a hostile value (`memory.dim=1000000000`,
`sampler.fanouts=[100000]`) would otherwise fill memory for minutes before failing somewhere deep inside
torch, or be reported as a bug in a pipeline stage. `check_sizes` is the one check of all of them: it
estimates, in Python integers (no overflow, no allocation), the model's parameter count and the largest
tensors a run allocates, and refuses a config over `MAX_PARAMETERS` or `MAX_TENSOR_BYTES` in one line naming
the keys and the estimated size.

It runs on the same estimate twice:
- when a config is validated (`validate_config`: a `--config` file, `--set`, a checkpoint's stored config),
  for the smallest stream any config trains on (`SMALLEST`: one event, no features), so what it refuses is
  too large on every stream, before the data is even read;
- when a run's objects are built for an event stream (`build_setup`, for training and for
  `scripts/evaluate.py` alike), for that stream's events, nodes, feature widths and highest degree (a batch
  holds at most the stream's events, a root at most its degree in sampled neighbours), before the model,
  the optimizer, the memory store or a batch exist.

The estimates are upper bounds of the built-in parts' sizes, within a small factor; a plugin's part is
estimated as the built-in one it stands for (an updater as the GRU, the largest).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError
from models.embedding import EMBEDDINGS
from models.pair_history import FEATURES_PER_RATE
from models.predictor import PREDICTORS

if TYPE_CHECKING:
    from graph.events import EventStream
    from pipeline.run.config import RunConfig

MAX_PARAMETERS = 2**30  # about 1.07e9 weights (4 GiB as float32; training keeps 4 copies: weights, grads, Adam's 2)
MAX_TENSOR_BYTES = 2**33  # 8 GiB: the most one tensor a run allocates may take
FLOAT_BYTES, INDEX_BYTES, MASK_BYTES = 4, 8, 1  # float32 rows, int64 ids, bool masks
CAP = 2**128  # products saturate here: far past every limit, and cheap to multiply


@dataclass(frozen=True)
class StreamSizes:
    """The sizes of an event stream that bound a run's: `max_degree` is the most events any node takes part
    in (a root's sampled neighbours per hop cannot exceed it); `name` says which stream (None: any)."""

    name: str | None
    num_events: int
    num_nodes: int
    dim_node_feat: int
    dim_edge_feat: int
    max_degree: int

    @classmethod
    def of(cls, events: EventStream) -> StreamSizes:
        """The sizes of `events`; the degrees come from a prepared stream's index when it has one (its row
        lengths), else from one count over the stream's nodes."""
        if events.index is not None:
            max_degree = int(np.diff(events.index.indptr).max(initial=0))
        elif events.num_events:
            counts = np.bincount(events.src, minlength=events.num_nodes)
            counts += np.bincount(events.dst, minlength=events.num_nodes)
            max_degree = int(counts.max())
        else:
            max_degree = 0
        return cls(events.name, events.num_events, events.num_nodes, events.dim_node_feat, events.dim_edge_feat,
                   max_degree)


# no stream is smaller: one event (so batches of one), one node, no features, no earlier neighbour to sample
SMALLEST = StreamSizes(None, num_events=1, num_nodes=1, dim_node_feat=0, dim_edge_feat=0, max_degree=0)


@dataclass(frozen=True)
class Size:
    """One estimated size: `amount` parameters or bytes of `what`, set by the config keys `keys`."""

    what: str
    keys: tuple[str, ...]
    amount: int


def _product(*factors: int) -> int:
    result = 1
    for factor in factors:
        result = min(result * max(factor, 0), CAP)
    return result


def parameters(cfg: RunConfig, data: StreamSizes) -> list[Size]:
    """The model's weights, part by part (the largest matrices of each; biases and vectors are left out)."""
    memory, emb = cfg.memory, cfg.embedding
    dim_edge, sizes = data.dim_edge_feat, []
    dim_state = memory.dim if memory is not None else data.dim_node_feat
    if memory is not None:
        dim_mail = 2 * memory.dim + dim_edge
        sizes.append(Size("the memory updater's weights", ("memory.dim", "memory.dim_time"),
                          _product(3, memory.dim, dim_mail + memory.dim_time + memory.dim)))
        sizes.append(Size("the node-feature projection", ("memory.dim",), _product(data.dim_node_feat, memory.dim)))
    layered = getattr(EMBEDDINGS.get(emb.module), "layered", False)
    dim_emb = emb.dim_out if layered else dim_state
    if layered:  # per layer: queries, keys, values and the output map, over the input state, edge and time
        def layer(dim_in: int) -> int:
            return _product(emb.dim_out, 4 * dim_in + 2 * dim_edge + 3 * emb.dim_time + emb.dim_out)
        sizes.append(Size("the embedding's attention weights",
                          ("embedding.layers", "embedding.dim_out", "embedding.dim_time"),
                          min(layer(dim_state) + _product(emb.layers - 1, layer(emb.dim_out)), CAP)))
    sizes.append(Size("the edge predictor's weights", ("embedding.dim_out",), _product(2, dim_emb, dim_emb)))
    if getattr(PREDICTORS.get(cfg.predictor.module), "reads_neighbourhoods", False):
        sizes.append(Size("the neighbourhood predictor's link weights", ("sampler.fanouts", "embedding.dim_out"),
                          _product(2 * cfg.sampler.fanouts[-1] + dim_state + 17, dim_emb)))
    if _reads_histories(cfg):
        sizes.append(Size("the pair-history weights", ("predictor.half_lives", "embedding.dim_out"),
                          _product(FEATURES_PER_RATE, len(cfg.predictor.half_lives), dim_emb)))
    return sizes


def _reads_histories(cfg: RunConfig) -> bool:
    return getattr(PREDICTORS.get(cfg.predictor.module), "reads_histories", False)


def _history_floats(cfg: RunConfig) -> int:
    """Floats of one node's pair history: both directions at every decay rate."""
    return _product(2, cfg.predictor.history_dim, len(cfg.predictor.half_lives))


@dataclass(frozen=True)
class _Batch:
    """A kind of batch: `what`, set by `keys`; `roots` (sources, destinations, negatives) and `pairs` scored."""

    what: str
    keys: tuple[str, ...]
    roots: int
    pairs: int


def _batches(cfg: RunConfig, data: StreamSizes) -> list[_Batch]:
    from pipeline.run.evaluation import negative_columns  # imports this module's caller, pipeline.run.config
    from pipeline.run.ranking import ROOTS_PER_CHUNK

    train_size = min(cfg.train.batch_size, data.num_events)
    k = cfg.train.num_neg
    batches = [_Batch("a training batch", ("train.batch_size", "train.num_neg"),
                      _product(train_size, 2 + k), _product(train_size, 1 + k))]
    eval_size = min(cfg.eval.batch_size, data.num_events)
    columns = next(reversed(negative_columns(cfg).values())).stop
    sources = 2 if len(negative_columns(cfg)) > 1 else 1  # negatives with their own sources score twice the roots
    batches.append(_Batch("an evaluation batch", ("eval.batch_size", "eval.mrr_negatives", "eval.negatives"),
                          _product(eval_size, 2 + sources * columns), _product(eval_size, 1 + columns)))
    if cfg.eval.ranking != "none":  # candidates (all) or each event's own negatives, a chunk of them at a time
        widest = {"all": data.num_nodes, "sampled": cfg.eval.ranking_negatives}.get(cfg.eval.ranking, ROOTS_PER_CHUNK)
        per_chunk = min(max(1, ROOTS_PER_CHUNK // max(eval_size, 1)), widest)
        batches.append(_Batch("a ranking batch", ("eval.batch_size", "eval.ranking"),
                              _product(eval_size, 2 + per_chunk), _product(eval_size, 1 + per_chunk)))
    return batches


def tensors(cfg: RunConfig, data: StreamSizes) -> list[Size]:
    """The largest tensors a run allocates, in bytes: per batch, the rows of its sampled input nodes and
    (a neighbourhood-reading predictor) its padded neighbour tables and (a predictor of pair history) its
    pairs' histories; per run, the mitigation's similarity table, the evaluation negatives, the ranking's
    mask and the memory store's pair-history table. The rest of the memory store (nodes x the memory and
    mailbox row) is left out: it grows with the stream's nodes, and its row is bounded with a batch's rows."""
    memory, emb = cfg.memory, cfg.embedding
    dim_edge, sizes = data.dim_edge_feat, []
    dim_state = memory.dim if memory is not None else data.dim_node_feat
    layered = getattr(EMBEDDINGS.get(emb.module), "layered", False)
    rows: list[tuple[int, tuple[str, ...]]] = [(data.dim_node_feat, ())]  # floats per input node, by what sets them
    if memory is not None:
        rows.append((_product(memory.mailbox_size, 2 * memory.dim + dim_edge + memory.dim_time),
                     ("memory.mailbox_size", "memory.dim", "memory.dim_time")))
    if layered:
        rows.append((dim_state + dim_edge + emb.dim_time + emb.dim_out, ("embedding.dim_out", "embedding.dim_time")))
    row, row_keys = max(rows, key=lambda item: item[0])
    width = cfg.sampler.fanouts[-1]
    reads_neighbourhoods = getattr(PREDICTORS.get(cfg.predictor.module), "reads_neighbourhoods", False)
    for batch in _batches(cfg, data):
        nodes = batch.roots
        for fanout in reversed(cfg.sampler.fanouts):  # each hop adds up to min(fanout, degree) per node
            nodes = _product(nodes, 1 + min(fanout, data.max_degree))
        sizes.append(Size(f"the node rows of {batch.what} ({nodes} input nodes x {row} floats)",
                          (*batch.keys, "sampler.fanouts", *row_keys), _product(nodes, row, FLOAT_BYTES)))
        if reads_neighbourhoods:  # padded to `width` columns, whatever the stream
            sizes.append(Size(f"the neighbour table of {batch.what} ({batch.roots} roots x {width} slots)",
                              (*batch.keys, "sampler.fanouts"), _product(batch.roots, width, INDEX_BYTES)))
            sizes.append(Size(f"the common-neighbour pair table of {batch.what} ({batch.pairs} pairs x {width} x "
                              f"{width} slots)", (*batch.keys, "sampler.fanouts"),
                              _product(batch.pairs, width, width, MASK_BYTES)))
        if _reads_histories(cfg):
            sizes.append(Size(f"the pair histories of {batch.what} ({batch.pairs} pairs x {_history_floats(cfg)} "
                              f"floats)", (*batch.keys, "predictor.history_dim", "predictor.half_lives"),
                              _product(batch.pairs, _history_floats(cfg), FLOAT_BYTES)))
    if _reads_histories(cfg):
        sizes.append(Size(f"the memory store's pair-history table ({data.num_nodes} nodes x {_history_floats(cfg)} "
                          f"floats)", ("predictor.history_dim", "predictor.half_lives"),
                          _product(data.num_nodes, _history_floats(cfg), FLOAT_BYTES)))
    if memory is not None and cfg.pipeline.mitigation.enabled:
        sizes.append(Size(f"the similarity table ({data.num_nodes} nodes)", ("pipeline.mitigation.top_k",),
                          _product(data.num_nodes, cfg.pipeline.mitigation.top_k, INDEX_BYTES)))
    if cfg.eval.mrr_negatives:
        sizes.append(Size(f"the evaluation negatives ({data.num_events} events)", ("eval.mrr_negatives",),
                          _product(data.num_events, cfg.eval.mrr_negatives, INDEX_BYTES)))
    if cfg.eval.ranking == "sampled":
        sizes.append(Size(f"the ranking's negatives ({data.num_events} events)", ("eval.ranking_negatives",),
                          _product(data.num_events, cfg.eval.ranking_negatives, INDEX_BYTES + MASK_BYTES)))
    if cfg.eval.ranking == "all":
        sizes.append(Size(f"the ranking's true-destination mask ({data.num_nodes} candidates)",
                          ("eval.batch_size", "eval.ranking"),
                          _product(min(cfg.eval.batch_size, data.num_events), data.num_nodes, MASK_BYTES)))
    return sizes


def check_sizes(cfg: RunConfig, source: str, data: StreamSizes = SMALLEST) -> None:
    """Refuse `cfg` if its model would have more than `MAX_PARAMETERS` weights or one of its tensors would
    take more than `MAX_TENSOR_BYTES` on a stream of `data`'s sizes (default: the smallest stream, so the
    check needs no data): a `ConfigError` naming `source`, the keys and the estimate."""
    on = f" on {data.name}" if data.name else ""
    parts = parameters(cfg, data)
    total = min(sum(part.amount for part in parts), CAP)
    if total > MAX_PARAMETERS:
        largest = max(parts, key=lambda part: part.amount)
        raise ConfigError(f"{source}: {_keys(largest.keys, cfg)} for a model of about {_count(total)} parameters "
                          f"({largest.what}: {_count(largest.amount)}; {_bytes(total * FLOAT_BYTES)} as float32), "
                          f"more than a model may have ({_count(MAX_PARAMETERS)}: MAX_PARAMETERS in pipeline/run/sizes.py)")
    largest = max(tensors(cfg, data), key=lambda size: size.amount)
    if largest.amount > MAX_TENSOR_BYTES:
        raise ConfigError(f"{source}: {_keys(largest.keys, cfg)} for {largest.what}{on} of about "
                          f"{_bytes(largest.amount)}, more than one tensor may take ({_bytes(MAX_TENSOR_BYTES)}: MAX_TENSOR_BYTES "
                          f"in pipeline/run/sizes.py)")


def _keys(keys: Iterable[str], cfg: RunConfig) -> str:
    """The keys that set a size, for a message: those `cfg` changed from their defaults (the likely culprits),
    or all of them if it changed none."""
    from pipeline.run.config import DEFAULTS

    given, unique = cfg.to_dict(), list(dict.fromkeys(keys))
    changed = [key for key in unique if _lookup(given, key) != _lookup(DEFAULTS, key)] or unique
    if len(changed) == 1:
        return f"key '{changed[0]}' asks"
    return "keys " + ", ".join(f"'{key}'" for key in changed) + " ask"


def _lookup(values: dict, dotted: str) -> object:
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _count(number: int) -> str:
    return f"{number:,}" if number < 10**15 else f"{float(number):.1e}"


def _bytes(number: int) -> str:
    value = float(number)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    return f"{value:.3g} {unit}" if value < 10**6 else f"{value:.1e} {unit}"
