"""Schedulers of the training pipeline: what distinguishes one mode from another (docs/method.md §7).

The runner (`pipeline.engine.runner`) enforces the rules every mode shares: each stage serves one batch at a
time in batch order, a batch's stages run in order, feature fetch and memory fetch never overlap, and at
most `max_in_flight` batches are between sampling and memory update. A scheduler only decides

- how many leading batches run strictly one after another (`sequential_batches`),
- the staleness bound `k` of each batch: its memory fetch waits for the update of batch `i - k`
  (`staleness_bound`, k = 1 is no staleness),
- how far sampling may run ahead (`max_in_flight`),
- when a memory fetch whose bound is met actually starts (`memory_fetch_start`).

Modes:
- `Sequential`: all five stages of a batch in order in the calling thread, no overlap (TGL).
- `Presample`: sampling and feature fetch run up to `depth` batches ahead; memory fetch, training and
  update stay serial, k = 1 (TGL with pre-sampling).
- `FixedK(k)`: the full pipeline with a user-given bound; `FixedK(1)` computes exactly what
  `Sequential` computes.
- `MSPipe`: warm-up batches run sequentially to measure stage times, then every batch gets the minimal
  bound computed online (`pipeline.engine.profiler.minimal_staleness`), and the memory fetch is delayed to the
  latest start that still has it ready when training is due, so it sees every update finished by then.
- `Auto`: tries the candidate modes on the running job, a few batches each, keeps the fastest and tries
  again now and then (the runner runs each of its segments under the mode it names).

`SCHEDULERS` holds a factory per mode, called with the config's `pipeline` section; `pipeline.mode`
selects one by name, and a new scheduler is a `Scheduler` subclass plus a registered factory.

"""
from __future__ import annotations

import logging
from collections.abc import Callable

from common.registry import Registry
from pipeline.engine.config import AutoConfig, PipelineConfig
from pipeline.engine.profiler import StageProfiler

logger = logging.getLogger(__name__)


def delayed_fetch_start(now: float, prev_train_start: float | None, prev_train_end: float | None,
                        tau_train: float, tau_fetch_memory: float) -> float:
    """The latest start of batch i's memory fetch that still has it ready when training i is due.

    Training i is due when training i-1 ends: its end if known, else its start plus `tau_train`, else
    (not started yet) no earlier than `now + tau_train`. The last case is a lower bound that grows with
    `now`, so a caller that re-evaluates it keeps waiting until training i-1 starts.
    """
    if prev_train_end is not None:
        due = prev_train_end
    elif prev_train_start is not None:
        due = prev_train_start + tau_train
    else:
        due = now + tau_train
    return due - tau_fetch_memory


class Scheduler:
    """Base scheduler: the full pipeline with k = 1, memory fetched as soon as allowed."""

    def sequential_batches(self, num_batches: int, profiler: StageProfiler) -> int:
        """How many leading batches run strictly one after another before the pipeline starts."""
        return 0

    def staleness_bound(self, batch: int, profiler: StageProfiler) -> int:
        """The bound k of `batch`: its memory fetch waits until the update of batch `batch - k` ends."""
        return 1

    @property
    def max_in_flight(self) -> int:
        """How many batches may be sampled but not yet written back; sampling blocks beyond that."""
        return 3

    def memory_fetch_start(self, now: float, prev_train_start: float | None, prev_train_end: float | None,
                           profiler: StageProfiler) -> float:
        """When a memory fetch whose bound is met starts (seconds on the run's clock); default: now."""
        return now

    def segment(self, start: int, num_batches: int) -> tuple[Scheduler, int]:
        """The scheduler that runs batches `start` up to the returned end; default: itself, all the rest."""
        return self, num_batches

    def segment_done(self, scheduler: Scheduler, batches: range, seconds_per_batch: float | None) -> None:
        """What a segment measured: its steady time per batch (None: too few batches to tell)."""


class Sequential(Scheduler):
    """All stages of batch i, in order, before any stage of batch i+1 (no overlap, k = 1)."""

    def sequential_batches(self, num_batches: int, profiler: StageProfiler) -> int:
        return num_batches

    @property
    def max_in_flight(self) -> int:
        return 1


