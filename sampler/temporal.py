"""Multi-layer temporal neighbour sampling on a T-CSR that returns DGL message-flow blocks.

`STRATEGIES` holds the neighbour-finding functions `sampler.strategy` selects from. A strategy is called
as `find(tcsr, nodes, times, fanout, rng)` and returns the `SampledEdges` of one layer, using only edges
strictly before each root's time; `rng` is the generator for any random draws (seeded per batch), so the
result depends only on its arguments.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dgl
import numpy as np
import torch

from common.registry import Registry
from sampler.config import SamplerConfig
from sampler.tcsr import TCSR


@dataclass(frozen=True)
class SampledEdges:
    """The edges sampled for one layer: edge `i` is T-CSR position `entry[i]` attached to root `root[i]`.

    Edges are grouped by root (ascending root index) and, inside a root, newest first.
    """

    root: np.ndarray  # int64 local index of the root each edge belongs to
    entry: np.ndarray  # int64 position in the T-CSR arrays

    @classmethod
    def empty(cls) -> "SampledEdges":
        """No edges (a layer with fanout 0)."""
        return cls(root=np.empty(0, dtype=np.int64), entry=np.empty(0, dtype=np.int64))


NeighbourFinder = Callable[[TCSR, np.ndarray, np.ndarray, int, np.random.Generator], SampledEdges]
STRATEGIES: Registry[NeighbourFinder] = Registry("sampling strategy", "sampler.strategy")


@STRATEGIES.register("recent")
def recent_neighbours(tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, fanout: int,
                      rng: np.random.Generator | None = None) -> SampledEdges:
    """The `fanout` latest edges of each node strictly before its time, newest first (TGL "recent").

    Deterministic: `rng` is accepted for the common strategy signature and not used.
    """
    start, end = tcsr.segments_before(nodes, times)
    count = np.minimum(end - start, fanout)
    root = np.repeat(np.arange(len(count), dtype=np.int64), count)
    first_slot = np.cumsum(count) - count
    entry = np.repeat(end - 1 + first_slot, count) - np.arange(len(root), dtype=np.int64)
    return SampledEdges(root=root, entry=entry)


@STRATEGIES.register("uniform")
def uniform_neighbours(
    tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, fanout: int, rng: np.random.Generator
) -> SampledEdges:
    """`fanout` draws with replacement among each node's edges strictly before its time, newest first.

    Only roots with history consume random numbers, one row of `fanout` uniforms each, in root order.
    """
    start, end = tcsr.segments_before(nodes, times)
    has_history = np.flatnonzero(end > start)
    available = (end - start)[has_history, None]
    offsets = (rng.random((len(has_history), fanout)) * available).astype(np.int64)
    newest_first = np.sort(offsets, axis=1)[:, ::-1]
    return SampledEdges(
        root=np.repeat(has_history, fanout), entry=(start[has_history, None] + newest_first).ravel()
    )


def build_block(tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, edges: SampledEdges) -> dgl.DGLBlock:
    """A DGL block whose destinations are `nodes` at `times` and whose sources are them, then one per edge.

    Sources are not de-duplicated (as in TGL), so the next layer's roots are exactly this block's sources.
    """
    block = _edges_into_roots(len(nodes), edges.root)
    edge_times = tcsr.ts[edges.entry]
    block.dstdata["ID"] = torch.from_numpy(nodes)
    block.dstdata["ts"] = torch.from_numpy(times)
    block.srcdata["ID"] = torch.from_numpy(np.concatenate([nodes, tcsr.nbr[edges.entry].astype(np.int64)]))
    block.srcdata["ts"] = torch.from_numpy(np.concatenate([times, edge_times]))
    block.edata["ID"] = torch.from_numpy(tcsr.eid[edges.entry].astype(np.int64))
    block.edata["dt"] = torch.from_numpy((times[edges.root] - edge_times).astype(np.float32))
    return block


def _edges_into_roots(num_roots: int, edge_root: np.ndarray) -> dgl.DGLBlock:
    """A featureless block where edge `e` goes from source `num_roots + e` to destination `edge_root[e]`.

    Built directly in CSC form (in-edges grouped by root, as `edge_root` already is), the format that
    message passing towards the roots uses, so DGL need not convert it later.
    """
    num_edges = len(edge_root)
    in_edges_ptr = np.concatenate([[0], np.cumsum(np.bincount(edge_root, minlength=num_roots))])
    sources = torch.arange(num_roots, num_roots + num_edges)
    return dgl.create_block(
        ("csc", (torch.from_numpy(in_edges_ptr), sources, torch.arange(num_edges))),
        num_src_nodes=num_roots + num_edges,
        num_dst_nodes=num_roots,
    )


class TemporalSampler:
    """Samples temporal neighbourhoods of (node, time) roots, one block per layer.

    Stateless per call: the result depends only on the roots, their times and the seed, so batches can be
    sampled ahead of time, out of order or in parallel threads.
    """

    def __init__(self, tcsr: TCSR, fanouts: list[int], strategy: str = SamplerConfig.strategy, seed: int = 0):
        self._find = STRATEGIES.get(strategy)
        if not fanouts or any(int(f) < 0 for f in fanouts):
            raise ValueError(f"fanouts must be a non-empty list of non-negative ints, got {fanouts}")
        self.tcsr = tcsr
        self.fanouts = [int(f) for f in fanouts]
        self.strategy = strategy
        self.seed = seed

    def find_neighbours(
        self, nodes: np.ndarray, times: np.ndarray, fanout: int, rng: np.random.Generator | None = None
    ) -> SampledEdges:
        """The edges of one layer for roots `nodes` at `times`, by this sampler's strategy.

        Random draws come from `rng`, by default a generator seeded with the sampler's seed.
        """
        if fanout == 0:
            return SampledEdges.empty()
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return self._find(self.tcsr, nodes, times, fanout, rng)

    def sample(self, roots: np.ndarray, root_ts: np.ndarray, seed: int | None = None) -> list[dgl.DGLBlock]:
        """Blocks from input layer to output layer; `blocks[-1]`'s destinations are `roots` in order.

        `blocks[l]` uses `fanouts[l]` (DGL's convention); uniform draws use `seed`, else the sampler's seed.
        """
        nodes, times = self._validated_roots(roots, root_ts)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        blocks = []
        for fanout in reversed(self.fanouts):
            block = build_block(self.tcsr, nodes, times, self.find_neighbours(nodes, times, fanout, rng))
            blocks.append(block)
            nodes, times = block.srcdata["ID"].numpy(), block.srcdata["ts"].numpy()
        return blocks[::-1]

    def _validated_roots(self, roots: np.ndarray, root_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Private int64/float64 copies of the roots (the blocks keep them), after checking shapes and ids."""
        nodes = np.array(roots, dtype=np.int64)
        times = np.array(root_ts, dtype=np.float64)
        if nodes.ndim != 1 or nodes.shape != times.shape:
            raise ValueError(f"roots and root_ts must be 1-D of equal length, got {nodes.shape}, {times.shape}")
        num_nodes = self.tcsr.num_nodes
        if len(nodes) and (nodes.min() < 0 or nodes.max() >= num_nodes):
            raise ValueError(f"root ids must lie in [0, {num_nodes}), got [{nodes.min()}, {nodes.max()}]")
        return nodes, times
