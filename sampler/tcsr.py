"""T-CSR: a per-node, time-sorted adjacency index of an event stream (TGL's temporal CSR)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.temporal_index import IndexArrays, build_index, in_time_order


@dataclass(frozen=True)
class TCSR:
    """Temporal CSR: the edges of node `v` are positions `indptr[v]:indptr[v+1]`, sorted by time.

    Inside a node's segment, `ts` ascends and ties keep edge-id order, so a time search per node
    finds "all edges strictly before t" as a prefix of the segment. The arrays may be memory-mapped
    files (a prepared stream's index): searches only read them.
    """

    indptr: np.ndarray  # int64 (N+1,)
    nbr: np.ndarray  # int32 or int64 (nnz,)
    ts: np.ndarray  # float64 (nnz,)
    eid: np.ndarray  # int32 or int64 (nnz,)

    @classmethod
    def from_arrays(cls, arrays: IndexArrays) -> "TCSR":
        """The index over arrays built by `graph.temporal_index.build_index` (in RAM or memory-mapped)."""
        return cls(indptr=arrays.indptr, nbr=arrays.nbr, ts=arrays.ts, eid=arrays.eid)

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
        in their history (the usual choice for interaction graphs). A stream in (time, edge id) order, as
        every event stream is, is indexed in linear time; any other order is sorted first.
        """
        src, dst, t, eid = _validated_events(src, dst, t, num_nodes, eid)
        if not in_time_order(t, eid):
            order = np.lexsort((eid, t))
            src, dst, t, eid = src[order], dst[order], t[order], eid[order]
        return cls.from_arrays(build_index(src, dst, t, num_nodes, eid=eid, add_reverse=add_reverse))

    @property
    def num_nodes(self) -> int:
        """Number of nodes the index covers."""
        return len(self.indptr) - 1

    def segments_before(self, nodes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions `[start, end)` of each node's edges with time strictly before its given time.

        One vectorised binary search inside every queried segment at once: stateless, so any batch can be
        searched in any order, and it reads only the few `ts` entries it probes (cheap on a mapped file).
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        times = np.asarray(times, dtype=np.float64)
        start = np.asarray(self.indptr[nodes])
        low, high = start.copy(), np.asarray(self.indptr[nodes + 1])
        last = len(self.ts) - 1
        for _ in range(int((high - low).max(initial=0)).bit_length()):  # enough halvings for the longest segment
            mid = (low + high) >> 1
            before = (np.asarray(self.ts[np.minimum(mid, last)]) < times) & (low < high)
            low = np.where(before, mid + 1, low)
            high = np.where(before | (low >= high), high, mid)
        return start, low


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
