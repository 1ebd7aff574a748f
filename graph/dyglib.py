"""DyGLib's evaluation protocol (Yu et al., NeurIPS 2023), reproduced draw for draw: the nodes it holds out
for the inductive setting, and the negative edges of each evaluation split.

DyGLib draws both with the random generators of Python and numpy over the data file's own node ids, in the
iteration order of Python sets. The functions here make the same calls on the same values in the same
order, so a stream loaded from DyGLib's processed CSV gets DyGLib's held-out nodes and negatives exactly;
ids are mapped back to this project's contiguous ids on the way out.
"""
from __future__ import annotations

import random

import numpy as np

from graph.events import EventStream
from graph.split import Split

HELD_OUT_SEED = 2020  # `random.seed(2020)` in DyGLib's get_link_prediction_data
SPLIT_SEEDS = {"val": 0, "test": 2}  # the seeds of DyGLib's validation and test negative samplers


def held_out_nodes(events: EventStream, after_train: np.ndarray, ratio: float) -> np.ndarray:
    """DyGLib's new test nodes: `int(ratio * nodes)` of the nodes with an event after the train period,
    drawn by `random.sample` (seed 2020) from the set DyGLib builds of their file ids; this project's ids,
    sorted."""
    ids = events.node_ids
    all_nodes = set(ids[events.src].tolist()) | set(ids[events.dst].tolist())
    test_nodes = set(ids[events.src[after_train]].tolist()).union(set(ids[events.dst[after_train]].tolist()))
    picked = random.Random(HELD_OUT_SEED).sample(tuple(test_nodes), int(ratio * len(all_nodes)))
    return np.sort(_project_ids(events, np.asarray(picked, dtype=np.int64)))


def _project_ids(events: EventStream, file_ids: np.ndarray) -> np.ndarray:
    """This project's node ids of the given file ids."""
    order = np.argsort(events.node_ids, kind="stable")
    return order[np.searchsorted(events.node_ids, file_ids, sorter=order)].astype(np.int64)


class NegativeEdgeSampler:
    """DyGLib's `NegativeEdgeSampler` built on the whole stream for one evaluation split (`seed`: 0 for
    validation, 2 for test), one call of `sample` per evaluation batch in order.

    `random` replaces the destination by one drawn uniformly from the stream's destinations (DyGLib draws
    a source too and discards it: so does this). `historical` draws, without replacement, among the pairs
    seen at or before the batch's first time and not within the batch's time span; `inductive` also leaves
    out the pairs seen up to `last_observed_time`. Both replace source and destination; when there are too
    few such pairs, random pairs that are not one of the batch's events come first, then all of them.
    """

    def __init__(self, events: EventStream, strategy: str, last_observed_time: float, seed: int) -> None:
        self.events = events
        self.strategy = strategy
        self.last_observed_time = last_observed_time
        self.file_src = events.node_ids[events.src]
        self.file_dst = events.node_ids[events.dst]
        self.unique_src = np.unique(self.file_src)
        self.unique_dst = np.unique(self.file_dst)
        self.random_state = np.random.RandomState(seed)
        self._history: set = set()
        self._history_end = 0
        self._possible_edges: set | None = None
        self._observed = self._pairs(events.t <= last_observed_time) if strategy == "inductive" else set()

    def sample(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Negative (source, destination) of each event of `batch` (ascending stream indices), this
        project's ids."""
        size = len(batch)
        if self.strategy == "random":
            self.random_state.randint(0, len(self.unique_src), size)
            dst = self.unique_dst[self.random_state.randint(0, len(self.unique_dst), size)]
            return self.events.src[batch], _project_ids(self.events, dst)
        src, dst = self._edge_negatives(batch)
        return _project_ids(self.events, src), _project_ids(self.events, dst)

    def _pairs(self, mask: np.ndarray) -> set:
        """The set DyGLib builds of the (source, destination) file ids of the masked events, in stream order."""
        return set(zip(self.file_src[mask].tolist(), self.file_dst[mask].tolist()))

    def _edge_negatives(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.events.t
        start, end = t[batch[0]], t[batch[-1]]
        history_end = int(np.searchsorted(t, start, side="right"))
        for s, d in zip(self.file_src[self._history_end:history_end].tolist(),
                        self.file_dst[self._history_end:history_end].tolist()):
            self._history.add((s, d))  # the same insertions, in the same order, as DyGLib's set(...) of them
        self._history_end = history_end
        in_span = self._pairs((t >= start) & (t <= end))
        if self.strategy == "historical":
            candidates = self._history - in_span
        else:
            candidates = self._history - self._observed - in_span
        cand_src = np.array([edge[0] for edge in candidates])
        cand_dst = np.array([edge[1] for edge in candidates])
        size = len(batch)
        if size > len(candidates):
            fill_src, fill_dst = self._random_pairs(size - len(candidates), batch)
            return (np.concatenate([fill_src, cand_src]).astype(np.int64),
                    np.concatenate([fill_dst, cand_dst]).astype(np.int64))
        picked = self.random_state.choice(len(candidates), size=size, replace=False)
        return cand_src[picked].astype(np.int64), cand_dst[picked].astype(np.int64)

    def _random_pairs(self, size: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DyGLib's collision-checked random fill: pairs of (any source, any destination) that are not one
        of the batch's events."""
        if self._possible_edges is None:
            self._possible_edges = set((s, d) for s in self.unique_src.tolist() for d in self.unique_dst.tolist())
        batch_edges = set(zip(self.file_src[batch].tolist(), self.file_dst[batch].tolist()))
        possible = list(self._possible_edges - batch_edges)
        picked = self.random_state.choice(len(possible), size=size, replace=len(possible) < size)
        return np.array([possible[i][0] for i in picked]), np.array([possible[i][1] for i in picked])


def observed_until(events: EventStream, split: Split, split_name: str) -> float:
    """The last time whose pairs DyGLib's inductive negatives of a split leave out: the last training
    event's for validation, the last validation event's for test (its evaluate_link_prediction.py)."""
    return float(events.t[split.val[-1] if split_name == "test" else split.train[-1]])


def split_negatives(events: EventStream, split: Split, strategy: str, batches: list[np.ndarray],
                    split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """DyGLib's negatives (source, destination) for every event of a split's evaluation `batches`."""
    last_observed_time = observed_until(events, split, split_name)
    sampler = NegativeEdgeSampler(events, strategy, last_observed_time, SPLIT_SEEDS[split_name])
    drawn = [sampler.sample(batch) for batch in batches]
    if not drawn:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([src for src, _ in drawn]), np.concatenate([dst for _, dst in drawn])
