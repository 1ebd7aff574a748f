"""`pipeline.mode: auto`: it tries the candidate modes on the running job and keeps the fastest, re-checks
now and then, and every batch still runs exactly once, in order, under the rules of the mode of its
segment. Driven by sleeping fake stages (tests/test_runner.py), one of them slowed by contention."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from pipeline.engine.config import AutoConfig, PipelineConfig
from pipeline.engine.host_threads import thread_options
from pipeline.engine.profiler import CpuClock, SegmentTiming, pipelined_time_bound
from pipeline.engine.runner import STAGES, run_batches
from pipeline.engine import schedulers
from pipeline.engine.schedulers import Auto, MSPipe, Presample, Sequential, Setting, make_scheduler
from test_runner import DURATIONS, MS, SleepStages, assert_schedule_rules


class ContendedStages(SleepStages):
    """Sleeping stages whose train stage takes `slowdown` times as long when a stage ran in another thread
    since the previous train began: a machine where any thread beside training slows it (as OpenMP teams
    do on a small host), so that pipelining loses."""

    def __init__(self, durations: dict, slowdown: float) -> None:
        super().__init__(durations)
        self.slowdown = slowdown
        self.caller = threading.current_thread()
        self.ran_beside = False
        self.lock = threading.Lock()

    def _run(self, stage: str, i: int, ctx: dict | None) -> None:
        if stage != "train":
            if threading.current_thread() is not self.caller:
                with self.lock:
                    self.ran_beside = True
            super()._run(stage, i, ctx)
            return
        with self.lock:
            contended, self.ran_beside = self.ran_beside, False
        super()._run(stage, i, ctx)
        if contended:
            time.sleep(self.durations[stage] * (self.slowdown - 1.0))


class Widest(Sequential):
    """Stands for `auto` in `assert_schedule_rules`: a segment drains before the next starts, so sampling
    never runs further ahead than the widest candidate allows."""

    def __init__(self, auto: Auto) -> None:
        self.auto = auto

    @property
    def max_in_flight(self) -> int:
        return max(candidate.max_in_flight for candidate in self.auto.settings.values())


def candidates() -> dict:
    return {"sequential": Sequential, "presample": Presample, "mspipe": MSPipe}


def chosen_mode(auto: Auto) -> str | None:
    return None if auto.chosen is None else auto.chosen.mode


def test_auto_keeps_a_pipelined_mode_where_pipelining_pays():
    auto, reported = Auto(candidates(), trial_batches=4, rounds=1, recheck_every=100), []
    stats = run_batches(30, SleepStages(DURATIONS), auto, on_batch_done=reported.append)
    assert chosen_mode(auto) in ("presample", "mspipe")
    assert len(auto.decisions) == 1 and auto.decisions[0]["mode"] == chosen_mode(auto)
    assert set(auto.decisions[0]["ms_per_batch"]) == {"sequential", "presample", "mspipe"}
    assert auto.decisions[0]["ms_per_batch"]["sequential"] > auto.decisions[0]["ms_per_batch"][str(auto.chosen)]
    assert reported == list(range(30))
    assert_schedule_rules(stats, Widest(auto), 30)


def test_auto_keeps_sequential_where_the_stages_compete_with_training():
    auto = Auto(candidates(), trial_batches=4, rounds=2, recheck_every=100)
    stages = ContendedStages(DURATIONS, slowdown=3.0)
    stats = run_batches(40, stages, auto)
    assert chosen_mode(auto) == "sequential"
    assert set(stages.calls.values()) == {1} and len(stages.calls) == len(STAGES) * 40
    assert stats.k[-10:] == [1] * 10 and stats.staleness[-10:] == [0] * 10


def test_auto_measures_again_after_recheck_every_batches():
    auto = Auto({"sequential": Sequential, "presample": Presample}, trial_batches=3, rounds=1, recheck_every=10,
                watch_batches=10)
    run_batches(40, SleepStages({stage: 1 * MS for stage in STAGES}), auto)
    assert len(auto.decisions) >= 2
    assert [d["batch"] for d in auto.decisions][:2] == [6, 22]  # 6 trial batches, 10 chosen, 6 trial batches


def test_a_trial_cut_short_by_the_end_of_an_epoch_goes_on_in_the_next():
    auto = Auto({"sequential": Sequential, "presample": Presample}, trial_batches=3, rounds=1, recheck_every=50)
    run_batches(4, SleepStages(DURATIONS), auto)  # sequential's trial, then presample's first batch only
    assert auto.chosen is None
    run_batches(10, SleepStages(DURATIONS), auto)
    assert auto.chosen is not None and set(auto.decisions[0]["ms_per_batch"]) == {"sequential", "presample"}


def timing(ms_per_batch: float, batches: int = 4, stage_ms: dict | None = None,
           cpu_ms: dict | None = None, other_cores: float | None = None) -> SegmentTiming:
    """A segment of `batches` batches that each took `ms_per_batch`, with the given stage times and the
    cores other processes kept busy meanwhile (None: unknown)."""
    return SegmentTiming((ms_per_batch / 1000,) * (batches - 1),
                         {stage: ms / 1000 for stage, ms in (stage_ms or {}).items()},
                         {stage: ms / 1000 for stage, ms in (cpu_ms or {}).items()}, other_cores)


def trial(auto: Auto, times: dict[str, float], **stage_times) -> str:
    """Run `auto`'s next trial segment as if its setting took `times[str(setting)]` ms per batch; its name."""
    segment, end = auto.segment(0, auto.trial_batches)
    name = next(str(setting) for setting, candidate in auto.settings.items() if candidate is segment)
    auto.segment_done(segment, range(0, end), timing(times[name], end, **stage_times))
    return name