class Presample(Scheduler):
    """Sampling and feature fetch of up to `depth` later batches overlap the serial rest (k = 1)."""

    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"presample depth must be >= 1, got {depth}")
        self.depth = depth

    @property
    def max_in_flight(self) -> int:
        return self.depth + 1


class FixedK(Scheduler):
    """The full pipeline with a user-given staleness bound `k`."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"staleness bound k must be >= 1, got {k}")
        self.k = k

    def staleness_bound(self, batch: int, profiler: StageProfiler) -> int:
        return self.k

    @property
    def max_in_flight(self) -> int:
        # k batches between memory fetch and update, one in feature fetch, one in sampling.
        return self.k + 2


class MSPipe(Scheduler):
    """MSPipe: minimal bound from measured stage times, recomputed every batch, with delayed memory fetch.

    Warm-up runs until the profiler has measured every stage `warmup_batches` times, so a profiler
    reused from an earlier epoch skips it. `delayed_fetch=False` fetches as soon as the bound allows
    (for the ablation).
    """

    def __init__(self, k_max: int = PipelineConfig.k_max, warmup_batches: int = PipelineConfig.warmup_batches,
                 delayed_fetch: bool = PipelineConfig.delayed_fetch) -> None:
        if k_max < 1 or warmup_batches < 0:
            raise ValueError(f"need k_max >= 1 and warmup_batches >= 0, got {k_max}, {warmup_batches}")
        self.k_max = k_max
        self.warmup_batches = warmup_batches
        self.delayed_fetch = delayed_fetch
        self._last_k: int | None = None

    def sequential_batches(self, num_batches: int, profiler: StageProfiler) -> int:
        return min(num_batches, max(0, self.warmup_batches - profiler.observations()))

    def staleness_bound(self, batch: int, profiler: StageProfiler) -> int:
        k = profiler.k_min(self.k_max)
        logger.debug("mspipe: batch %d staleness bound k=%d", batch, k)
        if k != self._last_k:
            taus = ", ".join(f"{stage} {1000 * tau:.1f}" for stage, tau in profiler.means().items())
            logger.info("mspipe: staleness bound k=%d from batch %d (stage ms: %s)", k, batch, taus)
            self._last_k = k
        return k

    @property
    def max_in_flight(self) -> int:
        return self.k_max + 2

    def memory_fetch_start(self, now: float, prev_train_start: float | None, prev_train_end: float | None,
                           profiler: StageProfiler) -> float:
        if not self.delayed_fetch:
            return now
        return delayed_fetch_start(now, prev_train_start, prev_train_end,
                                   profiler.tau("train"), profiler.tau("fetch_memory"))


class Auto(Scheduler):
    """Picks the fastest mode on the running job: each candidate trains `trial_batches` batches, `rounds`
    times in turn, and the one with the shortest mean time per batch runs until `recheck_every` batches
    later, when the trials run again. After each round, a candidate slower than the fastest by more
    than `drop` (a fraction) runs no more trials. The first candidate is kept unless another is faster
    by at least `margin` (a fraction of the first's time). Candidates keep their own state (a reused `MSPipe` keeps its bound
    and warm-up), so each trial segment is that mode exactly, and a trial cut short by the end of an
    epoch carries on in the next. `decisions` keeps every choice with the times it was based on.
    """

    def __init__(self, candidates: dict[str, Scheduler], trial_batches: int = AutoConfig.trial_batches,
                 rounds: int = AutoConfig.rounds, recheck_every: int = AutoConfig.recheck_every,
                 margin: float = AutoConfig.margin, drop: float = AutoConfig.drop) -> None:
        if (not candidates or trial_batches < 2 or rounds < 1 or recheck_every < 1 or not 0 <= margin < 1
                or drop < 0):
            raise ValueError("auto needs candidates, trial_batches >= 2, rounds >= 1, recheck_every >= 1, "
                             f"0 <= margin < 1 and drop >= 0, got {list(candidates)}, {trial_batches}, {rounds}, "
                             f"{recheck_every}, {margin}, {drop}")
        self.candidates = candidates
        self.trial_batches = trial_batches
        self.rounds = rounds
        self.recheck_every = recheck_every
        self.margin = margin
        self.drop = drop
        self.chosen: str | None = None
        self.decisions: list[dict] = []
        self._batches_seen = 0
        self._since_choice = 0
        self._trials: list[str] = []
        self._measured: dict[str, list[float]] = {}

    def segment(self, start: int, num_batches: int) -> tuple[Scheduler, int]:
        if not self._trials and (self.chosen is None or self._since_choice >= self.recheck_every):
            self._trials = list(self.candidates) * self.rounds
            self._measured = {name: [] for name in self.candidates}
        if self._trials:
            return self.candidates[self._trials[0]], min(num_batches, start + self.trial_batches)
        return self.candidates[self.chosen], min(num_batches, start + self.recheck_every - self._since_choice)

    def segment_done(self, scheduler: Scheduler, batches: range, seconds_per_batch: float | None) -> None:
        self._batches_seen += len(batches)
        if not self._trials:
            self._since_choice += len(batches)
            return
        if seconds_per_batch is not None:
            self._measured[self._trials[0]].append(seconds_per_batch)
        if len(batches) == self.trial_batches or seconds_per_batch is not None:
            self._trials.pop(0)
            self._drop_clear_losers()
        if not self._trials:
            self._choose()

    def _drop_clear_losers(self) -> None:
        """Once every candidate has a trial, one slower than the fastest by more than `drop` runs no more
        trials: further rounds are for close calls, and each trial of a clear loser costs time."""
        means = {name: sum(times) / len(times) for name, times in self._measured.items() if times}
        if len(means) < len(self.candidates):
            return
        limit = (1 + self.drop) * min(means.values())
        self._trials = [name for name in self._trials if means[name] <= limit]

    def _choose(self) -> None:
        """Keep the candidate with the shortest mean time per batch over its trials, unless the first
        candidate is within `margin` of it."""
        means = {name: sum(times) / len(times) for name, times in self._measured.items() if times}
        first = next(iter(self.candidates))
        fastest = min(means, key=means.get) if means else first
        beats_first = first not in means or means[fastest] < (1 - self.margin) * means[first]
        self.chosen = fastest if beats_first else first
        self._since_choice = 0
        decision = {"batch": self._batches_seen, "mode": self.chosen,
                    "ms_per_batch": {name: 1000 * value for name, value in means.items()}}
        self.decisions.append(decision)
        times = ", ".join(f"{name} {ms:.1f}" for name, ms in decision["ms_per_batch"].items())
        logger.debug("auto: %s, the fastest of the measured ms per batch (%s)", self.chosen, times)


SCHEDULERS: Registry[Callable[[PipelineConfig], Scheduler]] = Registry("pipeline scheduler", "pipeline.mode")


@SCHEDULERS.register("sequential")
def sequential_scheduler(cfg: PipelineConfig) -> Scheduler:
    """TGL's loop: no overlap."""
    return Sequential()


