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
- `Auto`: tries the candidate modes at a few train-stage thread counts on the running job, a few batches
  each, keeps the fastest and tries again now and then or when it slows down (the runner runs each of
  its segments under the mode and thread count it names).

`SCHEDULERS` holds a factory per mode, called with the config's `pipeline` section; `pipeline.mode`
selects one by name, and a new scheduler is a `Scheduler` subclass plus a registered factory.

"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from common.registry import Registry
from pipeline.engine.config import AutoConfig, PipelineConfig
from pipeline.engine.host_threads import available_cores, thread_options
from pipeline.engine.profiler import SegmentTiming, StageProfiler, pipelined_time_bound

logger = logging.getLogger(__name__)

# Cores other processes may keep busy, beyond those the most train threads leave free, before `Auto` counts
# the machine as shared: then it tries fewer threads and not the most, else the most and not fewer.
SHARED_CORES = 0.5


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

    def segment_threads(self) -> int | None:
        """The train stage's thread count for the segment `segment` just named (None: leave it as it is)."""
        return None

    def segment_done(self, scheduler: Scheduler, batches: range, timing: SegmentTiming) -> None:
        """What a segment measured: the time per batch and, for its sequential batches, per stage."""


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


@dataclass(frozen=True)
class Setting:
    """What `Auto` tries and keeps: a mode and the train stage's thread count (None: as the run started)."""

    mode: str
    threads: int | None = None

    def __str__(self) -> str:
        return self.mode if self.threads is None else f"{self.mode}@{self.threads}"


