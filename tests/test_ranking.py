"""TGB's all-destination ranking for trained models: a candidate's score is the score it would get as the
batch's negative of its event, the filtered ranks follow from those scores, and a training run reports
the ranking of its best weights."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from graph.synthetic import synthetic_events
from pipeline.stages.link_prediction import Scoring
from pipeline.run.config import validate_config
from pipeline.run.ranking import CandidateRanker, true_destinations
from pipeline.run.setup import build_setup, evaluation_stages
from pipeline.run.trainer import train

SMALL = {
    "memory": {"dim": 16, "dim_time": 8, "update_time": "batch"},
    "embedding": {"dim_out": 16, "dim_time": 8, "heads": 2, "dropout": 0.0},
    "train": {"batch_size": 50, "epochs": 1, "lr": 0.002},
    "eval": {"batch_size": 50, "ranking": "all"},
    "pipeline": {"mode": "sequential"},
}


@pytest.fixture(scope="module")
def events():
    return synthetic_events(num_nodes=30, num_events=600, seed=5)


def scored_batches(events, num_batches: int, roots_per_chunk: int, predictor: str = "mlp"):
    """Run the first test batches through the stages as sequential evaluation does, with a ranker that
    keeps each batch's scores; returns the stages, the ranker and the scores."""
    setup = build_setup(validate_config({**SMALL, "predictor": {"module": predictor}}), events,
                        torch.device("cpu"), seed=0)
    setup.model.eval()
    stages = evaluation_stages(setup, "test", setup.split.test, 0)
    ranker = CandidateRanker(stages, events, roots_per_chunk=roots_per_chunk)
    kept = []
    stages.step.on_scored = lambda i, ctx: (kept.append(ranker.scores(i, ctx)), ranker(i, ctx))
    for i in range(num_batches):
        ctx = stages.sample(i)
        stages.fetch_features(i, ctx)
        stages.fetch_memory(i, ctx, 0)
        stages.train(i, ctx)
        stages.update_memory(i, ctx)
    return setup, stages, ranker, kept


@pytest.mark.parametrize("predictor", ["mlp", "common_neighbours"])
def test_a_candidate_scores_as_the_negative_of_its_event(events, predictor):
    setup, stages, ranker, kept = scored_batches(events, num_batches=1, roots_per_chunk=120, predictor=predictor)
    pos, scores = kept[0]
    batch = stages.batches[0]
    assert scores.shape == (len(batch), len(ranker.candidates))
    np.testing.assert_allclose(pos, stages.step.pos_scores[0], rtol=1e-5, atol=1e-6)
    true_column = np.searchsorted(ranker.candidates, events.dst[batch])
    np.testing.assert_allclose(scores[np.arange(len(batch)), true_column], pos, rtol=1e-5, atol=1e-6)
    setup.store.reset()
    for column in (0, len(ranker.candidates) // 2, len(ranker.candidates) - 1):
        candidate = ranker.candidates[column]
        one = dataclasses.replace(stages, num_neg=1, step=Scoring(),
                                  negatives=lambda i, ev, c=candidate: (np.full(len(ev), c), None))
        ctx = one.sample(0)
        one.fetch_features(0, ctx)
        one.fetch_memory(0, ctx, 0)
        one.train(0, ctx)
        np.testing.assert_allclose(scores[:, column], one.step.neg_scores[0][:, 0], rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_the_ranks_and_they_match_a_brute_force_count(events):
    _, stages, small_chunks, kept = scored_batches(events, num_batches=2, roots_per_chunk=60)
    _, _, one_pass, _ = scored_batches(events, num_batches=2, roots_per_chunk=10_000)
    np.testing.assert_allclose(small_chunks.all_ranks(), one_pass.all_ranks())
    expected = []
    for (pos, scores), batch in zip(kept, stages.batches):
        excluded = true_destinations(events, events.src[batch], events.t[batch], small_chunks.candidates)
        for row in range(len(batch)):
            others = scores[row][~excluded[row]]
            expected.append(1 + np.sum(others > pos[row]) + 0.5 * np.sum(others == pos[row]))
    np.testing.assert_allclose(small_chunks.all_ranks(), expected)


@pytest.mark.parametrize("protocol", ["native", "dyglib"])
def test_training_reports_the_all_destination_ranking_of_its_best_weights(events, tmp_path, protocol):
    """The ranking replays the training events, for which DyGLib's protocol draws no negatives."""
    cfg = validate_config({**SMALL, "eval": {**SMALL["eval"], "protocol": protocol}})
    results = train(cfg, events, tmp_path, torch.device("cpu"), seed=0, show_progress=False)
    candidates = len(np.unique(events.dst))
    assert 1 / candidates <= results["test_mrr_all"] <= 1
    assert 0 <= results["test_hits@10_all"] <= 1 and results["test_ranking_s"] > 0
    assert results["test_ap_replayed"] == pytest.approx(results["test_ap"], abs=0.1)


def test_ranking_is_refused_in_a_data_parallel_run(events, tmp_path):
    two_processes = types.SimpleNamespace(size=2)
    with pytest.raises(ConfigError, match="eval.ranking"):
        train(validate_config(SMALL), events, tmp_path, torch.device("cpu"), seed=0, show_progress=False,
              world=two_processes)
