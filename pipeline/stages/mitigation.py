"""Staleness mitigation (docs/method.md §6): a root whose memory is much older than the batch's other roots
borrows from the memory of similar nodes that were updated more recently.

At memory fetch, `dt_v = t_v - mem_ts_v` for each root; roots with `dt_v` above the batch's `quantile`
are stale, and a stale root's memory becomes `gamma * s_v + (1 - gamma) * mean(s_u)` over its top-K
similar nodes `u` whose memory is newer than `v`'s. The paper leaves similarity open, so the table is
ours, with two measures: cosine similarity of memory vectors, or Jaccard overlap of neighbour sets.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from memory.batch import MemoryBatch, as_host_nodes

SIMILARITIES = ("cosine", "coneighbour")


@dataclass(frozen=True)
class MitigationConfig:
    """`pipeline.mitigation`: blend stale roots' memory with similar, fresher nodes' (docs/method.md §6)."""

    enabled: bool = False
    quantile: float = 0.99
    top_k: int = 10
    gamma: float = 0.9
    similarity: str = "cosine"
    refresh_every: int = 20


NO_NEIGHBOUR = -1


class MemoryReader(Protocol):
    """Anything that reads memory rows by node id, as `MemoryStore.fetch` does."""

    def fetch(self, nodes: torch.Tensor) -> MemoryBatch: ...


class SimilarityTable:
    """Each node's `top_k` most similar other nodes, most similar first (-1 pads missing entries).

    `measure` picks how the table is refreshed: "cosine" from memory vectors (`refresh_from_memory`),
    "coneighbour" from processed events (`refresh_from_events`). Similarities are computed `chunk_size`
    rows at a time, so memory stays O(chunk_size * num_nodes). Until the first refresh no node has a
    similar node, so nothing is mitigated.
    """

    def __init__(self, num_nodes: int, top_k: int, measure: str = MitigationConfig.similarity,
                 chunk_size: int = 1024) -> None:
        if measure not in SIMILARITIES:
            raise ValueError(f"similarity measure must be one of {SIMILARITIES}, got '{measure}'")
        self.num_nodes = num_nodes
        self.top_k = top_k
        self.measure = measure
        self.chunk_size = chunk_size
        self.table = torch.full((num_nodes, top_k), NO_NEIGHBOUR, dtype=torch.int64)

    def refresh_from_memory(self, mem: torch.Tensor) -> None:
        """Rebuild the table from the cosine similarity of the nodes' memory vectors (N, d_m)."""
        self._require("cosine", len(mem))
        self.table = cosine_top_k(mem.detach().to("cpu", torch.float32), self.top_k, self.chunk_size)

    def refresh_from_events(self, src: np.ndarray, dst: np.ndarray, num_nodes: int) -> None:
        """Rebuild the table from neighbour-set overlap of the given processed events.

        The caller picks the window (all events so far, or only recent ones).
        """
        self._require("coneighbour", num_nodes)
        adjacency = neighbour_sets(np.asarray(src), np.asarray(dst), num_nodes)
        self.table = torch.from_numpy(jaccard_top_k(adjacency, self.top_k, self.chunk_size))

    def _require(self, measure: str, num_nodes: int) -> None:
        if self.measure != measure:
            raise ValueError(f"similarity table measures '{self.measure}', cannot refresh it by '{measure}'")
        if num_nodes != self.num_nodes:
            raise ValueError(f"similarity table has {self.num_nodes} nodes, refresh got {num_nodes}")

    @property
    def table(self) -> torch.Tensor:
        """The `(num_nodes, top_k)` int64 table; setting it also notes whether it is empty."""
        return self._table

    @table.setter
    def table(self, value: torch.Tensor) -> None:
        self._table = value
        self._empty = bool((value == NO_NEIGHBOUR).all())

    def is_empty(self) -> bool:
        """True while no node has a similar node (before the first refresh that found any)."""
        return self._empty

    def neighbours(self, nodes: torch.Tensor) -> torch.Tensor:
        """The similar nodes of each given node, (n, top_k) int64, -1 where there are fewer."""
        return self.table[as_host_nodes(nodes)]


def cosine_top_k(vectors: torch.Tensor, top_k: int, chunk_size: int) -> torch.Tensor:
    """Top-K other rows by cosine similarity, (N, top_k) int64; zero vectors have and are no neighbour."""
    num_rows = len(vectors)
    unit = F.normalize(vectors, dim=1)
    has_direction = vectors.norm(dim=1) > 0
    found = min(top_k, max(num_rows - 1, 0))
    result = torch.full((num_rows, top_k), NO_NEIGHBOUR, dtype=torch.int64)
    for start in range(0, num_rows, chunk_size):
        stop = min(start + chunk_size, num_rows)
        similarity = unit[start:stop] @ unit.T
        similarity[:, ~has_direction] = -torch.inf
        similarity[torch.arange(stop - start), torch.arange(start, stop)] = -torch.inf
        values, indices = similarity.topk(found, dim=1)
        indices[torch.isinf(values)] = NO_NEIGHBOUR
        result[start:stop, :found] = indices
    result[~has_direction] = NO_NEIGHBOUR
    return result


