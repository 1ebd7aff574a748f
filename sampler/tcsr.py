"""T-CSR: a per-node, time-sorted adjacency index of an event stream (TGL's temporal CSR)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TCSR:
    """Temporal CSR: the edges of node `v` are positions `indptr[v]:indptr[v+1]`, sorted by time.

    Inside a node's segment, `ts` ascends and ties keep edge-id order, so a time search per node
    finds "all edges strictly before t" as a prefix of the segment.
    """

    indptr: np.ndarray  # int64 (N+1,)
    nbr: np.ndarray  # int64 (nnz,)
    ts: np.ndarray  # float64 (nnz,)
    eid: np.ndarray  # int64 (nnz,)
    _distinct_times: np.ndarray = field(init=False, repr=False, compare=False)
    _search_key: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Build the search index once, up front, so concurrent sampling threads only read it."""
        distinct_times = np.unique(self.ts)
        object.__setattr__(self, "_distinct_times", distinct_times)
        object.__setattr__(self, "_search_key", _node_time_key(self.indptr, self.ts, distinct_times))

    @classmethod
    def from_events(
        cls,
        src: np.ndarray,
        dst: np.ndarray,
        t: np.ndarray,
        num_nodes: int,
        eid: np.ndarray | None = None,
        add_reverse: bool = True,
    ) -> "TCSR":
        """Index events `src -> dst` at time `t` (edge ids `eid`, default the row index).

        With `add_reverse`, every event is also an edge of `dst` towards `src`, so both endpoints see it
        in their history (the usual choice for interaction graphs).
        """
        src, dst, t, eid = _validated_events(src, dst, t, num_nodes, eid)
        if add_reverse:
            owner = np.stack([src, dst], axis=1).ravel()
            nbr = np.stack([dst, src], axis=1).ravel()
            t, eid = np.repeat(t, 2), np.repeat(eid, 2)
        else:
            owner, nbr = src, dst
        order = np.lexsort((eid, t, owner))
        degree = np.bincount(owner, minlength=num_nodes)
        indptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
        return cls(indptr=indptr, nbr=nbr[order], ts=t[order], eid=eid[order])

    @property
    def num_nodes(self) -> int:
        """Number of nodes the index covers."""
        return len(self.indptr) - 1

    def segments_before(self, nodes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions `[start, end)` of each node's edges with time strictly before its given time.

        One vectorised binary search over all queries: stateless, so any batch can be searched in any order.
        The queries are searched in sorted order, which keeps the search cache-friendly.
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        time_rank = np.searchsorted(self._distinct_times, times, side="left")
        query = nodes * _rank_stride(self._distinct_times) + time_rank
        order = np.argsort(query)
        end = np.empty_like(query)
        end[order] = np.searchsorted(self._search_key, query[order], side="left")
        return self.indptr[nodes], end

def _node_time_key(indptr: np.ndarray, ts: np.ndarray, distinct_times: np.ndarray) -> np.ndarray:
    """Globally ascending int64 key `owner * stride + rank(ts)` of every entry: exact, unlike a float key."""
    stride = _rank_stride(distinct_times)
    num_nodes = len(indptr) - 1
    if num_nodes * stride >= np.iinfo(np.int64).max:
        raise OverflowError("T-CSR too large for an int64 (node, time rank) search key")
    owner = np.repeat(np.arange(num_nodes, dtype=np.int64), np.diff(indptr))
    return owner * stride + np.searchsorted(distinct_times, ts, side="left")


def _rank_stride(distinct_times: np.ndarray) -> int:
    """The key's multiplier per node: one more than the number of time ranks, so nodes never overlap."""
    return len(distinct_times) + 1


def _validated_events(
    src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int, eid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The event columns as int64/float64 arrays, after checking shapes, node range and finite times."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    t = np.asarray(t, dtype=np.float64)
    eid = np.arange(len(src), dtype=np.int64) if eid is None else np.asarray(eid, dtype=np.int64)
    if not (src.ndim == 1 and src.shape == dst.shape == t.shape == eid.shape):
        shapes = ", ".join(str(column.shape) for column in (src, dst, t, eid))
        raise ValueError(f"src, dst, t, eid must be 1-D of equal length, got {shapes}")
    for name, ids in (("src", src), ("dst", dst)):
        if len(ids) and (ids.min() < 0 or ids.max() >= num_nodes):
            raise ValueError(f"{name} node ids must lie in [0, {num_nodes}), got [{ids.min()}, {ids.max()}]")
    if not np.isfinite(t).all():
        raise ValueError("event times must be finite")
    return src, dst, t, eid
