"""The model's config sections as typed, frozen records: each key's default is written here and nowhere else.

`pipeline/run/config.py` validates a YAML file against these defaults and builds the records; the model
(`build_model`) reads only them. Field names are the YAML keys (`memory.update_time`, `embedding.heads`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from common.registry import Registry
from sampler.config import SamplerConfig

UPDATE_TIMES = ("query", "batch")
QUERY_TIMES = ("event", "batch")
DELIVERIES = ("self", "neighbours")

# The names the top-level `model` key may take. It labels a run in its logs and results.json (the sections
# compose the model; `edgebank` also selects the untrained baseline); a misspelt label would file a run under
# a model it is not, so it must be registered: a plugin adds its own with `MODELS.register("name")("what")`.
MODELS: Registry[str] = Registry("model", "model")
for _name, _what in (
    ("tgn", "TGN: GRU memory updater, temporal attention"),
    ("jodie", "JODIE: RNN memory updater, time projection"),
    ("apan", "APAN: mailbox transformer, identity embedding, mails to neighbours"),
    ("tgat", "TGAT: no memory, temporal attention"),
    ("dyrep", "DyRep: RNN memory updater whose mails carry embeddings, temporal attention"),
    ("edgebank", "EdgeBank: the memorisation baseline, no training"),
):
    MODELS.register(_name)(_what)


@dataclass(frozen=True)
class MemoryConfig:
    """`memory`: per-node state and how it is updated (TGL's defaults).

    `normalize` L2-normalises each updated memory (JODIE). `update_time` is the time an input node's memory
    is brought to: "query", each input slot's own time (TGL), or "batch", the batch's first event time,
    which makes the update a function of the node alone.
    """

    dim: int = 100
    dim_time: int = 100
    mailbox_size: int = 1
    updater: str = "gru"
    deliver_to: str = "self"
    normalize: bool = False
    update_time: str = "query"


@dataclass(frozen=True)
class EmbeddingConfig:
    """`embedding`: how root embeddings are computed from node states. The mailbox transformer updater
    also reads `heads` and `dropout`.

    `query_time` is the time a root is embedded at: "event", every root (source, destination, negative) at
    its own event's time, from the neighbours before it (TGL); "batch", every distinct node of the batch
    once, at the batch's first event time, from the neighbours before the batch (PyG's TGN), so a node that
    fills several roots of a batch is sampled and embedded once.
    """

    module: str = "attention"
    layers: int = 1
    heads: int = 2
    dim_out: int = 100
    dim_time: int = 100
    dropout: float = 0.1
    query_time: str = "event"


@dataclass(frozen=True)
class PredictorConfig:
    """`predictor`: the edge scorer over a pair of embeddings (and, for "common_neighbours", the pair's
    sampled neighbourhoods; for "pair_history", also each node's decayed history over the whole past).

    `history_dim` is the size of the random vectors of one direction of a node's history, `half_lives` the
    half-life of each decay rate of it, in the stream's time units (`.inf`: never decays); only a predictor
    that reads pair history reads them (`models/pair_history.py`).
    """

    module: str = "mlp"
    history_dim: int = 64
    half_lives: tuple[float, ...] = (math.inf, 86400.0)  # forever and a day, in seconds


class ModelSections(Protocol):
    """What `build_model` reads from a run config: its three model sections (`memory: None` for a
    memory-less model), and the sampler's fanouts (a predictor may read the sampled neighbourhoods)."""

    @property
    def sampler(self) -> SamplerConfig: ...

    @property
    def memory(self) -> MemoryConfig | None: ...

    @property
    def embedding(self) -> EmbeddingConfig: ...

    @property
    def predictor(self) -> PredictorConfig: ...
