"""Online stage-time profiler and the minimal staleness bound it feeds (docs/method.md §4).

`StageProfiler` keeps an exponential moving average `tau_j` of each stage's duration, updated from every
stage event the runner records, so the bound follows the run as it speeds up or slows down.
`minimal_staleness` is the one place where `k_min` is computed from those times:

    P     = max(tau_sample, tau_fetch_features + tau_fetch_memory, tau_train, tau_update_memory)
    k_min = clamp(ceil((tau_fetch_memory + tau_train + tau_update_memory) / P), 1, k_max)

`P` is the busiest resource's time per batch; feature fetch and memory fetch count as one resource
because they share the host-to-device path.
"""
from __future__ import annotations

import math
import threading

STAGES = ("sample", "fetch_features", "fetch_memory", "train", "update_memory")

# A ratio this close above an integer is float noise (0.01 + 0.02 + 0.01 != 0.04), not a need for one
# more batch of staleness.
_RATIO_SLACK = 1e-9


def minimal_staleness(taus: dict[str, float], k_max: int) -> int:
    """The smallest staleness bound that lets training run without stalls, given stage times `taus`.

    The memory fetch of batch i may start only after the update of batch i-k ends and must end before
    training i starts, so `tau_fetch_memory + tau_train + tau_update_memory <= k * P`. Unmeasured
    (all-zero) times give 1: there is nothing to hide yet.
    """
    period = max(
        taus["sample"],
        taus["fetch_features"] + taus["fetch_memory"],
        taus["train"],
        taus["update_memory"],
    )
    if period <= 0:
        return 1
    ratio = (taus["fetch_memory"] + taus["train"] + taus["update_memory"]) / period
    return min(max(math.ceil(ratio - _RATIO_SLACK), 1), k_max)


class StageProfiler:
    """Per-stage exponential moving average of durations in seconds; safe to update from any thread.

    The first observation of a stage sets its average; later ones move it by `alpha`. One profiler can
    be reused across epochs, so later epochs start from the times measured before.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._lock = threading.Lock()
        self._tau = dict.fromkeys(STAGES, 0.0)
        self._count = dict.fromkeys(STAGES, 0)

    def record(self, stage: str, seconds: float) -> None:
        """Fold one measured duration of `stage` into its average."""
        with self._lock:
            first = self._count[stage] == 0
            self._tau[stage] = seconds if first else (1 - self.alpha) * self._tau[stage] + self.alpha * seconds
            self._count[stage] += 1

    def tau(self, stage: str) -> float:
        """The current average duration of `stage` (0.0 before its first observation)."""
        with self._lock:
            return self._tau[stage]

    def means(self) -> dict[str, float]:
        """The current average duration of every stage, consistent with each other."""
        with self._lock:
            return dict(self._tau)

    def observations(self) -> int:
        """How many times the least-observed stage has been measured."""
        with self._lock:
            return min(self._count.values())

    def k_min(self, k_max: int) -> int:
        """The minimal staleness bound for the current stage times (see `minimal_staleness`)."""
        return minimal_staleness(self.means(), k_max)
