"""The arrays of a temporal CSR index (TGL's T-CSR) and their construction in linear time.

The edges of node `v` sit at positions `indptr[v]:indptr[v+1]`, in time order (ties in edge-id order). From
a stream already in (time, edge id) order, a stable counting sort by owner keeps that order inside each
node's segment, so the index is built in two passes over the stream, chunk by chunk, with memory bounded by
the chunk and the node count: the arrays it fills may be memory-mapped files (`allocate`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INDEX_CHUNK = 1 << 20  # events per step of the counting sort
INDEX_ARRAYS = ("indptr", "nbr", "ts", "eid")

# (array name, shape, dtype) -> a writable array: np.empty by default, or a memory-mapped file
Allocator = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


@dataclass(frozen=True)
class IndexArrays:
    """A T-CSR's arrays: `indptr` (N+1,) int64; `nbr`, `ts`, `eid` one entry per (owner, edge)."""

    indptr: np.ndarray
    nbr: np.ndarray
    ts: np.ndarray
    eid: np.ndarray


def compact_id_dtype(limit: int) -> np.dtype:
    """int32 when every id below `limit` fits it (half the bytes), else int64."""
    return np.dtype(np.int32 if limit <= np.iinfo(np.int32).max else np.int64)


def _empty(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def _edge_ids(eid: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Edge ids of events `start:stop`: given, or their row indices."""
    return np.arange(start, stop, dtype=np.int64) if eid is None else np.asarray(eid[start:stop])


def in_time_order(t: np.ndarray, eid: np.ndarray | None = None, chunk: int = INDEX_CHUNK) -> bool:
    """Whether events are sorted by (time, edge id) (edge ids default to row indices), chunk by chunk."""
    for start in range(0, len(t), chunk):
        stop = min(start + chunk + 1, len(t))
        ts, ids = np.asarray(t[start:stop]), _edge_ids(eid, start, stop)
        later, same = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
        if not np.all(later | (same & (ids[1:] >= ids[:-1]))):
            return False
    return True


def build_index(src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int, eid: np.ndarray | None = None,
                add_reverse: bool = True, allocate: Allocator = _empty, chunk: int = INDEX_CHUNK,
                progress: Callable[[int], None] | None = None) -> IndexArrays:
    """Index events `src -> dst` at `t` (edge ids `eid`, default the row index) from a stream in (time, edge
    id) order; with `add_reverse` each event is also an edge of `dst` towards `src`.

    Linear in the events (a counting sort by owner), reading the columns chunk by chunk, so they may be
    memory-mapped. `progress(events)` is called after each chunk of the second pass.
    """
    num_events = len(src)
    if not in_time_order(t, eid, chunk):
        raise ValueError("build_index needs events in (time, edge id) order")
    per_event = 2 if add_reverse else 1
    degree = np.zeros(num_nodes, dtype=np.int64)
    for start in range(0, num_events, chunk):
        degree += np.bincount(np.asarray(src[start:start + chunk]), minlength=num_nodes)
        if add_reverse:
            degree += np.bincount(np.asarray(dst[start:start + chunk]), minlength=num_nodes)
    indptr = allocate("indptr", (num_nodes + 1,), np.dtype(np.int64))
    indptr[0] = 0
    np.cumsum(degree, out=indptr[1:])
    entries = per_event * num_events
    arrays = IndexArrays(
        indptr=indptr,
        nbr=allocate("nbr", (entries,), compact_id_dtype(num_nodes)),
        ts=allocate("ts", (entries,), np.dtype(np.float64)),
        eid=allocate("eid", (entries,), compact_id_dtype(num_events if eid is None else int(np.max(eid, initial=0)) + 1)),
    )
    cursor = np.array(indptr[:-1])  # next free position of each node's segment
    for start in range(0, num_events, chunk):
        stop = min(start + chunk, num_events)
        _place_chunk(arrays, cursor, np.asarray(src[start:stop]), np.asarray(dst[start:stop]), np.asarray(t[start:stop]),
                     _edge_ids(eid, start, stop), add_reverse=add_reverse)
        if progress is not None:
            progress(min(chunk, num_events - start))
    return arrays


def _place_chunk(arrays: IndexArrays, cursor: np.ndarray, src: np.ndarray, dst: np.ndarray, t: np.ndarray,
                 eid: np.ndarray, add_reverse: bool) -> None:
    """Write one chunk's entries after what earlier chunks wrote to each owner's segment (stable by owner)."""
    if add_reverse:
        owner, nbr = np.stack([src, dst], axis=1).ravel(), np.stack([dst, src], axis=1).ravel()
        t, eid = np.repeat(t, 2), np.repeat(eid, 2)
    else:
        owner, nbr = src, dst
    order = np.argsort(owner, kind="stable")
    owner = owner[order]
    group_start = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
    group_size = np.diff(np.append(group_start, len(owner)))
    rank = np.arange(len(owner)) - np.repeat(group_start, group_size)
    position = cursor[owner] + rank
    arrays.nbr[position] = nbr[order]
    arrays.ts[position] = t[order]
    arrays.eid[position] = eid[order]
    cursor[owner[group_start]] += group_size