def choose(auto: Auto, ms_per_batch: dict[str, float]) -> str:
    """Feed `auto` one trial per candidate with the given times per batch; the mode it keeps."""
    for _ in auto.settings:
        trial(auto, ms_per_batch)
    return chosen_mode(auto)


def test_auto_keeps_the_first_candidate_unless_another_beats_it_by_the_margin():
    def fresh() -> Auto:
        return Auto(candidates(), trial_batches=4, rounds=1, margin=0.05, probe_batches=0)

    assert choose(fresh(), {"sequential": 100.0, "presample": 96.0, "mspipe": 97.0}) == "sequential"
    assert choose(fresh(), {"sequential": 100.0, "presample": 96.0, "mspipe": 94.0}) == "mspipe"
    assert choose(fresh(), {"sequential": 100.0, "presample": 90.0, "mspipe": 94.0}) == "presample"
    no_margin = Auto(candidates(), trial_batches=4, rounds=1, margin=0.0, probe_batches=0)
    assert choose(no_margin, {"sequential": 100.0, "presample": 99.0, "mspipe": 101.0}) == "presample"


def test_a_clear_loser_of_the_first_round_runs_no_more_trials():
    auto = Auto(candidates(), trial_batches=4, rounds=3, drop=0.1, probe_batches=0)
    times = {"sequential": 100.0, "presample": 105.0, "mspipe": 130.0}
    tried = []
    while auto.chosen is None:
        tried.append(trial(auto, times))
    assert tried == ["sequential", "presample", "mspipe"] + ["sequential", "presample"] * 2
    assert chosen_mode(auto) == "sequential" and auto.decisions[0]["ms_per_batch"]["mspipe"] == pytest.approx(130.0)


def test_auto_is_the_default_mode_and_reads_its_config():
    assert PipelineConfig().mode == "auto"
    auto = make_scheduler("auto", PipelineConfig(auto=AutoConfig(candidates=("sequential", "mspipe"), trial_batches=5,
                                                                 rounds=3, recheck_every=77, margin=0.1,
                                                                 drop=0.2)))
    assert isinstance(auto, Auto) and [setting.mode for setting in auto.settings][0] == "sequential"
    assert {setting.mode for setting in auto.settings} == {"sequential", "mspipe"}
    assert (auto.trial_batches, auto.rounds, auto.recheck_every, auto.margin, auto.drop) == (5, 3, 77, 0.1, 0.2)
    assert isinstance(auto.settings[Setting("mspipe", auto.first.threads)], MSPipe)


def test_auto_refuses_a_trial_too_short_to_time():
    with pytest.raises(ValueError, match="trial_batches"):
        Auto(candidates(), trial_batches=1)
    with pytest.raises(ValueError, match="margin"):
        Auto(candidates(), margin=1.0)


# A sequential batch where the host stages are CPU work and the train stage keeps both cores busy: nothing
# can overlap, so no pipelined mode can beat sequential (25 ms).
CPU_BOUND = {"sample": 2.0, "fetch_features": 1.0, "fetch_memory": 1.0, "train": 20.0, "update_memory": 1.0}
BOTH_CORES_BUSY = {**CPU_BOUND, "train": 40.0}


