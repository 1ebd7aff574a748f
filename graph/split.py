"""Chronological train/validation/test split with DyGLib's inductive node masking.

Periods: `t <= q(1 - val - test)` is train, `<= q(1 - test)` validation, the rest test (q = quantile of
the event times), or TGL's `ext_roll` 0/1/2. Inductive setting: a seeded random `inductive_ratio` share
of all nodes, drawn among the nodes active after the train period, is held out of training entirely.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.errors import DataError
from graph.events import EventStream

TRAIN, VAL, TEST = 0, 1, 2
HeldOutDraw = Callable[[EventStream, np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class Split:
    """Event indices (ascending, int64) of each part of a chronological split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_inductive: np.ndarray
    test_inductive: np.ndarray
    masked_nodes: np.ndarray


def split_periods(events: EventStream, val_ratio: float = 0.15, test_ratio: float = 0.15,
                  by_ext_roll: bool | None = None) -> np.ndarray:
    """The period of every event (int8: 0 train, 1 validation, 2 test), before any node masking.

    `by_ext_roll` None uses the stream's `ext_roll` when it has one, else the time quantiles.
    """
    if by_ext_roll is None:
        by_ext_roll = events.ext_roll is not None
    if by_ext_roll:
        if events.ext_roll is None:
            raise DataError(f"{events.name}: split by ext_roll requested, but the data has no ext_roll column")
        return events.ext_roll.astype(np.int8)
    if val_ratio < 0 or test_ratio < 0 or val_ratio + test_ratio >= 1:
        raise ValueError(f"val_ratio={val_ratio} and test_ratio={test_ratio} must be >= 0 and sum to < 1")
    val_cut, test_cut = np.quantile(events.t, [1 - val_ratio - test_ratio, 1 - test_ratio])
    return ((events.t > val_cut).astype(np.int8) + (events.t > test_cut)).astype(np.int8)


def chronological_split(events: EventStream, val_ratio: float = 0.15, test_ratio: float = 0.15,
                        inductive_ratio: float = 0.1, seed: int = 0, by_ext_roll: bool | None = None,
                        draw_held_out: HeldOutDraw | None = None) -> Split:
    """Split the stream by time and hold out nodes for inductive evaluation, as DyGLib does.

    The held-out nodes are `draw_held_out(events, after_train, inductive_ratio)` (DyGLib's own draw:
    graph/dyglib.py), by default a draw seeded by `seed` among the nodes active after the train period.
    """
    if not 0 <= inductive_ratio < 1:
        raise ValueError(f"inductive_ratio={inductive_ratio} must be in [0, 1)")
    period = split_periods(events, val_ratio, test_ratio, by_ext_roll)
    if draw_held_out is None:
        masked = _masked_nodes(events, period != TRAIN, int(inductive_ratio * events.num_nodes), seed)
    else:
        masked = draw_held_out(events, period != TRAIN, inductive_ratio)
    is_masked = _node_mask(masked, events.num_nodes)
    touches_masked = is_masked[events.src] | is_masked[events.dst]
    train = np.flatnonzero((period == TRAIN) & ~touches_masked)
    seen = _node_mask(np.concatenate([events.src[train], events.dst[train]]), events.num_nodes)
    unseen_endpoint = ~seen[events.src] | ~seen[events.dst]
    return Split(
        train=train,
        val=np.flatnonzero(period == VAL),
        test=np.flatnonzero(period == TEST),
        val_inductive=np.flatnonzero((period == VAL) & unseen_endpoint),
        test_inductive=np.flatnonzero((period == TEST) & unseen_endpoint),
        masked_nodes=masked,
    )


def _masked_nodes(events: EventStream, after_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded sample of `count` nodes (at most all) among those with an event after the train period."""
    candidates = np.unique(np.concatenate([events.src[after_train], events.dst[after_train]]))
    picked = np.random.default_rng(seed).choice(candidates, size=min(count, candidates.shape[0]), replace=False)
    return np.sort(picked).astype(np.int64)


def _node_mask(nodes: np.ndarray, num_nodes: int) -> np.ndarray:
    """Boolean indicator over all node ids of the given nodes."""
    mask = np.zeros(num_nodes, dtype=bool)
    mask[nodes] = True
    return mask


def chronological_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split time-ordered event indices into consecutive batches of `batch_size` (the last may be short): how
    every training, evaluation and benchmark loop cuts a split into batches."""
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