@SCHEDULERS.register("presample")
def presample_scheduler(cfg: PipelineConfig) -> Scheduler:
    """TGL with pre-sampling."""
    return Presample()


@SCHEDULERS.register("fixed-k")
def fixed_k_scheduler(cfg: PipelineConfig) -> Scheduler:
    """The full pipeline with the bound `pipeline.k`."""
    return FixedK(cfg.k)


@SCHEDULERS.register("mspipe")
def mspipe_scheduler(cfg: PipelineConfig) -> Scheduler:
    """MSPipe with `pipeline.k_max`, `pipeline.warmup_batches` and `pipeline.delayed_fetch`."""
    return MSPipe(cfg.k_max, cfg.warmup_batches, cfg.delayed_fetch)


@SCHEDULERS.register("auto")
def auto_scheduler(cfg: PipelineConfig) -> Scheduler:
    """The fastest of `pipeline.auto.candidates` on the running job, re-checked now and then."""
    auto = cfg.auto
    return Auto({name: make_scheduler(name, cfg) for name in auto.candidates}, auto.trial_batches, auto.rounds,
                auto.recheck_every, auto.margin, auto.drop)


def make_scheduler(mode: str, cfg: PipelineConfig = PipelineConfig()) -> Scheduler:
    """The scheduler registered as `mode` (`pipeline.mode`), configured from the validated `pipeline` section."""
    return SCHEDULERS.get(mode)(cfg)
