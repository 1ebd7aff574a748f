"""The threaded pipeline runner, driven by fake stages that sleep for known times (sleep releases the
GIL, like the numpy/torch work of the real stages): scheduling rules for every scheduler, MSPipe's online
bound and delayed fetch, speed over sequential, exactness of k = 1, faults and stop requests."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.engine.schedulers import FixedK, MSPipe, Scheduler, Presample, Sequential
from pipeline.engine.profiler import StageProfiler, minimal_staleness
from pipeline.engine.host_threads import HostThreadPolicy
from pipeline.engine.runner import STAGES, RunStats, StageEvent, run_batches

MS = 1e-3
# Train-bound: P = 12 ms, (fm + train + update) / P = 16 / 12, so k_min = 2; sum / max = 28 / 12.
DURATIONS = {"sample": 8 * MS, "fetch_features": 4 * MS, "fetch_memory": 2 * MS, "train": 12 * MS,
             "update_memory": 2 * MS}
NUM_BATCHES = 30


class StageFailure(Exception):
    """Raised by a fake stage on purpose."""


class SleepStages:
    """Fake stages sleeping `durations[stage]` (a callable of the batch gives per-batch times).

    Records each call and the staleness passed to fetch_memory, checks that every stage gets the
    context that sample returned, and raises `StageFailure` at `fail_at = (stage, batch)`.
    """

    def __init__(self, durations: dict, fail_at: tuple[str, int] | None = None) -> None:
        self.durations = durations
        self.fail_at = fail_at
        self.calls: Counter = Counter()
        self.staleness: dict[int, int] = {}
        self.raised: StageFailure | None = None
        self.raised_at = 0.0

    def _run(self, stage: str, i: int, ctx: dict | None) -> None:
        if ctx is not None and ctx["batch"] != i:
            raise AssertionError(f"{stage} of batch {i} got the context of batch {ctx['batch']}")
        self.calls[stage, i] += 1
        duration = self.durations[stage]
        time.sleep(duration(i) if callable(duration) else duration)
        if self.fail_at == (stage, i):
            self.raised, self.raised_at = StageFailure(f"{stage} {i}"), time.perf_counter()
            raise self.raised

    def sample(self, i: int) -> dict:
        self._run("sample", i, None)
        return {"batch": i}

    def fetch_features(self, i: int, ctx: dict) -> None:
        self._run("fetch_features", i, ctx)

    def fetch_memory(self, i: int, ctx: dict, staleness: int) -> None:
        self.staleness[i] = staleness
        self._run("fetch_memory", i, ctx)

    def train(self, i: int, ctx: dict) -> None:
        self._run("train", i, ctx)

    def update_memory(self, i: int, ctx: dict) -> None:
        self._run("update_memory", i, ctx)


def by_stage(stats: RunStats) -> dict[str, dict[int, StageEvent]]:
    """Events indexed by stage and batch."""
    table: dict[str, dict[int, StageEvent]] = {stage: {} for stage in STAGES}
    for event in stats.events:
        table[event.stage][event.batch] = event
    return table


def assert_schedule_rules(stats: RunStats, scheduler: Scheduler, num_batches: int) -> None:
    """Every rule of docs/method.md §4 on the recorded events."""
    assert Counter((e.stage, e.batch) for e in stats.events) == Counter(
        (stage, i) for stage in STAGES for i in range(num_batches))
    ev = by_stage(stats)
    for stage in STAGES:
        in_time_order = sorted(ev[stage].values(), key=lambda e: e.start)
        assert [e.batch for e in in_time_order] == list(range(num_batches)), f"{stage} out of batch order"
        for before, after in zip(in_time_order, in_time_order[1:]):
            assert after.start >= before.end, f"{stage} ran two batches at once"
    for i in range(num_batches):
        for earlier, later in zip(STAGES, STAGES[1:]):
            assert ev[later][i].start >= ev[earlier][i].end, f"{later} of {i} started before {earlier} ended"
        k = stats.k[i]
        assert 0 <= stats.staleness[i] <= k - 1
        if i - k >= 0:
            assert ev["fetch_memory"][i].start >= ev["update_memory"][i - k].end
        ahead = i - scheduler.max_in_flight
        if ahead >= 0:
            assert ev["sample"][i].start >= ev["update_memory"][ahead].end, "sampling ran too far ahead"
    host_to_device = sorted([*ev["fetch_features"].values(), *ev["fetch_memory"].values()], key=lambda e: e.start)
    for before, after in zip(host_to_device, host_to_device[1:]):
        assert after.start >= before.end, "feature fetch and memory fetch overlapped"


def pipelined_train_busy(stats: RunStats, first_batch: int) -> float:
    """Training time over the training span, from batch `first_batch` on."""
    train = [e for e in stats.events if e.stage == "train" and e.batch >= first_batch]
    return sum(e.end - e.start for e in train) / (max(e.end for e in train) - min(e.start for e in train))


SCHEDULER_FACTORIES = {
    "sequential": Sequential,
    "presample": Presample,
    "fixed-1": lambda: FixedK(1),
    "fixed-3": lambda: FixedK(3),
    "mspipe": MSPipe,
    "mspipe-eager": lambda: MSPipe(delayed_fetch=False),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[Scheduler, SleepStages, RunStats, list[int], set[int]]]:
    """One run of every scheduler on the same fake stages: (scheduler, stages, stats, batches reported, reporting threads)."""
    results = {}
    for name, make in SCHEDULER_FACTORIES.items():
        scheduler, stages, reported, threads = make(), SleepStages(DURATIONS), [], set()

        def on_done(i: int, reported=reported, threads=threads) -> None:
            reported.append(i)
            threads.add(threading.get_ident())

        stats = run_batches(NUM_BATCHES, stages, scheduler, on_batch_done=on_done)
        results[name] = (scheduler, stages, stats, reported, threads)
    return results


@pytest.mark.parametrize("name", SCHEDULER_FACTORIES)
def test_every_scheduler_obeys_the_scheduling_rules(runs, name):
    scheduler, stages, stats, reported, threads = runs[name]
    assert_schedule_rules(stats, scheduler, NUM_BATCHES)
    assert set(stages.calls.values()) == {1} and len(stages.calls) == len(STAGES) * NUM_BATCHES
    assert [stages.staleness[i] for i in range(NUM_BATCHES)] == stats.staleness
    assert reported == list(range(NUM_BATCHES)) and threads == {threading.get_ident()}
    assert len(stats.k) == len(stats.staleness) == NUM_BATCHES
    assert set(stats.stage_mean_s) == set(STAGES)
    for stage, seconds in stats.stage_mean_s.items():
        assert DURATIONS[stage] <= seconds < DURATIONS[stage] + 5 * MS
    assert 0 < stats.train_busy_fraction <= 1
    assert stats.wall_s >= max(e.end for e in stats.events)


@pytest.mark.parametrize("name", ["sequential", "presample", "fixed-1"])
def test_k1_schedulers_never_read_stale_memory(runs, name):
    _, _, stats, _, _ = runs[name]
    assert stats.k == [1] * NUM_BATCHES and stats.staleness == [0] * NUM_BATCHES


def test_sequential_never_overlaps_two_stages(runs):
    _, _, stats, _, _ = runs["sequential"]
    in_order = sorted(stats.events, key=lambda e: e.start)
    assert [(e.batch, e.stage) for e in in_order] == [(i, s) for i in range(NUM_BATCHES) for s in STAGES]
    assert all(after.start >= before.end for before, after in zip(in_order, in_order[1:]))


@pytest.mark.parametrize("name", ["presample", "fixed-3", "mspipe", "mspipe-eager"])
def test_pipelined_schedulers_are_much_faster_than_sequential(runs, name):
    assert runs[name][2].wall_s < 0.8 * runs["sequential"][2].wall_s


def test_mspipe_bound_is_the_formula_of_the_measured_times(runs):
    scheduler, _, stats, _, _ = runs["mspipe"]
    expected = minimal_staleness(DURATIONS, scheduler.k_max)
    assert expected == 2
    assert stats.k[:scheduler.warmup_batches] == [1] * scheduler.warmup_batches
    assert stats.k[scheduler.warmup_batches:] == [expected] * (NUM_BATCHES - scheduler.warmup_batches)
    assert max(stats.staleness) == expected - 1


def test_mspipe_keeps_training_busy_after_warmup(runs):
    scheduler, _, stats, _, _ = runs["mspipe"]
    assert pipelined_train_busy(stats, scheduler.warmup_batches + 1) > 0.8


class RecordingMSPipe(MSPipe):
    """MSPipe that remembers, for every bound it gives, the stage times it was computed from."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decisions: list[tuple[int, int, dict[str, float]]] = []

    def staleness_bound(self, batch: int, profiler: StageProfiler) -> int:
        k = super().staleness_bound(batch, profiler)
        self.decisions.append((batch, k, profiler.means()))
        return k