def test_pipelined_time_bound_counts_only_waiting_and_idle_cores_as_overlap():
    seconds = {stage: ms / 1000 for stage, ms in CPU_BOUND.items()}
    busy = {stage: ms / 1000 for stage, ms in BOTH_CORES_BUSY.items()}
    assert pipelined_time_bound(seconds, busy, cores=2) == pytest.approx(0.025)  # no idle core: no gain
    assert pipelined_time_bound(seconds, seconds, cores=2) == pytest.approx(0.020)  # one idle core absorbs them
    waiting = {**seconds, "fetch_features": 0.030}  # a disk read: 30 ms elapsed, 1 ms of CPU
    assert pipelined_time_bound(waiting, busy, cores=2) == pytest.approx(0.031)  # busiest resource: the fetch


def test_auto_does_not_try_modes_that_cannot_beat_sequential():
    auto = Auto(candidates(), trial_batches=4, rounds=2, cores=2)
    times = {"sequential": 25.0, "presample": 24.0, "mspipe": 23.0}
    tried = [trial(auto, times, stage_ms=CPU_BOUND, cpu_ms=BOTH_CORES_BUSY)]
    assert tried == ["sequential"] and chosen_mode(auto) == "sequential"
    assert auto.decisions[0]["not_tried"] == {"presample": "at best 25.0 ms per batch",
                                              "mspipe": "at best 25.0 ms per batch"}


def test_auto_tries_pipelined_modes_where_host_stages_wait():
    auto = Auto(candidates(), trial_batches=4, rounds=1, probe_batches=0, cores=2)
    waiting = {**CPU_BOUND, "fetch_features": 30.0}  # elapsed; its CPU time stays 1 ms
    times = {"sequential": 55.0, "presample": 35.0, "mspipe": 33.0}
    tried = [trial(auto, times, stage_ms=waiting, cpu_ms=BOTH_CORES_BUSY) for _ in range(3)]
    assert tried == ["sequential", "presample", "mspipe"] and chosen_mode(auto) == "mspipe"


def test_auto_chooses_fewer_threads_where_they_are_faster_and_applies_them():
    auto = Auto(candidates(), threads=(2, 1), trial_batches=4, rounds=1, cores=2)
    assert auto.first == Setting("sequential", 2)
    times = {"sequential@2": 80.0, "presample@2": 80.0, "mspipe@2": 80.0, "sequential@1": 28.0,
             "presample@1": 28.0, "mspipe@1": 28.0}
    while auto.chosen is None:
        trial(auto, times, stage_ms=CPU_BOUND, cpu_ms=BOTH_CORES_BUSY)
    assert auto.chosen == Setting("sequential", 1) and auto.decisions[0]["threads"] == 1
    auto.segment(0, 100)
    assert auto.segment_threads() == 1


class ThreadsSeen(SleepStages):
    """Sleeping stages that record the torch thread count each train step ran with."""

    def __init__(self, durations: dict) -> None:
        super().__init__(durations)
        self.threads: dict[int, int] = {}

    def train(self, i: int, ctx: dict) -> None:
        self.threads[i] = torch.get_num_threads()
        super().train(i, ctx)


def test_the_runner_trains_each_segment_with_the_threads_its_setting_names(monkeypatch):
    monkeypatch.setattr(Auto, "_thread_count_cannot_win", lambda self, setting: None)  # whatever the machine's load
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        auto = Auto({"sequential": Sequential}, threads=(2, 1), trial_batches=3, rounds=1, watch_batches=5,
                    probe_batches=0)
        stages = ThreadsSeen({stage: 1 * MS for stage in STAGES})
        run_batches(12, stages, auto)
        assert [stages.threads[i] for i in range(6)] == [1, 1, 1, 2, 2, 2]  # the fewest threads first
        assert set(stages.threads[i] for i in range(6, 12)) == {auto.chosen.threads}
    finally:
        torch.set_num_threads(before)


def test_one_stalled_batch_does_not_decide_a_trial():
    auto = Auto(candidates(), trial_batches=8, rounds=1, margin=0.03, probe_batches=0)
    for name, ms in (("sequential", 100.0), ("presample", 110.0), ("mspipe", 110.0)):
        segment, end = auto.segment(0, 8)
        stalled = (ms,) * 5 + (3000.0,) * 2 if name == "sequential" else (ms,) * 7
        auto.segment_done(segment, range(0, end), SegmentTiming(tuple(t / 1000 for t in stalled)))
    assert chosen_mode(auto) == "sequential"


QUIET = {"sequential@2": 23.0, "presample@2": 30.0, "mspipe@2": 30.0, "sequential@1": 27.0,
         "presample@1": 30.0, "mspipe@1": 30.0}