def neighbour_sets(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """Binary symmetric adjacency: row v marks every node v interacted with, in either direction."""
    rows = np.concatenate([src, dst])
    cols = np.concatenate([dst, src])
    adjacency = sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(num_nodes, num_nodes))
    adjacency.data[:] = 1
    return adjacency


def jaccard_top_k(adjacency: sp.csr_matrix, top_k: int, chunk_size: int) -> np.ndarray:
    """Top-K other nodes by Jaccard overlap of neighbour sets, (N, top_k) int64; ties go to the lower id.

    Only nodes sharing at least one neighbour count as similar.
    """
    num_nodes = adjacency.shape[0]
    degree = np.diff(adjacency.indptr)
    result = np.full((num_nodes, top_k), NO_NEIGHBOUR, dtype=np.int64)
    for start in range(0, num_nodes, chunk_size):
        shared = (adjacency[start:start + chunk_size] @ adjacency.T).tocoo()
        rows, cols = shared.row.astype(np.int64) + start, shared.col.astype(np.int64)
        other = rows != cols
        rows, cols, common = rows[other], cols[other], shared.data[other]
        jaccard = common / (degree[rows] + degree[cols] - common)
        ranked_rows, ranked_cols, rank = rank_within_rows(rows, cols, jaccard)
        keep = rank < top_k
        result[ranked_rows[keep], rank[keep]] = ranked_cols[keep]
    return result


def rank_within_rows(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort entries by row, then score descending, then column; return rows, columns and rank in row."""
    order = np.lexsort((cols, -scores, rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    return rows, cols, rank


def stale_mask(dt: torch.Tensor, quantile: float) -> torch.Tensor:
    """True where a root's memory age lies strictly above the batch's `quantile` of ages."""
    if len(dt) == 0:
        return torch.zeros(0, dtype=torch.bool, device=dt.device)
    return dt > torch.quantile(dt, quantile)


def mitigate(batch: MemoryBatch, root_positions: torch.Tensor, root_ts: torch.Tensor, table: SimilarityTable,
             store: MemoryReader, quantile: float = MitigationConfig.quantile,
             gamma: float = MitigationConfig.gamma) -> tuple[MemoryBatch, int]:
    """Blend the memory of the batch's stale roots with their newer similar nodes' memory.

    `root_positions` are the roots' rows in `batch`, `root_ts` their event times. Returns a batch whose
    other rows (and the input batch) are untouched, and how many roots were blended; a stale root with
    no similar node newer than itself keeps its memory. A blended root gets a `row` of its own.

    Only roots that could be blended take part in the quantile: a root whose memory was never written
    has no age (its `mem_ts` is 0, not a time), and a root without similar nodes in the table (with
    cosine similarity: one whose memory is still all zeros) has nothing to borrow from.
    """
    device = batch.mem.device
    positions = torch.as_tensor(root_positions, dtype=torch.int64, device=device)
    dt = torch.as_tensor(root_ts, dtype=torch.float64, device=device) - batch.mem_ts[positions]
    similar = table.neighbours(batch.nodes[positions]).to(device)
    eligible = (batch.version[positions] >= 0) & (similar != NO_NEIGHBOUR).any(dim=1)
    positions, dt, similar = positions[eligible], dt[eligible], similar[eligible]
    is_stale = stale_mask(dt, quantile)
    stale, candidates = positions[is_stale], similar[is_stale]
    if len(stale) == 0:
        return batch, 0
    rows = store.fetch(candidates.clamp(min=0).flatten()).to(device)
    candidate_mem = rows.mem.view(*candidates.shape, -1)
    newer = (candidates != NO_NEIGHBOUR) & (rows.mem_ts.view(candidates.shape) > batch.mem_ts[stale, None])
    count = newer.sum(dim=1)
    mean = (candidate_mem * newer.unsqueeze(-1)).sum(dim=1) / count.clamp(min=1).unsqueeze(-1)
    blended = gamma * batch.mem[stale] + (1 - gamma) * mean
    mitigated = count > 0
    changed = stale[mitigated]
    mem, row = batch.mem.clone(), batch.row.clone()
    mem[changed] = blended[mitigated]
    row[changed] = int(row.max()) + 1 + torch.arange(len(changed), device=device)
    return replace(batch, mem=mem, row=row), len(changed)