def test_mspipe_recomputes_the_bound_online_when_stage_times_change():
    fast, slow, switch, num_batches = 6 * MS, 30 * MS, 12, 26
    durations = {"sample": 2 * MS, "fetch_features": 1 * MS, "fetch_memory": 5 * MS,
                 "train": lambda i: fast if i < switch else slow, "update_memory": 7 * MS}
    k_fast = minimal_staleness(durations | {"train": fast}, 8)
    k_slow = minimal_staleness(durations | {"train": slow}, 8)
    assert (k_fast, k_slow) == (3, 2)
    scheduler = RecordingMSPipe(warmup_batches=4)
    stats = run_batches(num_batches, SleepStages(durations), scheduler)
    assert_schedule_rules(stats, scheduler, num_batches)
    assert [batch for batch, _, _ in scheduler.decisions] == list(range(4, num_batches))
    for batch, k, taus in scheduler.decisions:
        assert k == stats.k[batch] == minimal_staleness(taus, scheduler.k_max)
    assert stats.k[4:switch] == [k_fast] * (switch - 4)
    assert stats.k[-6:] == [k_slow] * 6


def test_mspipe_bound_is_clamped_to_k_max():
    durations = DURATIONS | {"fetch_memory": 10 * MS, "update_memory": 10 * MS}
    assert minimal_staleness(durations, 8) == 3
    scheduler = MSPipe(k_max=2, warmup_batches=3)
    stats = run_batches(10, SleepStages(durations), scheduler)
    assert stats.k[3:] == [2] * 7
    assert_schedule_rules(stats, scheduler, 10)


