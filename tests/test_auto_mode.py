"""`pipeline.mode: auto`: it tries the candidate modes on the running job and keeps the fastest, re-checks
now and then, and every batch still runs exactly once, in order, under the rules of the mode of its
segment. Driven by sleeping fake stages (tests/test_runner.py), one of them slowed by contention."""
from __future__ import annotations

import threading
import time

import pytest

from pipeline.engine.config import AutoConfig, PipelineConfig
from pipeline.engine.runner import STAGES, run_batches
from pipeline.engine.schedulers import Auto, MSPipe, Presample, Sequential, make_scheduler
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
        return max(candidate.max_in_flight for candidate in self.auto.candidates.values())


def candidates() -> dict:
    return {"sequential": Sequential(), "presample": Presample(), "mspipe": MSPipe()}


def test_auto_keeps_a_pipelined_mode_where_pipelining_pays():
    auto, reported = Auto(candidates(), trial_batches=4, rounds=1, recheck_every=100), []
    stats = run_batches(30, SleepStages(DURATIONS), auto, on_batch_done=reported.append)
    assert auto.chosen in ("presample", "mspipe")
    assert len(auto.decisions) == 1 and auto.decisions[0]["mode"] == auto.chosen
    assert set(auto.decisions[0]["ms_per_batch"]) == {"sequential", "presample", "mspipe"}
    assert auto.decisions[0]["ms_per_batch"]["sequential"] > auto.decisions[0]["ms_per_batch"][auto.chosen]
    assert reported == list(range(30))
    assert_schedule_rules(stats, Widest(auto), 30)


def test_auto_keeps_sequential_where_the_stages_compete_with_training():
    auto = Auto(candidates(), trial_batches=4, rounds=2, recheck_every=100)
    stages = ContendedStages(DURATIONS, slowdown=3.0)
    stats = run_batches(40, stages, auto)
    assert auto.chosen == "sequential"
    assert set(stages.calls.values()) == {1} and len(stages.calls) == len(STAGES) * 40
    assert stats.k[-10:] == [1] * 10 and stats.staleness[-10:] == [0] * 10


def test_auto_measures_again_after_recheck_every_batches():
    auto = Auto({"sequential": Sequential(), "presample": Presample()}, trial_batches=3, rounds=1, recheck_every=10)
    run_batches(40, SleepStages({stage: 1 * MS for stage in STAGES}), auto)
    assert len(auto.decisions) >= 2
    assert [d["batch"] for d in auto.decisions][:2] == [6, 22]  # 6 trial batches, 10 chosen, 6 trial batches


def test_a_trial_cut_short_by_the_end_of_an_epoch_goes_on_in_the_next():
    auto = Auto({"sequential": Sequential(), "presample": Presample()}, trial_batches=3, rounds=1, recheck_every=50)
    run_batches(4, SleepStages(DURATIONS), auto)  # sequential's trial, then presample's first batch only
    assert auto.chosen is None
    run_batches(10, SleepStages(DURATIONS), auto)
    assert auto.chosen is not None and set(auto.decisions[0]["ms_per_batch"]) == {"sequential", "presample"}


def choose(auto: Auto, ms_per_batch: dict[str, float]) -> str:
    """Feed `auto` one trial per candidate with the given times per batch; the mode it keeps."""
    for _ in auto.candidates:
        segment, end = auto.segment(0, auto.trial_batches)
        name = next(name for name, candidate in auto.candidates.items() if candidate is segment)
        auto.segment_done(segment, range(0, end), ms_per_batch[name] / 1000)
    return auto.chosen


def test_auto_keeps_the_first_candidate_unless_another_beats_it_by_the_margin():
    def fresh() -> Auto:
        return Auto(candidates(), trial_batches=4, rounds=1, margin=0.05)

    assert choose(fresh(), {"sequential": 100.0, "presample": 96.0, "mspipe": 97.0}) == "sequential"
    assert choose(fresh(), {"sequential": 100.0, "presample": 96.0, "mspipe": 94.0}) == "mspipe"
    assert choose(fresh(), {"sequential": 100.0, "presample": 90.0, "mspipe": 94.0}) == "presample"
    no_margin = Auto(candidates(), trial_batches=4, rounds=1, margin=0.0)
    assert choose(no_margin, {"sequential": 100.0, "presample": 99.0, "mspipe": 101.0}) == "presample"


def test_a_clear_loser_of_the_first_round_runs_no_more_trials():
    auto = Auto(candidates(), trial_batches=4, rounds=3, drop=0.1)
    times = {"sequential": 100.0, "presample": 105.0, "mspipe": 130.0}
    tried = []
    while auto.chosen is None:
        segment, end = auto.segment(0, auto.trial_batches)
        name = next(name for name, candidate in auto.candidates.items() if candidate is segment)
        tried.append(name)
        auto.segment_done(segment, range(0, end), times[name] / 1000)
    assert tried == ["sequential", "presample", "mspipe"] + ["sequential", "presample"] * 2
    assert auto.chosen == "sequential" and auto.decisions[0]["ms_per_batch"]["mspipe"] == pytest.approx(130.0)


def test_auto_is_the_default_mode_and_reads_its_config():
    assert PipelineConfig().mode == "auto"
    auto = make_scheduler("auto", PipelineConfig(auto=AutoConfig(candidates=("sequential", "mspipe"), trial_batches=5,
                                                                 rounds=3, recheck_every=77, margin=0.1,
                                                                 drop=0.2)))
    assert isinstance(auto, Auto) and list(auto.candidates) == ["sequential", "mspipe"]
    assert (auto.trial_batches, auto.rounds, auto.recheck_every, auto.margin, auto.drop) == (5, 3, 77, 0.1, 0.2)
    assert isinstance(auto.candidates["mspipe"], MSPipe)


def test_auto_refuses_a_trial_too_short_to_time():
    with pytest.raises(ValueError, match="trial_batches"):
        Auto(candidates(), trial_batches=1)
    with pytest.raises(ValueError, match="margin"):
        Auto(candidates(), margin=1.0)
