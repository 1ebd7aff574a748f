"""Online stage-time profiler and the minimal staleness bound it feeds (docs/method.md §4).

`StageProfiler` keeps an exponential moving average `tau_j` of each stage's duration, updated from every
stage event the runner records, so the bound follows the run as it speeds up or slows down.
`minimal_staleness` is the one place where `k_min` is computed from those times:

    P     = max(tau_sample, tau_fetch_features + tau_fetch_memory, tau_train, tau_update_memory)
    k_min = clamp(ceil((tau_fetch_memory + tau_train + tau_update_memory) / P), 1, k_max)

`P` is the busiest resource's time per batch; feature fetch and memory fetch count as one resource
because they share the host-to-device path. `pipelined_time_bound` turns the same times, with the CPU
time each stage used, into the shortest time per batch any pipelined mode could reach on the cores there
are; `pipeline.mode: auto` skips the modes that cannot beat what it has measured.
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

STAGES = ("sample", "fetch_features", "fetch_memory", "train", "update_memory")

# A ratio this close above an integer is float noise (0.01 + 0.02 + 0.01 != 0.04), not a need for one
# more batch of staleness.
_RATIO_SLACK = 1e-9


def busiest_stage_time(taus: dict[str, float]) -> float:
    """`P`: the time per batch of the busiest resource when every stage runs beside the others."""
    return max(taus["sample"], taus["fetch_features"] + taus["fetch_memory"], taus["train"], taus["update_memory"])


def minimal_staleness(taus: dict[str, float], k_max: int) -> int:
    """The smallest staleness bound that lets training run without stalls, given stage times `taus`.

    The memory fetch of batch i may start only after the update of batch i-k ends and must end before
    training i starts, so `tau_fetch_memory + tau_train + tau_update_memory <= k * P`. Unmeasured
    (all-zero) times give 1: there is nothing to hide yet.
    """
    period = busiest_stage_time(taus)
    if period <= 0:
        return 1
    ratio = (taus["fetch_memory"] + taus["train"] + taus["update_memory"]) / period
    return min(max(math.ceil(ratio - _RATIO_SLACK), 1), k_max)


def pipelined_time_bound(wall_s: dict[str, float], cpu_s: dict[str, float], cores: int) -> float:
    """The shortest time per batch a pipelined mode could reach, from one sequential batch's stage times.

    `wall_s` and `cpu_s` are each stage's elapsed time and the process CPU time it used (all threads).
    Overlap hides a host stage's waiting (disk, device) but its CPU work needs a core: only the core
    time the train stage leaves idle (`cores * wall - cpu`; OpenMP threads spinning between regions count
    as busy) can absorb it, and the rest lengthens every batch. So the bound is the busiest stage's time or
    the train stage plus the host CPU work that finds no idle core, whichever is longer.
    """
    host_cpu = sum(seconds for stage, seconds in cpu_s.items() if stage != "train")
    idle = max(0.0, cores * wall_s["train"] - cpu_s["train"])
    return max(busiest_stage_time(wall_s), wall_s["train"] + max(0.0, host_cpu - idle))


@dataclass(frozen=True)
class SegmentTiming:
    """What a run of consecutive batches measured.

    `batch_s`: the time between consecutive train ends, one per batch after the first: each batch's steady
    time, since a pipeline's fill and drain fall outside it. `stage_wall_s` and `stage_cpu_s`: the median
    elapsed and process CPU seconds of each stage over the segment's sequential batches (empty if none).
    `other_cores`: how many cores other processes kept busy meanwhile (`CpuClock`; None where unknown).
    """

    batch_s: tuple[float, ...]
    stage_wall_s: dict[str, float] = field(default_factory=dict)
    stage_cpu_s: dict[str, float] = field(default_factory=dict)
    other_cores: float | None = None

    @property
    def seconds_per_batch(self) -> float | None:
        """The median of `batch_s`, so that a stall of a few batches does not decide; None without any."""
        return statistics.median(self.batch_s) if self.batch_s else None


@dataclass(frozen=True)
class CpuClock:
    """A reading of the wall clock, this process's CPU time and, where the system reports it (Linux), the CPU
    time every process on the machine has spent busy; two readings tell how many cores other processes kept
    busy in between (`other_cores`), the evidence that a run shares its machine."""

    wall_s: float
    process_s: float
    machine_s: float | None

    @classmethod
    def now(cls) -> CpuClock:
        return cls(time.perf_counter(), time.process_time(), machine_busy_seconds())

    def other_cores(self, later: CpuClock) -> float | None:
        """Cores other processes kept busy from this reading to `later` (None where unknown)."""
        wall = later.wall_s - self.wall_s
        if self.machine_s is None or later.machine_s is None or wall <= 0:
            return None
        others = (later.machine_s - self.machine_s) - (later.process_s - self.process_s)
        return max(0.0, others / wall)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux `/proc/stat`; steal time counts as busy,
    as a hypervisor's other guests took it); None where the system does not report it."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 5:
        return None
    idle = ticks[3] + ticks[4]  # idle and waiting for I/O
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


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