def test_delayed_fetch_starts_as_late_as_training_allows():
    durations = {"sample": 4 * MS, "fetch_features": 3 * MS, "fetch_memory": 3 * MS, "train": 30 * MS,
                 "update_memory": 3 * MS}
    latest_start = durations["train"] - durations["fetch_memory"]  # after the start of training i-1
    num_batches, warmup = 16, 3
    gaps = {}
    for delayed in (True, False):
        scheduler = MSPipe(warmup_batches=warmup, delayed_fetch=delayed)
        stats = run_batches(num_batches, SleepStages(durations), scheduler)
        assert_schedule_rules(stats, scheduler, num_batches)
        ev = by_stage(stats)
        gap = np.array([ev["fetch_memory"][i].start - ev["train"][i - 1].start for i in range(1, num_batches)])
        if delayed:
            assert np.all(gap >= latest_start - 8 * MS)  # tolerance: measured times vary on a busy machine
            assert pipelined_train_busy(stats, warmup + 1) > 0.8
        gaps[delayed] = gap[warmup:].mean()
    assert gaps[True] > gaps[False] + 10 * MS


class SharedMemoryStages:
    """Deterministic stages over a shared 'memory' of 4 values: batch i reads nodes (0, i % 3 + 1),
    trains `0.5 * read + i` and writes that back, so any staleness changes the outputs."""

    def __init__(self) -> None:
        self.memory = np.zeros(4)
        self.outputs: list[np.ndarray] = []

    def sample(self, i: int) -> dict:
        return {"nodes": np.array([0, i % 3 + 1])}

    def fetch_features(self, i: int, ctx: dict) -> None:
        time.sleep(0.5 * MS)

    def fetch_memory(self, i: int, ctx: dict, staleness: int) -> None:
        ctx["read"] = self.memory[ctx["nodes"]].copy()

    def train(self, i: int, ctx: dict) -> None:
        time.sleep(2 * MS)
        ctx["out"] = 0.5 * ctx["read"] + i
        self.outputs.append(ctx["out"])

    def update_memory(self, i: int, ctx: dict) -> None:
        time.sleep(1 * MS)
        self.memory[ctx["nodes"]] = ctx["out"]


def run_shared_memory(scheduler: Scheduler) -> tuple[SharedMemoryStages, RunStats]:
    stages = SharedMemoryStages()
    return stages, run_batches(40, stages, scheduler)


