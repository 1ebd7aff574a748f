"""EdgeBank (Poursafaei et al., NeurIPS 2022; TGB's EdgeBankPredictor): a memorisation baseline that needs
no training. It scores a pair `(src, dst)` 1 if that directed pair occurred among the events it has seen,
else 0; the time-window variant only remembers pairs seen within a window ending at the latest event
seen. It tells how far a dataset can be solved by remembering which pairs recur."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import DataError

INT64_LIMIT = 2**63


@dataclass(frozen=True)
class EdgeBank:
    """The stream's events indexed by (pair, event index), for lookups of "seen before event `i`"."""

    keys: np.ndarray  # sorted pair * (num_events + 1) + event index
    t: np.ndarray
    num_nodes: int
    window: float | None  # seconds remembered before the latest seen event; None: unlimited

    @classmethod
    def from_stream(cls, src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int,
                    window: float | None = None) -> EdgeBank:
        """An EdgeBank over a time-sorted stream; `window` None remembers every pair (EdgeBank-inf)."""
        if num_nodes ** 2 * (len(t) + 1) >= INT64_LIMIT:
            raise DataError(f"EdgeBank: {num_nodes} nodes and {len(t)} events are too many to index in int64")
        pairs = src.astype(np.int64) * num_nodes + dst
        keys = np.sort(pairs * (len(t) + 1) + np.arange(len(t)))
        return cls(keys=keys, t=np.asarray(t, dtype=np.float64), num_nodes=num_nodes, window=window)

    def scores(self, src: np.ndarray, dst: np.ndarray, seen_events: np.ndarray) -> np.ndarray:
        """1.0 where pair `(src[i], dst[i])` occurred among the first `seen_events[i]` events of the stream
        (for the time-window variant: at most `window` before the last of them), else 0.0."""
        stride = len(self.t) + 1
        pairs = src.astype(np.int64) * self.num_nodes + dst
        before = np.searchsorted(self.keys, pairs * stride + seen_events, side="left") - 1
        found = self.keys[np.maximum(before, 0)]
        seen = (before >= 0) & (found // stride == pairs)
        if self.window is not None:
            latest = self.t[np.maximum(seen_events - 1, 0)]
            seen &= self.t[found % stride] >= latest - self.window
        return seen.astype(np.float64)
