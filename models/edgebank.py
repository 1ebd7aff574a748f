"""EdgeBank (Poursafaei et al., NeurIPS 2022): a memorisation baseline that needs no training. It scores a
pair `(src, dst)` 1 if its memory holds that directed pair, else 0. The memory is rebuilt from the history
an evaluation batch may see, in one of the ways the paper and DyGLib define (`EDGEBANK_MEMORIES`):

- `unlimited`: every pair of the history;
- `window`: the pairs seen within a fixed time span before the latest history event (TGB's window);
- `proportion`: the pairs seen at or after the history's `1 - proportion` time quantile (DyGLib's time
  window by `fixed_proportion`);
- `repeat_interval`: the pairs seen within the mean repeat interval before the latest history event, the
  mean over pairs of each pair's mean gap between repeats, a pair seen once counting 0 (DyGLib's time
  window by `repeat_interval`);
- `repeat_threshold`: the pairs seen at least as often as the mean pair of the history.

It tells how far a dataset can be solved by remembering which pairs recur.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import DataError

EDGEBANK_MEMORIES = ("unlimited", "window", "proportion", "repeat_interval", "repeat_threshold")
INT64_LIMIT = 2**63


def pair_keys(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """One int64 key per directed pair."""
    if num_nodes ** 2 >= INT64_LIMIT:
        raise DataError(f"EdgeBank: {num_nodes} nodes are too many to key their pairs in int64")
    return src.astype(np.int64) * num_nodes + dst


@dataclass(frozen=True)
class EdgeBank:
    """One of `EDGEBANK_MEMORIES`; `window` is the span `window` keeps (time units), `proportion` the share
    of the history's time quantiles that `proportion` keeps."""

    memory: str = "unlimited"
    window: float = 0.0
    proportion: float = 0.15

    def remembered(self, src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int) -> np.ndarray:
        """The sorted distinct pair keys the memory holds after a time-sorted history of events."""
        keys = pair_keys(src, dst, num_nodes)
        if len(keys) == 0 or self.memory == "unlimited":
            return np.unique(keys)
        if self.memory == "window":
            return np.unique(keys[t >= t[-1] - self.window])
        if self.memory == "proportion":
            return np.unique(keys[t >= np.quantile(t, 1 - self.proportion)])
        pairs, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if self.memory == "repeat_interval":
            first = np.full(len(pairs), np.inf)
            last = np.full(len(pairs), -np.inf)
            np.minimum.at(first, inverse, t)
            np.maximum.at(last, inverse, t)
            repeated = counts > 1
            mean_gap = (last[repeated] - first[repeated]) / (counts[repeated] - 1)
            return np.unique(keys[t >= t.max() - mean_gap.sum() / len(pairs)])
        if self.memory == "repeat_threshold":
            return pairs[counts >= counts.mean()]
        raise ValueError(f"unknown EdgeBank memory {self.memory!r}: expected one of {', '.join(EDGEBANK_MEMORIES)}")


def scores(remembered: np.ndarray, src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """1.0 where the pair `(src[i], dst[i])` (any shape) is among the `remembered` keys, else 0.0."""
    return np.isin(pair_keys(src, dst, num_nodes), remembered).astype(np.float64)
