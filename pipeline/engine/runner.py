"""The threaded pipeline runner: runs the five per-batch stages of every batch under a `Scheduler`.

```python
STAGES = ("sample", "fetch_features", "fetch_memory", "train", "update_memory")

class StageFunctions(Protocol):          # ctx: whatever sample(i) returns, passed along
    def sample(self, i) -> ctx
    def fetch_features(self, i, ctx) -> None
    def fetch_memory(self, i, ctx, staleness) -> int | None  # staleness = i-1-(last batch whose update
                                        # finished) at fetch start, 0 = fresh; returns the staleness the
                                        # read actually saw (None: the scheduled value stands)
    def train(self, i, ctx) -> None
    def update_memory(self, i, ctx) -> None

run_batches(num_batches, stages, scheduler, profiler=None, stop=None, on_batch_done=None,
            host_policy=HostThreadPolicy()) -> RunStats
```

Design: the scheduler may split the batches into segments with a scheduler each (`pipeline.mode:
auto` tries the modes that way); every segment runs as follows. The scheduler's leading sequential
batches (all of them for `Sequential`, the warm-up for `MSPipe`) run in the calling thread. The rest
run with one thread per stage: the train stage keeps the calling thread and every other stage gets a
worker thread that keeps out of its way (`pipeline.engine.host_threads`). Each stage walks the batches
in order, and all of them share one `Condition` over the pipeline state. A worker starts
stage j of batch i when (docs/method.md §4):

- stage j-1 of batch i has ended (sampling: fewer than `scheduler.max_in_flight` batches are between
  sampling and update, so at most that many contexts are alive);
- for feature and memory fetch, the host-to-device path is free: the two never overlap. A memory fetch
  that is waiting for its start time reserves the path, and a feature fetch only starts if it is
  expected to end before that time, so training is not stalled by a feature fetch of a later batch;
- for memory fetch, the update of batch `i - k` has ended (`k = scheduler.staleness_bound`) and the
  scheduler's start time has come (`scheduler.memory_fetch_start`: delayed fetch in `MSPipe`).

Every event feeds the profiler as it ends. `on_batch_done(i)` is called in the calling thread once
batch i's update has ended, in batch order.

Faults: the first exception raised by a stage stops every worker (a stage already running finishes
first) and `run_batches` re-raises that very exception object, with a note and the attributes
`pipeline_stage` and `pipeline_batch`. A set `stop` event stops the run the same way and raises
`KeyboardInterrupt`. Every wait has a timeout and re-checks for a stop or a failure; workers are
non-daemon threads and are always joined before `run_batches` returns or raises.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.engine.host_threads import HostThreadPolicy, keep_off_training, switch_interval, use_threads
from pipeline.engine.schedulers import Scheduler
from pipeline.engine.profiler import STAGES, CpuClock, SegmentTiming, StageProfiler

__all__ = ["STAGES", "StageFunctions", "StageEvent", "RunStats", "run_batches"]

HOST_TO_DEVICE = frozenset({"fetch_features", "fetch_memory"})

# Longest a waiting thread sleeps before it looks again for a stop request or a failure.
POLL_S = 0.05


class StageFunctions(Protocol):
    """The five per-batch stages. ctx is an object returned by sample(i) and passed along."""

    def sample(self, i: int) -> Any: ...

    def fetch_features(self, i: int, ctx: Any) -> None: ...

    def fetch_memory(self, i: int, ctx: Any, staleness: int) -> int | None: ...

    def train(self, i: int, ctx: Any) -> None: ...

    def update_memory(self, i: int, ctx: Any) -> None: ...


@dataclass
class StageEvent:
    """One stage of one batch; times in seconds since the run started (time.perf_counter)."""

    batch: int
    stage: str
    start: float
    end: float


@dataclass
class RunStats:
    """What a run measured: every stage event, and per batch the bound in force and staleness seen."""

    events: list[StageEvent]
    k: list[int]
    staleness: list[int]
    wall_s: float
    train_busy_fraction: float
    stage_mean_s: dict[str, float]


def train_busy_fraction(events: list[StageEvent]) -> float:
    """Time spent training over the span from the first training start to the last training end."""
    train = [e for e in events if e.stage == "train"]
    if not train:
        return 0.0
    span = max(e.end for e in train) - min(e.start for e in train)
    busy = sum(e.end - e.start for e in train)
    return busy / span if span > 0 else 1.0


def stage_means(events: list[StageEvent]) -> dict[str, float]:
    """Mean duration of each stage that ran at least once."""
    durations: dict[str, list[float]] = {}
    for event in events:
        durations.setdefault(event.stage, []).append(event.end - event.start)
    return {stage: float(np.mean(durations[stage])) for stage in STAGES if stage in durations}


def call_stage(stages: StageFunctions, stage: str, i: int, ctx: Any, staleness: int) -> tuple[Any, int | None]:
    """Run one stage of batch i; return the context (sample makes it) and, from a memory fetch, the
    staleness its read saw (None where the stage does not report it)."""
    if stage == "sample":
        return stages.sample(i), None
    if stage == "fetch_memory":
        return ctx, stages.fetch_memory(i, ctx, staleness)
    getattr(stages, stage)(i, ctx)
    return ctx, None


def annotate(err: BaseException, stage: str, batch: int) -> BaseException:
    """Mark an exception with the stage and batch that raised it."""
    err.pipeline_stage = stage
    err.pipeline_batch = batch
    err.add_note(f"raised by pipeline stage '{stage}' on batch {batch}")
    return err


class _Recorder:
    """The run's clock and its measurements, shared by the sequential and the pipelined phase."""

    def __init__(self, num_batches: int, profiler: StageProfiler) -> None:
        self.profiler = profiler
        self.t0 = time.perf_counter()
        self.events: list[StageEvent] = []
        self.k = [1] * num_batches
        self.staleness = [0] * num_batches
        self.start = {stage: [None] * num_batches for stage in STAGES}
        self.end = {stage: [None] * num_batches for stage in STAGES}
        self.alone: dict[str, list[tuple[float, float] | None]] = {stage: [None] * num_batches for stage in STAGES}

    def now(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.t0

    def record(self, stage: str, batch: int, start: float, end: float, staleness_seen: int | None = None,
               cpu_s: float | None = None) -> None:
        """Keep one finished stage event and feed its duration to the profiler; a memory fetch that
        reports the staleness its read saw replaces the value scheduled at its start. `cpu_s`: the process
        CPU time the stage used, known when it ran alone (a sequential batch)."""
        if staleness_seen is not None:
            self.staleness[batch] = staleness_seen
        self.events.append(StageEvent(batch, stage, start, end))
        self.end[stage][batch] = end
        if cpu_s is not None:
            self.alone[stage][batch] = (end - start, cpu_s)
        self.profiler.record(stage, end - start)

    def timing(self, batches: range, other_cores: float | None = None) -> SegmentTiming:
        """What `batches` measured: time between consecutive train ends, and the median elapsed and CPU
        time of each stage over those of them that ran sequentially; `other_cores` as measured around them."""
        ends = [self.end["train"][i] for i in batches]
        alone = {stage: [self.alone[stage][i] for i in batches if self.alone[stage][i] is not None]
                 for stage in STAGES}
        measured = all(alone.values())
        return SegmentTiming(
            batch_s=tuple(np.diff(ends).tolist()),
            stage_wall_s={stage: float(np.median([w for w, _ in alone[stage]])) for stage in STAGES} if measured else {},
            stage_cpu_s={stage: float(np.median([c for _, c in alone[stage]])) for stage in STAGES} if measured else {},
            other_cores=other_cores)

    def stats(self) -> RunStats:
        return RunStats(
            events=self.events, k=self.k, staleness=self.staleness, wall_s=self.now(),
            train_busy_fraction=train_busy_fraction(self.events), stage_mean_s=stage_means(self.events),
        )


def _run_sequential(stages: StageFunctions, batches: range, rec: _Recorder, stop: threading.Event | None,
                    on_batch_done: Callable[[int], None] | None) -> None:
    """Every stage of each batch in order, in the calling thread (k = 1, staleness 0)."""
    for i in batches:
        ctx = None
        for stage in STAGES:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            start, cpu = rec.now(), time.process_time()
            rec.start[stage][i] = start
            try:
                ctx, seen = call_stage(stages, stage, i, ctx, 0)
            except BaseException as err:
                annotate(err, stage, i)
                raise
            rec.record(stage, i, start, rec.now(), seen, time.process_time() - cpu)
        if on_batch_done is not None:
            on_batch_done(i)


class _Pipeline:
    """Shared state of the pipelined phase; every field is read and written under `cond`."""

    def __init__(self, stages: StageFunctions, scheduler: Scheduler, batches: range, rec: _Recorder,
                 stop: threading.Event | None, on_batch_done: Callable[[int], None] | None) -> None:
        self.stages = stages
        self.stop = stop
        self.on_batch_done = on_batch_done
        self.reported = batches.start  # on_batch_done has been called for the batches below this
        self.scheduler = scheduler
        self.batches = batches
        self.rec = rec
        self.cond = threading.Condition()
        self.done = dict.fromkeys(STAGES, batches.start)  # batches < done[stage] have finished stage
        self.bound_decided = batches.start  # rec.k holds the scheduler's bound for batches below this
        self.contexts: dict[int, Any] = {}
        self.h2d_busy = False
        self.failure: BaseException | None = None
        self.aborted = False

    def _bound(self, i: int) -> int:
        """The staleness bound of batch i, asked of the scheduler once, in batch order."""
        while self.bound_decided <= i:
            self.rec.k[self.bound_decided] = self.scheduler.staleness_bound(self.bound_decided, self.rec.profiler)
            self.bound_decided += 1
        return self.rec.k[i]

    def _memory_fetch_start(self, now: float) -> float | None:
        """When the next memory fetch starts, if nothing but the host-to-device path can hold it back."""
        i = self.done["fetch_memory"]
        if i >= self.batches.stop or self.done["fetch_features"] <= i:
            return None
        if self.done["update_memory"] <= i - self._bound(i):
            return None
        prev_start = self.rec.start["train"][i - 1] if i > 0 else 0.0
        prev_end = self.rec.end["train"][i - 1] if i > 0 else 0.0
        return self.scheduler.memory_fetch_start(now, prev_start, prev_end, self.rec.profiler)

    def _delay(self, stage: str, i: int, now: float) -> float | None:
        """Seconds until `stage` may start batch i (<= 0: now), or None while another stage holds it back.

        A memory fetch that only waits for its start time reserves the host-to-device path: a feature
        fetch may start only if it is expected to end by then.
        """
        if stage == "sample":
            return 0.0 if i - self.done["update_memory"] < self.scheduler.max_in_flight else None
        if self.done[STAGES[STAGES.index(stage) - 1]] <= i:
            return None
        if stage not in HOST_TO_DEVICE:
            return 0.0
        if self.h2d_busy:
            return None
        memory_fetch_start = self._memory_fetch_start(now)
        if stage == "fetch_memory":
            return None if memory_fetch_start is None else memory_fetch_start - now
        if memory_fetch_start is not None and now + self.rec.profiler.tau("fetch_features") > memory_fetch_start:
            return None
        return 0.0

    def work(self, stage: str, after_batch: Callable[[], None] | None = None) -> None:
        """Run `stage` for every batch in order, calling `after_batch` after each; on any exception record
        it and stop the run."""
        i = self.batches.start
        try:
            for i in self.batches:
                turn = self._begin(stage, i)
                if turn is None:
                    return
                ctx, staleness, start = turn
                ctx, seen = call_stage(self.stages, stage, i, ctx, staleness)
                self._finish(stage, i, ctx, start, self.rec.now(), seen)
                if after_batch is not None:
                    after_batch()
        except BaseException as err:
            self._fail(annotate(err, stage, i))

    def work_in_thread(self, stage: str, policy: HostThreadPolicy) -> None:
        """`work` in a stage thread of its own; a host stage's thread first keeps out of training's way."""
        if stage != "train":
            keep_off_training(policy)
        self.work(stage)

    def _begin(self, stage: str, i: int) -> tuple[Any, int, float] | None:
        """Wait for the turn of `stage` on batch i and mark it started: (context, staleness, start time).

        None when the run was aborted while waiting.
        """
        with self.cond:
            while True:
                if self.aborted or self.stopped():
                    return None
                now = self.rec.now()
                delay = self._delay(stage, i, now)
                if delay is not None and delay <= 0:
                    break
                self.cond.wait(POLL_S if delay is None else min(delay, POLL_S))
            self.rec.start[stage][i] = now
            staleness = i - self.done["update_memory"]
            if stage in HOST_TO_DEVICE:
                self.h2d_busy = True
            if stage == "fetch_memory":
                self.rec.staleness[i] = staleness
            self.cond.notify_all()
            return self.contexts.get(i), staleness, now

    def _finish(self, stage: str, i: int, ctx: Any, start: float, end: float, seen: int | None) -> None:
        with self.cond:
            self.rec.record(stage, i, start, end, seen)
            if stage == "sample":
                self.contexts[i] = ctx
            elif stage == "update_memory":
                del self.contexts[i]
            if stage in HOST_TO_DEVICE:
                self.h2d_busy = False
            self.done[stage] = i + 1
            self.cond.notify_all()

    def _fail(self, err: BaseException) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = err
            self.aborted = True
            self.cond.notify_all()

    def abort(self) -> None:
        """Ask every worker to stop at its next check."""
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def stopped(self) -> bool:
        """Whether the caller asked the run to stop."""
        return self.stop is not None and self.stop.is_set()

    def report_finished(self) -> None:
        """In the calling thread: `on_batch_done` for every batch whose update ended since the last call."""
        with self.cond:
            finished = self.done["update_memory"]
        if self.on_batch_done is not None:
            for i in range(self.reported, finished):
                self.on_batch_done(i)
        self.reported = finished

    def finish_reporting(self) -> None:
        """In the calling thread, after its last train step: report the remaining updates as they end,
        until all have, a stage failed or a stop was asked for."""
        while self.reported < self.batches.stop:
            with self.cond:
                self.cond.wait_for(lambda: self.aborted or self.stopped()
                                   or self.done["update_memory"] > self.reported, timeout=POLL_S)
                if self.aborted or self.stopped():
                    return
            self.report_finished()


def _run_pipelined(stages: StageFunctions, scheduler: Scheduler, batches: range, rec: _Recorder,
                   stop: threading.Event | None, on_batch_done: Callable[[int], None] | None,
                   policy: HostThreadPolicy) -> None:
    """One thread per stage; the train stage's is the calling thread unless `policy` says otherwise.
    Always joins the stage threads before returning or raising."""
    pipeline = _Pipeline(stages, scheduler, batches, rec, stop, on_batch_done)
    threaded = [stage for stage in STAGES if stage != "train" or not policy.train_in_caller]
    workers = [threading.Thread(target=pipeline.work_in_thread, args=(stage, policy), name=f"pipeline-{stage}",
                                daemon=False) for stage in threaded]
    with switch_interval(policy.switch_interval_s):
        for worker in workers:
            worker.start()
        try:
            if policy.train_in_caller:
                pipeline.work("train", after_batch=pipeline.report_finished)
            pipeline.finish_reporting()
        finally:
            pipeline.abort()
            for worker in workers:
                worker.join()
    if pipeline.failure is not None:
        raise pipeline.failure
    if pipeline.stopped():
        raise KeyboardInterrupt


def _run_segment(stages: StageFunctions, scheduler: Scheduler, batches: range, rec: _Recorder,
                 stop: threading.Event | None, on_batch_done: Callable[[int], None] | None,
                 policy: HostThreadPolicy) -> None:
    """`batches` under one scheduler: its leading sequential batches, then the pipeline."""
    warmup = batches.start + scheduler.sequential_batches(len(batches), rec.profiler)
    _run_sequential(stages, range(batches.start, warmup), rec, stop, on_batch_done)
    if warmup < batches.stop:
        _run_pipelined(stages, scheduler, range(warmup, batches.stop), rec, stop, on_batch_done, policy)


def run_batches(num_batches: int, stages: StageFunctions, scheduler: Scheduler, profiler: StageProfiler | None = None,
                stop: threading.Event | None = None, on_batch_done: Callable[[int], None] | None = None,
                host_policy: HostThreadPolicy = HostThreadPolicy()) -> RunStats:
    """Run all five stages of batches 0..num_batches-1 as `scheduler` schedules them; return the measurements.

    `profiler` (a fresh one if None) is updated with every stage event and read by the scheduler. The
    scheduler may split the batches into segments, each run under a scheduler of its choice
    (`Scheduler.segment`) with the train stage's thread count it names (`Scheduler.segment_threads`; it
    stays in force after the segment), and is told what each segment measured (`Scheduler.segment_done`).
    """
    profiler = profiler if profiler is not None else StageProfiler()
    rec = _Recorder(num_batches, profiler)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt
    start = 0
    while start < num_batches:
        segment, end = scheduler.segment(start, num_batches)
        use_threads(scheduler.segment_threads())
        clock = CpuClock.now()
        _run_segment(stages, segment, range(start, end), rec, stop, on_batch_done, host_policy)
        scheduler.segment_done(segment, range(start, end), rec.timing(range(start, end),
                                                                      clock.other_cores(CpuClock.now())))
        start = end
    return rec.stats()