def test_fixed_k1_computes_exactly_what_sequential_computes():
    reference, _ = run_shared_memory(Sequential())
    pipelined, stats = run_shared_memory(FixedK(1))
    assert stats.staleness == [0] * 40
    np.testing.assert_array_equal(np.stack(pipelined.outputs), np.stack(reference.outputs))
    np.testing.assert_array_equal(pipelined.memory, reference.memory)
    stale, stale_stats = run_shared_memory(FixedK(4))
    assert max(stale_stats.staleness) > 0
    assert not np.array_equal(np.stack(stale.outputs), np.stack(reference.outputs))


FAULT_SCHEDULERS = {"sequential": Sequential, "fixed-3": lambda: FixedK(3),
                  "mspipe": lambda: MSPipe(warmup_batches=2)}


@pytest.mark.parametrize("scheduler_name", FAULT_SCHEDULERS)
@pytest.mark.parametrize("stage", STAGES)
def test_a_failing_stage_stops_the_run_with_its_exception(stage, scheduler_name):
    threads_before = set(threading.enumerate())
    stages = SleepStages({s: 3 * MS for s in STAGES}, fail_at=(stage, 6))
    scheduler = FAULT_SCHEDULERS[scheduler_name]()
    with pytest.raises(StageFailure) as raised:
        run_batches(200, stages, scheduler)
    assert time.perf_counter() - stages.raised_at < 1.0
    assert raised.value is stages.raised
    assert (raised.value.pipeline_stage, raised.value.pipeline_batch) == (stage, 6)
    assert any(stage in note and "6" in note for note in raised.value.__notes__)
    assert max(batch for _, batch in stages.calls) < 6 + scheduler.max_in_flight, "the run went on"
    assert set(threading.enumerate()) <= threads_before


@pytest.mark.parametrize("scheduler_name", FAULT_SCHEDULERS)
def test_stop_event_interrupts_the_run_promptly(scheduler_name):
    threads_before = set(threading.enumerate())
    stop, set_at = threading.Event(), []

    def request_stop() -> None:
        set_at.append(time.perf_counter())
        stop.set()

    timer = threading.Timer(0.2, request_stop)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_batches(1000, SleepStages({s: 5 * MS for s in STAGES}), FAULT_SCHEDULERS[scheduler_name](), stop=stop)
    stopped_at = time.perf_counter()
    timer.join()
    assert stopped_at - set_at[0] < 1.0
    assert set(threading.enumerate()) <= threads_before


def test_a_stop_requested_before_the_run_runs_nothing():
    stop = threading.Event()
    stop.set()
    stages = SleepStages(DURATIONS)
    with pytest.raises(KeyboardInterrupt):
        run_batches(5, stages, FixedK(2), stop=stop)
    assert not stages.calls


def test_a_failing_progress_callback_stops_the_pipeline():
    threads_before = set(threading.enumerate())

    def on_done(i: int) -> None:
        if i == 3:
            raise StageFailure("callback")

    with pytest.raises(StageFailure, match="callback"):
        run_batches(200, SleepStages({s: 2 * MS for s in STAGES}), FixedK(2), on_batch_done=on_done)
    assert set(threading.enumerate()) <= threads_before


def test_profiler_given_to_the_run_is_fed_and_skips_a_second_warmup():
    profiler = StageProfiler()
    run_batches(6, SleepStages(DURATIONS), MSPipe(warmup_batches=5), profiler=profiler)
    assert profiler.observations() == 6
    assert profiler.tau("train") == pytest.approx(DURATIONS["train"], abs=3 * MS)
    scheduler = MSPipe(warmup_batches=5)
    stats = run_batches(6, SleepStages(DURATIONS), scheduler, profiler=profiler)
    assert stats.k == [minimal_staleness(DURATIONS, scheduler.k_max)] * 6


def test_no_batches_gives_empty_stats():
    stats = run_batches(0, SleepStages(DURATIONS), MSPipe())
    assert stats.events == [] and stats.k == [] and stats.staleness == []
    assert stats.train_busy_fraction == 0.0 and stats.stage_mean_s == {}


class FresherReads(SleepStages):
    """Memory fetches that report reading one version fresher than scheduled (an update committed
    between the scheduler's check and the read)."""

    def fetch_memory(self, i: int, ctx: dict, staleness: int) -> int:
        super().fetch_memory(i, ctx, staleness)
        return max(staleness - 1, 0)


