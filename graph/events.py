"""The in-memory event stream every other package consumes, and its construction from raw columns."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from graph.temporal_index import IndexArrays


@dataclass(frozen=True)
class EventStream:
    """A time-sorted stream of interactions with contiguous 0-based node ids.

    The edge id of an event is its row index; `node_ids[v]` is the id node `v` had in the source file.
    Columns may be memory-mapped files (a prepared stream, graph/prepared.py), which also brings the
    stream's whole T-CSR `index`; streams read into RAM have none.
    """

    name: str
    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    num_nodes: int
    node_ids: np.ndarray
    edge_feat: np.ndarray | None = None
    node_feat: np.ndarray | None = None
    ext_roll: np.ndarray | None = None
    index: IndexArrays | None = None
    source: str = ""  # the file (or prepared directory) the stream was read from; "" when built in memory

    @property
    def origin(self) -> str:
        """What an error message names for the stream: its file, or its name when it was built in memory."""
        return self.source or self.name

    @property
    def num_events(self) -> int:
        """Number of events (edges) in the stream."""
        return int(self.src.shape[0])

    @property
    def dim_edge_feat(self) -> int:
        """Width of the edge features, 0 when the stream has none."""
        return 0 if self.edge_feat is None else int(self.edge_feat.shape[1])

    @property
    def dim_node_feat(self) -> int:
        """Width of the node features, 0 when the stream has none."""
        return 0 if self.node_feat is None else int(self.node_feat.shape[1])


def repeated_pairs(events: EventStream) -> np.ndarray:
    """Mask of the events whose two endpoints already interacted earlier in the stream (either direction).

    A memory-based model has the pair's history in its memory for these; a split's share of them varies
    from stream to stream and split to split, and with it what a model's AP on the split measures.
    """
    low, high = np.minimum(events.src, events.dst), np.maximum(events.src, events.dst)
    _, first, inverse = np.unique(low.astype(np.int64) * events.num_nodes + high, return_index=True,
                                  return_inverse=True)
    return first[inverse] < np.arange(events.num_events)


def time_order(t: np.ndarray, source: str) -> np.ndarray:
    """Stable permutation that sorts events by time; warns (naming `source`) when the input was unsorted,
    because ties then keep their file order and the user should know the order was changed."""
    if np.all(t[1:] >= t[:-1]):
        return np.arange(t.shape[0])
    warnings.warn(f"{source}: events are not sorted by time; sorting them (stable, ties keep file order)",
                  stacklevel=2)
    return np.argsort(t, kind="stable")


def event_stream_from_raw(
    name: str,
    raw_src: np.ndarray,
    raw_dst: np.ndarray,
    t: np.ndarray,
    source: str,
    edge_feat: np.ndarray | None = None,
    raw_node_feat: np.ndarray | None = None,
    ext_roll: np.ndarray | None = None,
) -> EventStream:
    """Build an `EventStream` from file columns: sort by time and map the ids that occur to 0..N-1.

    `raw_node_feat` is indexed by the file's node ids; `edge_feat` and `ext_roll` are in file row order.
    """
    order = time_order(t, source)
    node_ids, contiguous = np.unique(np.concatenate([raw_src[order], raw_dst[order]]), return_inverse=True)
    num_events = order.shape[0]
    return EventStream(
        name=name,
        src=contiguous[:num_events].astype(np.int64),
        dst=contiguous[num_events:].astype(np.int64),
        t=np.ascontiguousarray(t[order], dtype=np.float64),
        num_nodes=int(node_ids.shape[0]),
        node_ids=node_ids.astype(np.int64),
        edge_feat=None if edge_feat is None else np.ascontiguousarray(edge_feat[order], dtype=np.float32),
        node_feat=None if raw_node_feat is None else np.ascontiguousarray(raw_node_feat[node_ids], dtype=np.float32),
        ext_roll=None if ext_roll is None else ext_roll[order].astype(np.int8),
        source=source,
    )
