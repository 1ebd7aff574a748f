"""DyGLib's historical and inductive negative strategies, on a hand-worked stream and in evaluation."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from graph.negatives import edge_negatives
from pipeline.run.config import validate_config
from pipeline.run.trainer import train

# (src, dst, t) of a six-event stream; the last three events are scored in batches [3, 4] and [5]
SRC = np.array([0, 1, 2, 0, 1, 2])
DST = np.array([3, 4, 5, 4, 3, 5])
T = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
BATCHES = [np.array([3, 4]), np.array([5])]


def pairs(src, dst):
    return list(zip(src.tolist(), dst.tolist()))


def draw(strategy, seed=0, observed_until=3.0, batches=BATCHES):
    return pairs(*edge_negatives(strategy, SRC, DST, T, batches, observed_until=observed_until, seed=seed))


def test_historical_negatives_are_past_pairs_absent_from_the_batch_span():
    negatives = draw("historical")
    # batch [3, 4] spans t 4..5: pairs seen at t <= 4 are (0,3) (1,4) (2,5) (0,4); (0,4) and (1,3) occur in the span
    assert len(set(negatives[:2])) == 2 and set(negatives[:2]) <= {(0, 3), (1, 4), (2, 5)}
    # batch [5] spans t 6: every pair seen up to t 6 except its own (2,5)
    assert negatives[2] in {(0, 3), (1, 4), (0, 4), (1, 3)}


def test_inductive_negatives_exclude_pairs_observed_in_training():
    negatives = draw("inductive")
    # batch [3, 4]: every past pair was observed by t 3, so both are drawn at random from sources x destinations,
    # distinct, and never one of the batch's own events
    assert len(set(negatives[:2])) == 2
    assert all(src in (0, 1, 2) and dst in (3, 4, 5) for src, dst in negatives[:2])
    assert not set(negatives[:2]) & {(0, 4), (1, 3)}
    # batch [5]: the past pairs first seen after training
    assert negatives[2] in {(0, 4), (1, 3)}


def test_too_few_candidates_takes_all_of_them_after_a_random_fill():
    negatives = draw("historical", batches=[np.array([1, 2])])  # at t 2 only (0,3) and (1,4) are past pairs
    assert negatives[1] == (0, 3) and negatives[0] not in {(1, 4), (2, 5)}


def test_negatives_are_fixed_by_the_seed():
    assert draw("historical", seed=5) == draw("historical", seed=5)
    assert len({tuple(draw("historical", seed=seed)) for seed in range(8)}) > 1


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown negative strategy"):
        draw("popular")
    with pytest.raises(ConfigError, match="eval.negatives"):
        validate_config({"eval": {"negatives": ["random", "popular"]}})


def test_evaluation_reports_each_strategy_without_changing_the_random_scores(uci_events, tmp_path):
    events = replace(uci_events, src=uci_events.src[:4000], dst=uci_events.dst[:4000], t=uci_events.t[:4000])
    given = {"memory": {"dim": 16, "dim_time": 8}, "embedding": {"dim_out": 16, "dim_time": 8},
             "train": {"batch_size": 200, "epochs": 1}, "pipeline": {"mode": "sequential"}}
    runs = {}
    for strategies in (["random"], ["random", "historical", "inductive"]):
        cfg = validate_config({**given, "eval": {"batch_size": 200, "negatives": strategies}})
        out = tmp_path / "-".join(strategies)
        out.mkdir()
        runs[len(strategies)] = train(cfg, events, out, torch.device("cpu"), seed=0, show_progress=False)
    plain, all_three = runs[1], runs[3]
    assert all_three["test_ap"] == plain["test_ap"] and all_three["val_auc"] == plain["val_auc"]
    for split in ("val", "test"):
        for strategy in ("historical", "inductive"):
            for metric in ("ap", "auc", "batch_ap", "inductive_ap"):
                assert 0.0 <= all_three[f"{split}_{metric}@{strategy}"] <= 1.0
        assert f"{split}_ap@historical" not in plain
    assert all_three["test_ap@historical"] != all_three["test_ap"]