@pytest.mark.parametrize("make", [Sequential, lambda: FixedK(3)], ids=["sequential", "fixed-3"])
def test_the_staleness_a_fetch_reports_replaces_the_scheduled_one(make):
    stages = FresherReads(DURATIONS)
    stats = run_batches(NUM_BATCHES, stages, make())
    assert stats.staleness == [max(stages.staleness[i] - 1, 0) for i in range(NUM_BATCHES)]


class ThreadRecorder(SleepStages):
    """Sleeping stages that record, per stage, the thread they ran in, its torch thread count, its Linux
    scheduling policy and Python's switch interval at the time."""

    def __init__(self, durations: dict) -> None:
        super().__init__(durations)
        self.seen: dict[str, set] = {stage: set() for stage in STAGES}

    def _run(self, stage: str, i: int, ctx: dict | None) -> None:
        policy = os.sched_getscheduler(threading.get_native_id()) if hasattr(os, "sched_getscheduler") else None
        self.seen[stage].add((threading.get_ident(), torch.get_num_threads(), policy, sys.getswitchinterval()))
        super()._run(stage, i, ctx)


def test_the_train_stage_keeps_the_calling_thread_and_host_threads_keep_out_of_its_way():
    threads_before = torch.get_num_threads()
    interval_before = sys.getswitchinterval()
    torch.set_num_threads(2)
    try:
        stages = ThreadRecorder({s: 2 * MS for s in STAGES})
        run_batches(12, stages, FixedK(2))
    finally:
        torch.set_num_threads(threads_before)
    caller = threading.get_ident()
    assert {ident for ident, *_ in stages.seen["train"]} == {caller}
    assert {threads for _, threads, *_ in stages.seen["train"]} == {2}
    intervals = {interval for *_, interval in stages.seen["train"]}
    assert len(intervals) == 1 and intervals.pop() == pytest.approx(HostThreadPolicy().switch_interval_s)
    for stage in set(STAGES) - {"train"}:
        assert len(stages.seen[stage]) == 1, f"{stage} ran in one thread of its own"
        ident, threads, policy, _ = next(iter(stages.seen[stage]))
        assert ident != caller and threads == 1, stage
        if sys.platform.startswith("linux"):
            assert policy == os.SCHED_IDLE, stage
    assert sys.getswitchinterval() == interval_before


def test_a_policy_with_every_setting_off_runs_the_train_stage_in_a_thread_of_its_own():
    interval_before = sys.getswitchinterval()
    stages = ThreadRecorder({s: 2 * MS for s in STAGES})
    policy = HostThreadPolicy(train_in_caller=False, one_openmp_thread=False, sched_idle=False, switch_interval_s=None)
    stats = run_batches(12, stages, FixedK(2), host_policy=policy)
    assert_schedule_rules(stats, FixedK(2), 12)
    assert threading.get_ident() not in {ident for ident, *_ in stages.seen["train"]}
    assert {interval for *_, interval in stages.seen["sample"]} == {interval_before}


# A GPU's regime: training is short beside the host stages; P = fetch_features + fetch_memory = 40 ms.
GPU_LIKE = {"sample": 10 * MS, "fetch_features": 15 * MS, "fetch_memory": 25 * MS, "train": 20 * MS,
            "update_memory": 20 * MS}


def test_the_pipeline_reaches_the_schedule_models_speedup_at_gpu_like_stage_times():
    period = max(GPU_LIKE["sample"], GPU_LIKE["fetch_features"] + GPU_LIKE["fetch_memory"], GPU_LIKE["train"],
                 GPU_LIKE["update_memory"])
    model_speedup = sum(GPU_LIKE.values()) / period
    profiler = StageProfiler()
    run_batches(5, SleepStages(GPU_LIKE), Sequential(), profiler=profiler)  # measured stage times: no warm-up below
    stats = run_batches(30, SleepStages(GPU_LIKE), MSPipe(), profiler=profiler)
    train_ends = sorted(e.end for e in stats.events if e.stage == "train")[5:]
    steady_period = (train_ends[-1] - train_ends[0]) / (len(train_ends) - 1)
    assert sum(GPU_LIKE.values()) / steady_period >= 0.94 * model_speedup
