"""The pure parts of scheduling: the minimal staleness formula, the stage-time profiler, the delayed
fetch start, the schedulers' parameters and `make_scheduler`."""
from __future__ import annotations

import math

import pytest

from common.errors import UserError
from pipeline.engine.config import PipelineConfig
from pipeline.engine.schedulers import (
    FixedK, MSPipe, Presample, Sequential, delayed_fetch_start, make_scheduler,
)
from pipeline.engine.profiler import STAGES, StageProfiler, minimal_staleness


def taus(sample=0.0, fetch_features=0.0, fetch_memory=0.0, train=0.0, update_memory=0.0) -> dict[str, float]:
    return {"sample": sample, "fetch_features": fetch_features, "fetch_memory": fetch_memory, "train": train,
            "update_memory": update_memory}


@pytest.mark.parametrize("times, k_max, expected", [
    # train-bound: P = train = 10, (2 + 10 + 2) / 10 = 1.4
    (taus(1, 1, 2, 10, 2), 8, 2),
    # train-bound with slow memory stages: (8 + 10 + 9) / 10 = 2.7
    (taus(1, 1, 8, 10, 9), 8, 3),
    # fetch-bound: feature + memory fetch share the path, P = 12, (6 + 4 + 1) / 12 < 1
    (taus(1, 6, 6, 4, 1), 8, 1),
    # fetch-bound, but memory stages still exceed one period: P = 7, (5 + 6 + 6) / 7 = 2.4
    (taus(1, 2, 5, 6, 6), 8, 3),
    # sampling-bound, tiny other stages: everything else hides behind sampling
    (taus(10, 0.1, 0.1, 0.1, 0.1), 8, 1),
    # update-bound: P = 5, (1 + 2 + 5) / 5 = 1.6
    (taus(1, 1, 1, 2, 5), 8, 2),
    # clamped to k_max: (5 + 5 + 5) / 5 = 3
    (taus(1, 0, 5, 5, 5), 2, 2),
    # exact multiple despite float rounding: (0.01 + 0.02 + 0.01) / 0.02 = 2
    (taus(0.001, 0.001, 0.01, 0.02, 0.01), 8, 2),
    # nothing measured yet
    (taus(), 8, 1),
])
def test_minimal_staleness_matches_hand_computed_cases(times, k_max, expected):
    assert minimal_staleness(times, k_max) == expected


def test_minimal_staleness_is_the_formula_on_a_grid():
    for fm in (1, 3, 7):
        for train in (2, 5, 11):
            for update in (1, 4):
                for ff in (1, 6):
                    times = taus(2, ff, fm, train, update)
                    period = max(2, ff + fm, train, update)
                    expected = min(max(math.ceil((fm + train + update) / period), 1), 8)
                    assert minimal_staleness(times, 8) == expected


def test_profiler_keeps_an_exponential_moving_average_per_stage():
    profiler = StageProfiler(alpha=0.25)
    assert profiler.means() == dict.fromkeys(STAGES, 0.0) and profiler.observations() == 0
    profiler.record("train", 0.4)
    assert profiler.tau("train") == pytest.approx(0.4)
    profiler.record("train", 0.8)
    assert profiler.tau("train") == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert profiler.tau("sample") == 0.0
    assert profiler.observations() == 0
    for stage in STAGES:
        profiler.record(stage, 0.1)
    assert profiler.observations() == 1


def test_profiler_bound_uses_its_current_times():
    profiler = StageProfiler()
    times = taus(0.001, 0.001, 0.008, 0.010, 0.009)
    for stage, seconds in times.items():
        profiler.record(stage, seconds)
    assert profiler.k_min(8) == minimal_staleness(times, 8) == 3
    assert profiler.k_min(2) == 2


def test_profiler_rejects_an_invalid_smoothing_factor():
    with pytest.raises(ValueError):
        StageProfiler(alpha=0.0)


def test_delayed_fetch_start_aims_at_the_end_of_the_previous_training():
    tau_train, tau_fetch = 0.030, 0.005
    assert delayed_fetch_start(1.0, 0.9, 0.95, tau_train, tau_fetch) == pytest.approx(0.945)
    assert delayed_fetch_start(1.0, 0.99, None, tau_train, tau_fetch) == pytest.approx(1.015)
    assert delayed_fetch_start(1.0, None, None, tau_train, tau_fetch) == pytest.approx(1.025)
    # a memory fetch slower than training is due before the previous training could even end
    assert delayed_fetch_start(1.0, None, None, 0.002, 0.010) < 1.0


def test_schedulers_differ_only_in_their_parameters():
    profiler = StageProfiler()
    assert Sequential().sequential_batches(17, profiler) == 17
    assert Sequential().max_in_flight == 1
    assert Presample(depth=3).max_in_flight == 4
    assert Presample().staleness_bound(9, profiler) == 1
    assert FixedK(4).staleness_bound(9, profiler) == 4 and FixedK(4).max_in_flight == 6
    assert FixedK(4).sequential_batches(17, profiler) == 0
    assert MSPipe(k_max=5).max_in_flight == 7
    assert FixedK(4).memory_fetch_start(2.0, None, None, profiler) == 2.0
    with pytest.raises(ValueError):
        FixedK(0)


def test_mspipe_warms_up_only_until_every_stage_is_measured():
    profiler = StageProfiler()
    scheduler = MSPipe(warmup_batches=5)
    assert scheduler.sequential_batches(100, profiler) == 5
    assert scheduler.sequential_batches(3, profiler) == 3
    for _ in range(2):
        for stage in STAGES:
            profiler.record(stage, 0.01)
    assert scheduler.sequential_batches(100, profiler) == 3
    profiler.record("train", 0.01)
    assert scheduler.sequential_batches(100, profiler) == 3


def test_mspipe_delays_the_fetch_only_when_asked():
    profiler = StageProfiler()
    profiler.record("train", 0.030)
    profiler.record("fetch_memory", 0.005)
    assert MSPipe().memory_fetch_start(1.0, 0.99, None, profiler) == pytest.approx(1.015)
    assert MSPipe(delayed_fetch=False).memory_fetch_start(1.0, 0.99, None, profiler) == 1.0


def test_make_scheduler_reads_the_pipeline_config():
    cfg = PipelineConfig(mode="x", k=3, k_max=6, warmup_batches=2, delayed_fetch=False)
    assert isinstance(make_scheduler("sequential"), Sequential)
    assert isinstance(make_scheduler("presample", cfg), Presample)
    assert make_scheduler("fixed-k", cfg).k == 3
    mspipe = make_scheduler("mspipe", cfg)
    assert (mspipe.k_max, mspipe.warmup_batches, mspipe.delayed_fetch) == (6, 2, False)
    default = make_scheduler("mspipe")
    assert (default.k_max, default.warmup_batches, default.delayed_fetch) == (8, 5, True)
    with pytest.raises(UserError, match="pipeline.mode"):
        make_scheduler("async")
