"""The five per-batch stages of memory-based TGNN training: sample, fetch features, fetch memory,
train, update memory.

Every mode (sequential, presample, fixed-k, mspipe) and evaluation call these very functions; only the
scheduler that orders them differs. A `BatchContext` carries one batch from stage to stage, so stages of
different batches can run in different threads without sharing mutable state, except the memory store
(versioned, thread-safe) and the model/optimizer (touched by the train stage alone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from common.errors import NonFiniteLossError
from memory.batch import MemoryBatch, MemoryUpdate
from memory.store import MemoryStore
from models.interface import ModelInputs
from models.tgnn import TemporalModel
from pipeline.stages.device import CopyStream, to_device
from pipeline.stages.features import FeatureTable
from pipeline.stages.mitigation import SimilarityTable, mitigate
from sampler.temporal import TemporalSampler


# torch.profiler labels of the train stage's parts (benchmarks/breakdown.py reads them)
TRAIN_STEP_PARTS = ("train/forward", "train/backward", "train/optimizer")


@dataclass
class BatchContext:
    """Everything one batch carries between stages."""

    index: int
    events: np.ndarray
    roots: np.ndarray  # the (node, time) roots sampled and embedded: blocks[-1]'s destinations
    root_ts: np.ndarray
    input_nodes: torch.Tensor  # host ids of the input layer's nodes: the memory fetch reads them, not the blocks
    negative_sources: bool = False  # the roots end with a source for each negative (ModelInputs)
    scored_roots: tuple[torch.Tensor, torch.Tensor] | None = None  # ModelInputs' root_rows and root_ts, if any
    blocks: list = field(default_factory=list)
    edge_feat: list = field(default_factory=list)
    node_feat: torch.Tensor | None = None
    root_edge_feat: torch.Tensor | None = None
    memory: MemoryBatch | None = None
    staleness: int = 0
    mitigated: int = 0
    features_ready: object = None
    memory_ready: object = None
    update: MemoryUpdate | None = None


@dataclass
class StreamTensors:
    """The event stream's columns, and its features as tables the fetch stage gathers rows from (in RAM,
    pinned when feeding a GPU, or memory-mapped from a prepared stream)."""

    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    edge_feat: FeatureTable | None
    node_feat: FeatureTable | None


@dataclass
class Mitigation:
    """Staleness mitigation settings plus the similarity table it reads (docs/method.md §6).

    The table is rebuilt at the first memory fetch that has something to build it from (written memory
    for cosine similarity, processed events for co-neighbours), then every `refresh_every` batches.
    """

    table: SimilarityTable
    quantile: float
    gamma: float
    refresh_every: int
    last_refresh: int | None = None

    def due(self, batch: int) -> bool:
        """Whether the table should be rebuilt before the memory fetch of `batch` (in an epoch)."""
        return (self.table.is_empty() or self.last_refresh is None or batch < self.last_refresh
                or batch - self.last_refresh >= self.refresh_every)


# (batch index, its events) -> negative destinations (num_neg * B, negative k * B + j against event j) and
# their sources (same layout), or None where each negative keeps its event's source
NegativeFn = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class GradientStep:
    """What the train stage does in training: forward, BCE loss, backward and optimizer step. Batches reach
    it in batch order, so `losses` is in batch order."""

    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)

    def __call__(self, model: TemporalModel, inputs: ModelInputs, i: int, ctx: BatchContext) -> MemoryUpdate | None:
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with record_function(TRAIN_STEP_PARTS[0]):
            pos, neg, update = model(inputs)
            loss = link_prediction_loss(pos, neg)
        value = loss.item()  # the step's one wait for the device
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} at batch {i}; lower train.lr")
        with record_function(TRAIN_STEP_PARTS[1]):
            loss.backward()
        with record_function(TRAIN_STEP_PARTS[2]):
            self.optimizer.step()
        self.losses.append(value)
        return update


@dataclass
class Scoring:
    """What the train stage does in evaluation: score only. Keeps each batch's scores in batch order,
    positives `(B,)` and negatives `(B, num_neg)`, then calls `on_scored(i, ctx)` if given (before the
    batch's memory is written: `pipeline/run/ranking.py` ranks against every destination there)."""

    on_scored: Callable[[int, BatchContext], None] | None = None
    pos_scores: list[np.ndarray] = field(default_factory=list)
    neg_scores: list[np.ndarray] = field(default_factory=list)

    def __call__(self, model: TemporalModel, inputs: ModelInputs, i: int, ctx: BatchContext) -> MemoryUpdate | None:
        model.eval()
        with torch.no_grad():
            pos, neg, update = model(inputs)
        self.pos_scores.append(pos.float().cpu().numpy())
        self.neg_scores.append(neg.float().cpu().numpy().reshape(inputs.num_neg, -1).T)
        if self.on_scored is not None:
            self.on_scored(i, ctx)
        return update


@dataclass(kw_only=True)
class LinkPredictionStages:
    """The five stage functions for self-supervised link prediction over a list of event batches.

    The train stage runs `step`: a `GradientStep` in training, `Scoring` in evaluation. Batch `i` writes
    store version `version_offset + i`, so evaluation continues the version sequence of the training epoch
    it follows.
    """

    batches: list[np.ndarray]
    stream: StreamTensors
    sampler: TemporalSampler
    negatives: NegativeFn
    num_neg: int
    model: TemporalModel
    store: MemoryStore | None
    device: torch.device
    step: GradientStep | Scoring
    version_offset: int = 0
    sample_seed: Callable[[int], int] = lambda i: i
    mitigation: Mitigation | None = None
    query_time: str = "event"  # embedding.query_time
    mitigated_roots: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.copies = CopyStream(self.device)

    def sample(self, i: int) -> BatchContext:
        """Stage 1: negatives and temporal neighbours of the batch's roots, as DGL blocks."""
        events = self.batches[i]
        src, dst, t = self.stream.src[events], self.stream.dst[events], self.stream.t[events]
        neg_dst, neg_src = self.negatives(i, events)
        negatives = [neg_dst] if neg_src is None else [neg_dst, neg_src]
        roots = np.concatenate([src, dst, *negatives])
        root_ts = np.concatenate([t, t, *[np.tile(t, self.num_neg)] * len(negatives)])
        nodes, times, rows = embedded_roots(roots, root_ts, self.query_time)
        blocks = self.sampler.sample(nodes, times, seed=self.sample_seed(i))
        return BatchContext(index=i, events=events, roots=nodes, root_ts=times, input_nodes=blocks[0].srcdata["ID"],
                            blocks=blocks, negative_sources=neg_src is not None,
                            scored_roots=None if rows is None else (torch.from_numpy(rows), torch.from_numpy(root_ts)))

    def fetch_features(self, i: int, ctx: BatchContext) -> None:
        """Stage 2: gather the sub-graph's edge and node features and move them with the blocks."""
        edge_feat, node_feat = self.stream.edge_feat, self.stream.node_feat
        with self.copies.copying():
            if edge_feat is not None:
                *per_block, at_roots = edge_feat.gather([*(b.edata["ID"] for b in ctx.blocks),
                                                         torch.from_numpy(np.asarray(ctx.events, dtype=np.int64))])
                ctx.edge_feat = [to_device(rows, self.device) for rows in per_block]
                ctx.root_edge_feat = to_device(at_roots, self.device)
            else:
                ctx.edge_feat = [None] * len(ctx.blocks)
            if node_feat is not None:
                ctx.node_feat = to_device(node_feat.gather([ctx.blocks[0].srcdata["ID"]])[0], self.device)
            ctx.blocks = [b.to(self.device, non_blocking=True) for b in ctx.blocks]
            if ctx.scored_roots is not None:
                ctx.scored_roots = tuple(to_device(part, self.device) for part in ctx.scored_roots)
            for block in ctx.blocks:
                block.materialize_data()
        ctx.features_ready = self.copies.done()

    def fetch_memory(self, i: int, ctx: BatchContext, staleness: int) -> int | None:
        """Stage 3: read the input nodes' memory and mails (optionally mitigating stale roots); return the
        staleness the read saw, from the committed version it read (the scheduled `staleness` is an
        upper bound: an update may commit between the scheduler's check and the read)."""
        ctx.staleness = staleness
        if self.store is None:
            return None
        memory = self.store.fetch(ctx.input_nodes)
        ctx.staleness = self.version_offset + i - 1 - memory.committed
        if self.mitigation is not None:
            if self.mitigation.due(i):
                self._refresh_similarity(i, written=memory.committed >= 0)
            positions = torch.arange(len(ctx.roots))
            memory, ctx.mitigated = mitigate(
                memory, positions, torch.from_numpy(ctx.root_ts), self.mitigation.table, self.store,
                quantile=self.mitigation.quantile, gamma=self.mitigation.gamma,
            )
            self.mitigated_roots += ctx.mitigated
        with self.copies.copying():
            ctx.memory = memory.to(self.device, non_blocking=True)
        ctx.memory_ready = self.copies.done()
        return ctx.staleness

    def _refresh_similarity(self, i: int, written: bool) -> None:
        """Rebuild the similarity table from the written memory (cosine) or the events of the batches
        before `i` (coneighbour); without either there is nothing to build it from yet."""
        table = self.mitigation.table
        if table.measure == "cosine" and written:
            table.refresh_from_memory(self.store.fetch(torch.arange(self.store.num_nodes)).mem)
        elif table.measure == "coneighbour" and i > 0:
            seen = np.concatenate(self.batches[:i])
            table.refresh_from_events(self.stream.src[seen], self.stream.dst[seen], self.store.num_nodes)
        else:
            return
        self.mitigation.last_refresh = i

    def _inputs(self, ctx: BatchContext) -> ModelInputs:
        root_rows, root_ts = (None, None) if ctx.scored_roots is None else ctx.scored_roots
        return ModelInputs(
            blocks=ctx.blocks, memory=ctx.memory, edge_feat=ctx.edge_feat, node_feat=ctx.node_feat,
            root_edge_feat=ctx.root_edge_feat, num_pos=len(ctx.events), num_neg=self.num_neg,
            negative_sources=ctx.negative_sources, root_rows=root_rows, root_ts=root_ts,
        )

    def train(self, i: int, ctx: BatchContext) -> None:
        """Stage 4: the `step` on the batch (a gradient step, or scoring only); keeps its memory update."""
        self.copies.wait(ctx.features_ready)
        self.copies.wait(ctx.memory_ready)
        ctx.update = self.step(self.model, self._inputs(ctx), i, ctx)
        ctx.blocks, ctx.edge_feat, ctx.node_feat, ctx.memory, ctx.scored_roots = [], [], None, None, None

    def update_memory(self, i: int, ctx: BatchContext) -> None:
        """Stage 5: write the batch's new memory and mails back to the store (commits its version)."""
        if self.store is None or ctx.update is None:
            return
        self.store.update(self.version_offset + i, ctx.update)
        ctx.update = None


def embedded_roots(roots: np.ndarray, root_ts: np.ndarray,
                   query_time: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The (node, time) roots the sampler and the embedding see for the scored `roots` at `root_ts`, and
    each scored root's row among them: the roots themselves under `embedding.query_time` "event"; under
    "batch", the batch's distinct nodes, all at its first event time (PyG's TGN embeds each node once per
    batch from what came before the batch)."""
    if query_time == "event":
        return roots, root_ts, None
    nodes, rows = np.unique(roots, return_inverse=True)
    return nodes, np.full(len(nodes), root_ts.min()), rows


def link_prediction_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of positives against ones and negatives against zeros."""
    return F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits)) + \
        F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))