SHARED = {"sequential@2": 90.0, "presample@2": 95.0, "mspipe@2": 95.0, "sequential@1": 30.0,
          "presample@1": 40.0, "mspipe@1": 40.0}  # another job takes a core: two threads wait on each other


def test_the_kept_setting_follows_a_machine_that_becomes_shared_and_quiet_again():
    auto = Auto(candidates(), threads=(2, 1), trial_batches=4, rounds=1, watch_batches=10, slowdown=0.3, cores=2)
    for times, kept, watched_ms in ((QUIET, Setting("sequential", 2), 90.0), (SHARED, Setting("sequential", 1), 20.0),
                                    (QUIET, Setting("sequential", 2), None)):
        decided = len(auto.decisions)
        while len(auto.decisions) == decided:
            trial(auto, times)
        assert auto.chosen == kept
        if watched_ms is None:
            break
        segment, end = auto.segment(0, 100)
        assert end == 10
        auto.segment_done(segment, range(0, end), timing(1.2 * times[str(kept)], 10))  # within 30%: goes on
        segment, end = auto.segment(10, 100)
        auto.segment_done(segment, range(10, end), timing(watched_ms, 10))  # off by more: trials again


def test_auto_tries_the_runs_thread_count_and_half_of_it_unless_the_config_fixes_them():
    assert thread_options(2) == (2, 1) and thread_options(1) == (1,) and thread_options(16) == (16, 8)
    fixed = make_scheduler("auto", PipelineConfig(auto=AutoConfig(threads=(3,))))
    assert {setting.threads for setting in fixed.settings} == {3}


def test_threads_on_the_command_line_fix_the_thread_count_auto_trains_with(scripts_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(scripts_dir))
    import train as train_script

    args = train_script.parse_args(["--data", "uci", "--out", "r", "--threads", "1"])
    assert train_script.build_config(args).pipeline.auto.threads == (1,)
    assert train_script.build_config(train_script.parse_args(["--data", "uci", "--out", "r"])).pipeline.auto.threads == ()


def test_the_cores_other_processes_take_decide_which_thread_counts_are_tried():
    times = {"sequential@2": 18.0, "sequential@1": 25.0}

    def tried(other_cores: float) -> tuple[list[str], dict]:
        auto = Auto({"sequential": Sequential}, threads=(2, 1), trial_batches=4, rounds=1, cores=2)
        names = []
        while auto.chosen is None:
            names.append(trial(auto, times, other_cores=other_cores))
        return names, auto.decisions[0]

    quiet, decision = tried(0.05)  # one thread's probe first, then both threads, which each have a core
    assert quiet == ["sequential@1", "sequential@2"] and decision["setting"] == "sequential@2"
    assert decision["other_cores"] == pytest.approx(0.05)
    shared, decision = tried(1.2)  # two threads would wait on each other: not tried at all
    assert shared == ["sequential@1"] and decision["setting"] == "sequential@1"
    assert "1.20 cores busy: 2 threads would wait" in decision["not_tried"]["sequential@2"]


def test_other_cores_are_what_the_machine_was_busy_beyond_this_process():
    before = CpuClock(wall_s=10.0, process_s=5.0, machine_s=100.0)
    after = CpuClock(wall_s=12.0, process_s=8.0, machine_s=105.0)  # 5 busy core-seconds, 3 of them ours
    assert before.other_cores(after) == pytest.approx(1.0)
    assert CpuClock(10.0, 5.0, None).other_cores(after) is None
    reading = CpuClock.now()
    assert reading.machine_s is None or reading.machine_s > 0


def test_a_setting_far_slower_in_its_probe_gets_no_trial():
    def segment_lengths(times: dict[str, float]) -> tuple[list[int], Auto]:
        auto = Auto({"sequential": Sequential}, threads=(2, 1), trial_batches=8, rounds=2, probe_batches=3, cores=2)
        lengths = []
        while auto.chosen is None:
            segment, end = auto.segment(0, 100)
            lengths.append(end)
            name = next(str(setting) for setting, candidate in auto.settings.items() if candidate is segment)
            auto.segment_done(segment, range(0, end), timing(times[name], end))
        return lengths, auto

    lengths, auto = segment_lengths({"sequential@2": 146.0, "sequential@1": 24.0})
    assert lengths == [3, 3] and auto.chosen == Setting("sequential", 1)  # two probes, no trial for a lone contender
    lengths, _ = segment_lengths({"sequential@2": 25.0, "sequential@1": 24.0})
    assert lengths == [3, 3, 8, 8, 8, 8]  # close: both probed, then both tried in both rounds