class Auto(Scheduler):
    """Picks the fastest setting (mode and thread count) on the running job.

    Trials: first each setting (sequential ones first, and at each mode the fewest threads first) trains
    `probe_batches` batches, and those within `drop` of the fastest go on (a setting
    several times slower, two threads on a shared machine, costs no more than its probe); then each of
    them trains `trial_batches` batches, `rounds` times in turn, and the one with the
    shortest median time per batch over its trials runs from then on (a median, so a trial that lands in
    a stall of a shared machine does not decide). The first setting (the first candidate mode at the first
    thread count) is kept unless another is faster by at least `margin` (a fraction of the first's time).
    After each round, a setting slower than the fastest by more than `drop` runs no more trials. A
    pipelined setting whose best possible time (`pipelined_time_bound`, from the sequential trial at its
    thread count) cannot beat the fastest measured by `margin` is not tried at all, nor are fewer threads
    while the trials see no other process keep the cores busy, nor the most threads while they do.

    Watch: the kept setting runs in segments of `watch_batches`; one whose median time per batch is more
    than `slowdown` (a fraction) above or below what the trials measured starts the trials again (another
    job took the cores, or gave them back), and so do `recheck_every` batches.
    Settings keep their own scheduler (a reused `MSPipe` keeps its bound and warm-up), so each trial segment
    is that mode exactly, and a trial cut short by the end of an epoch carries on in the next.
    `decisions` keeps every choice with the times it was based on.
    """

    def __init__(self, candidates: dict[str, Callable[[], Scheduler]], threads: tuple[int, ...] = (),
                 trial_batches: int = AutoConfig.trial_batches, rounds: int = AutoConfig.rounds,
                 recheck_every: int = AutoConfig.recheck_every, margin: float = AutoConfig.margin,
                 drop: float = AutoConfig.drop, watch_batches: int = AutoConfig.watch_batches,
                 slowdown: float = AutoConfig.slowdown, probe_batches: int = AutoConfig.probe_batches,
                 cores: int = 1) -> None:
        if (not candidates or trial_batches < 2 or rounds < 1 or recheck_every < 1 or not 0 <= margin < 1
                or drop < 0 or watch_batches < 2 or slowdown < 0 or probe_batches == 1 or probe_batches < 0
                or any(t < 1 for t in threads) or cores < 1):
            raise ValueError("auto needs candidates, threads >= 1, trial_batches >= 2, rounds >= 1, recheck_every >= 1, "
                             "0 <= margin < 1, drop >= 0, watch_batches >= 2, slowdown >= 0, probe_batches 0 or >= 2 "
                             f"and cores >= 1, got {list(candidates)}, {threads}, {trial_batches}, {rounds}, "
                             f"{recheck_every}, {margin}, {drop}, {watch_batches}, {slowdown}, {probe_batches}, {cores}")
        self.settings = {Setting(mode, count): make() for mode, make in candidates.items()
                         for count in (threads or (None,))}
        self.trial_batches = trial_batches
        self.rounds = rounds
        self.recheck_every = recheck_every
        self.margin = margin
        self.drop = drop
        self.watch_batches = watch_batches
        self.slowdown = slowdown
        self.probe_batches = probe_batches
        self.cores = cores
        self.chosen: Setting | None = None
        self.decisions: list[dict] = []
        self._batches_seen = 0
        self._since_choice = 0
        self._round = 0  # -1: the probes
        self._queue: list[Setting] = []  # settings still to try in this round
        self._batch_s: dict[Setting, list[float]] = {}
        self._alone: dict[int | None, SegmentTiming] = {}  # thread count -> a sequential trial's stage times
        self._not_tried: dict[Setting, str] = {}  # setting -> why it cannot win
        self._other_cores: float | None = None  # the most cores other processes kept busy in this trial phase
        self._last_other_cores: float | None = None  # ... in the last segment
        self._current: Setting | None = None
        self._recheck = True

    @property
    def first(self) -> Setting:
        """The setting kept unless another beats it by `margin`."""
        return next(iter(self.settings))

    def segment(self, start: int, num_batches: int) -> tuple[Scheduler, int]:
        if self._recheck and not self._queue:
            self._start_trials()
        if self._queue:
            self._current = self._queue[0]
            length = self.probe_batches if self._round < 0 else self.trial_batches
            return self.settings[self._current], min(num_batches, start + length)
        self._current = self.chosen
        left = self.recheck_every - self._since_choice
        return self.settings[self.chosen], min(num_batches, start + min(self.watch_batches, left))

    def segment_threads(self) -> int | None:
        return None if self._current is None else self._current.threads

    def segment_done(self, scheduler: Scheduler, batches: range, timing: SegmentTiming) -> None:
        self._batches_seen += len(batches)
        self._last_other_cores = timing.other_cores
        if not self._queue:
            self._watch(len(batches), timing)
            return
        setting = self._queue[0]
        if timing.seconds_per_batch is None:
            return  # cut short before it could be timed: the trial goes on in the next segment
        self._queue.pop(0)
        self._batch_s[setting].extend(timing.batch_s)
        if timing.other_cores is not None:
            self._other_cores = max(self._other_cores or 0.0, timing.other_cores)
        if timing.stage_wall_s and isinstance(scheduler, Sequential):
            self._alone[setting.threads] = timing
        self._next_trial()

    def _start_trials(self) -> None:
        self._recheck = False
        self._round = -1 if self.probe_batches else 0
        self._batch_s = {setting: [] for setting in self.settings}
        self._alone, self._not_tried, self._other_cores = {}, {}, self._last_other_cores
        self._queue = self._in_trial_order(self.settings)
        self._next_trial()

    def _next_trial(self) -> None:
        """Skip the queued settings that cannot pay; start the next round or choose once a round is done."""
        while True:
            self._queue = [setting for setting in self._queue if not self._cannot_win(setting)]
            if self._queue:
                return
            self._round += 1
            contenders = self._contenders()
            if self._round >= self.rounds or len(contenders) < 2:
                self._choose()
                return
            self._queue = self._in_trial_order(contenders)

    @staticmethod
    def _in_trial_order(settings) -> list[Setting]:
        """Sequential settings first (their trials measure the stage times the pipelined ones are judged by),
        and at each mode the fewest threads first: on a shared machine the most threads can be many times
        slower, and the first trial's reading of the other processes' load decides whether they run at all."""
        modes = list(dict.fromkeys(setting.mode for setting in settings))
        return sorted(settings, key=lambda setting: (modes.index(setting.mode), setting.threads or 0))

    def _medians(self) -> dict[Setting, float]:
        return {setting: statistics.median(times) for setting, times in self._batch_s.items() if times}

    def _cannot_win(self, setting: Setting) -> bool:
        """Whether an unmeasured `setting` cannot beat what has been measured (then `_not_tried` says why);
        one with a measurement in this trial phase is judged by it, as `_contenders` does."""
        if self._batch_s.get(setting):
            return False
        reason = self._thread_count_cannot_win(setting) or self._pipeline_cannot_win(setting)
        if reason:
            self._not_tried[setting] = reason
        return reason is not None

    def _thread_count_cannot_win(self, setting: Setting) -> str | None:
        """The run's threads each get a core unless other processes keep busy more than `SHARED_CORES` beyond
        the cores the most threads leave free (as measured so far): fewer threads can win only where they do
        not, and the most threads only where they do (otherwise every OpenMP region waits for a thread the
        kernel has descheduled)."""
        counts = {s.threads for s in self.settings if s.threads is not None}
        if setting.threads is None or len(counts) < 2 or self._other_cores is None:
            return None
        most = max(counts)
        shared = self._other_cores > max(0, self.cores - most) + SHARED_CORES
        busy = f"other processes kept {self._other_cores:.2f} cores busy"
        if setting.threads < most and not shared:
            return f"{busy}: {most} threads each had a core"
        if setting.threads == most and shared:
            return f"{busy}: {most} threads would wait on each other"
        return None

    def _pipeline_cannot_win(self, setting: Setting) -> str | None:
        """A pipelined setting cannot win if its best possible time (`pipelined_time_bound`, from the
        sequential trial at its thread count) does not beat the fastest measured by `margin`."""
        alone = self._alone.get(setting.threads)
        measured = self._medians()
        if isinstance(self.settings[setting], Sequential) or alone is None or not measured:
            return None
        bound = pipelined_time_bound(alone.stage_wall_s, alone.stage_cpu_s, setting.threads or self.cores)
        if bound < (1 - self.margin) * min(measured.values()):
            return None
        return f"at best {1000 * bound:.1f} ms per batch"

    def _contenders(self) -> list[Setting]:
        """The settings that run the next round: measured, and within `drop` of the fastest."""
        medians = self._medians()
        limit = (1 + self.drop) * min(medians.values()) if medians else 0.0
        return [setting for setting in self.settings if setting in medians and medians[setting] <= limit]

    def _choose(self) -> None:
        """Keep the setting with the shortest median time per batch, unless the first is within `margin`."""
        medians = self._medians()
        first = self.first
        fastest = min(medians, key=medians.get) if medians else first
        beats_first = first not in medians or medians[fastest] < (1 - self.margin) * medians[first]
        self.chosen = fastest if beats_first else first
        self._since_choice = 0
        decision = {"batch": self._batches_seen, "setting": str(self.chosen), "mode": self.chosen.mode,
                    "threads": self.chosen.threads,
                    "ms_per_batch": {str(setting): 1000 * value for setting, value in medians.items()},
                    "not_tried": {str(setting): reason for setting, reason in self._not_tried.items()},
                    "other_cores": self._other_cores}
        self.decisions.append(decision)
        logger.debug("auto: %s, the fastest of the measured ms per batch (%s)", self.chosen, decision["ms_per_batch"])

    def _watch(self, batches: int, timing: SegmentTiming) -> None:
        """After a segment of the kept setting: trials again once `recheck_every` batches have run, or at
        once if the segment's time per batch is off what the trials measured by more than `slowdown`, either
        way: another job took cores (slower), or the one that had them ended (faster, and a setting chosen
        under contention may no longer be the best)."""
        self._since_choice += batches
        expected = self._medians().get(self.chosen)
        now = timing.seconds_per_batch
        changed = (expected is not None and now is not None
                   and not expected / (1 + self.slowdown) <= now <= (1 + self.slowdown) * expected)
        if changed:
            logger.info("auto: %s runs at %.1f ms per batch against %.1f in its trials; trying again",
                        self.chosen, 1000 * now, 1000 * expected)
        self._recheck = changed or self._since_choice >= self.recheck_every


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
    """The fastest of `pipeline.auto.candidates` at the thread counts `pipeline.auto.threads` (empty: the
    run's count and half of it) on the running job, re-checked now and then."""
    auto = cfg.auto
    threads = auto.threads or thread_options(torch.get_num_threads())
    return Auto({name: partial(make_scheduler, name, cfg) for name in auto.candidates}, threads,
                auto.trial_batches, auto.rounds, auto.recheck_every, auto.margin, auto.drop, auto.watch_batches,
                auto.slowdown, auto.probe_batches, available_cores())


def make_scheduler(mode: str, cfg: PipelineConfig = PipelineConfig()) -> Scheduler:
    """The scheduler registered as `mode` (`pipeline.mode`), configured from the validated `pipeline` section."""
    return SCHEDULERS.get(mode)(cfg)
