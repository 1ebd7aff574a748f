"""Multi-layer temporal neighbour sampling on a T-CSR that returns DGL message-flow blocks."""
from __future__ import annotations

from dataclasses import dataclass

import dgl
import numpy as np
import torch

from sampler.tcsr import TCSR

STRATEGIES = ("recent", "uniform")


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


def recent_neighbours(tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, fanout: int) -> SampledEdges:
    """The `fanout` latest edges of each node strictly before its time, newest first (TGL "recent")."""
    start, end = tcsr.segments_before(nodes, times)
    steps_back = np.arange(fanout, dtype=np.int64)
    candidates = end[:, None] - 1 - steps_back
    return _keep(candidates, steps_back < np.minimum(end - start, fanout)[:, None])


def uniform_neighbours(
    tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, fanout: int, rng: np.random.Generator
) -> SampledEdges:
    """`fanout` draws with replacement among each node's edges strictly before its time, newest first."""
    start, end = tcsr.segments_before(nodes, times)
    available = end - start
    offsets = (rng.random((len(start), fanout)) * available[:, None]).astype(np.int64)
    newest_first = np.sort(offsets, axis=1)[:, ::-1]
    return _keep(start[:, None] + newest_first, np.broadcast_to((available > 0)[:, None], offsets.shape))


def _keep(candidates: np.ndarray, valid: np.ndarray) -> SampledEdges:
    """The valid cells of a (roots, fanout) candidate matrix, in row-major order (grouped by root)."""
    root, _ = np.nonzero(valid)
    return SampledEdges(root=root, entry=candidates[valid])


def build_block(tcsr: TCSR, nodes: np.ndarray, times: np.ndarray, edges: SampledEdges) -> dgl.DGLBlock:
    """A DGL block whose destinations are `nodes` at `times` and whose sources are them, then one per edge.

    Sources are not de-duplicated (as in TGL), so the next layer's roots are exactly this block's sources.
    """
    num_roots, num_edges = len(nodes), len(edges.entry)
    block = dgl.create_block(
        (torch.arange(num_roots, num_roots + num_edges), torch.from_numpy(edges.root)),
        num_src_nodes=num_roots + num_edges,
        num_dst_nodes=num_roots,
    )
    edge_times = tcsr.ts[edges.entry]
    block.dstdata["ID"] = torch.from_numpy(nodes)
    block.dstdata["ts"] = torch.from_numpy(times)
    block.srcdata["ID"] = torch.from_numpy(np.concatenate([nodes, tcsr.nbr[edges.entry]]))
    block.srcdata["ts"] = torch.from_numpy(np.concatenate([times, edge_times]))
    block.edata["ID"] = torch.from_numpy(tcsr.eid[edges.entry])
    block.edata["dt"] = torch.from_numpy((times[edges.root] - edge_times).astype(np.float32))
    return block


class TemporalSampler:
    """Samples temporal neighbourhoods of (node, time) roots, one block per layer.

    Stateless per call: the result depends only on the roots, their times and the seed, so batches can be
    sampled ahead of time, out of order or in parallel threads.
    """

    def __init__(self, tcsr: TCSR, fanouts: list[int], strategy: str = "recent", seed: int = 0):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}, expected one of {STRATEGIES}")
        if not fanouts or any(int(f) < 0 for f in fanouts):
            raise ValueError(f"fanouts must be a non-empty list of non-negative ints, got {fanouts}")
        self.tcsr = tcsr
        self.fanouts = [int(f) for f in fanouts]
        self.strategy = strategy
        self.seed = seed

    def find_neighbours(
        self, nodes: np.ndarray, times: np.ndarray, fanout: int, rng: np.random.Generator
    ) -> SampledEdges:
        """The edges of one layer for roots `nodes` at `times`, by this sampler's strategy."""
        if fanout == 0:
            return SampledEdges.empty()
        if self.strategy == "recent":
            return recent_neighbours(self.tcsr, nodes, times, fanout)
        return uniform_neighbours(self.tcsr, nodes, times, fanout, rng)

    def sample(self, roots: np.ndarray, root_ts: np.ndarray, seed: int | None = None) -> list[dgl.DGLBlock]:
        """Blocks from input layer to output layer; `blocks[-1]`'s destinations are `roots` in order.

        `blocks[l]` uses `fanouts[l]` (DGL's convention); uniform draws use `seed`, else the sampler's seed.
        """
        rng = np.random.default_rng(self.seed if seed is None else seed)
        nodes = np.ascontiguousarray(roots, dtype=np.int64)
        times = np.ascontiguousarray(root_ts, dtype=np.float64)
        blocks = []
        for fanout in reversed(self.fanouts):
            block = build_block(self.tcsr, nodes, times, self.find_neighbours(nodes, times, fanout, rng))
            blocks.append(block)
            nodes, times = block.srcdata["ID"].numpy(), block.srcdata["ts"].numpy()
        return blocks[::-1]
