"""TGB's all-destination ranking for trained models: a candidate's score is the score it would get as the
batch's negative of its event, the filtered ranks follow from those scores, and a training run reports
the ranking of its best weights."""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from graph.synthetic import synthetic_events
from memory.batch import MemoryUpdate
from models.pair_history import history_contributions
from models.time_encoding import TimeEncoding
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


@pytest.mark.parametrize("predictor", ["mlp", "common_neighbours", "pair_history", "pair_walks"])
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


def filled_store(setup, events, first_test_time: float) -> None:
    """Write random memories and mails into every row (version 0), stamped before the test split, so the
    updater has work and every node's state differs; a model of pair history gets the history of the events
    before the test split."""
    gen = torch.Generator().manual_seed(1)
    nodes = torch.arange(events.num_nodes)
    stamps = torch.rand(events.num_nodes, generator=gen, dtype=torch.float64) * first_test_time
    history = {}
    if setup.model.history_dim:
        before = events.t < first_test_time
        history = dict(zip(("history_nodes", "history", "history_ts"), history_contributions(
            *(torch.from_numpy(column[before]) for column in (events.src, events.dst, events.t)),
            setup.model.history_dim // 2)))
    setup.store.update(0, MemoryUpdate(
        nodes=nodes, mem=torch.randn(events.num_nodes, setup.model.dim_memory, generator=gen), mem_ts=stamps,
        mail_nodes=nodes, mail=torch.randn(events.num_nodes, setup.model.dim_mail, generator=gen), mail_ts=stamps,
        **history))


def both_paths(events, settings: dict, roots_per_chunk: int = 120):
    """Every test batch scored as evaluation does, each ranked by the factorised and by the chunked path
    before its memory is written; returns the two rankers and each batch's two pairs of scores."""
    setup = build_setup(validate_config({**SMALL, **settings}), events, torch.device("cpu"), seed=0)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # weights far from their initial values, as after training (frequencies kept: the
        for name, parameter in setup.model.named_parameters():  # chunked path's float32 angles round w * gap)
            if not name.endswith("log_frequency"):
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=gen))
    version = 0
    if setup.store is not None:
        filled_store(setup, events, float(events.t[setup.split.test].min()))
        version = 1
    stages = evaluation_stages(setup, "test", setup.split.test, version)
    factorised = CandidateRanker(stages, events, roots_per_chunk=roots_per_chunk)
    chunked = CandidateRanker(stages, events, roots_per_chunk=roots_per_chunk, factorise=False)
    kept = []

    def rank_both(i, ctx):
        kept.append((factorised.scores(i, ctx), chunked.scores(i, ctx)))
        factorised(i, ctx)
        chunked(i, ctx)

    stages.step.on_scored = rank_both
    for i in range(len(stages.batches)):
        ctx = stages.sample(i)
        stages.fetch_features(i, ctx)
        stages.fetch_memory(i, ctx, 0)
        stages.train(i, ctx)
        stages.update_memory(i, ctx)
    return factorised, chunked, kept


@pytest.fixture(scope="module")
def featured_events():
    """Gaps of about 0.3 time units: the chunked path rounds each angle `w * gap` to float32, an error that
    grows with the gap (at gaps of about 10 the two paths differ by up to 1e-3, at 0.3 by 3e-5)."""
    events = synthetic_events(num_nodes=40, num_events=900, dim_edge_feat=4, dim_node_feat=3, seed=7)
    return dataclasses.replace(events, t=events.t * 0.03)


@pytest.mark.parametrize("settings", [
    {"predictor": {"module": "mlp"}},
    {"predictor": {"module": "common_neighbours"}},
    {"predictor": {"module": "common_neighbours"}, "memory": None, "embedding": {**SMALL["embedding"], "layers": 1}},
    {"memory": {**SMALL["memory"], "updater": "transformer", "mailbox_size": 3}},
    {"predictor": {"module": "pair_history", "history_dim": 8, "half_lives": [math.inf, 30.0]}},
], ids=["tgn", "tgn_cn", "no_memory_cn", "mailbox_transformer", "tgn_pair_history"])
def test_the_factorised_path_scores_and_ranks_as_the_chunked_path(featured_events, settings):
    """Memory, mails, edge and node features all enter the states; candidates with an edge inside the
    batch (their neighbourhood changes between its events) are among the cells compared."""
    events = featured_events
    factorised, chunked, kept = both_paths(events, settings)
    assert (factorised.path, chunked.path) == ("factorised", "chunked")
    moved = 0
    for (fast_pos, fast), (pos, scores) in kept:
        np.testing.assert_allclose(fast_pos, pos, rtol=0, atol=1e-4)
        np.testing.assert_allclose(fast, scores, rtol=0, atol=1e-4)
    for i, batch in enumerate(factorised.stages.batches):
        t = events.t[batch]
        moved += len(factorised.factorised._moved_cells(t, t.min())[0])
    assert moved > 0
    fast_ranks, ranks = factorised.all_ranks(), chunked.all_ranks()
    near_ties = np.concatenate([(np.abs(s - p[:, None]) < 1e-4).sum(1) - 1 for _, (p, s) in kept])
    assert np.all(np.abs(fast_ranks - ranks) <= np.maximum(near_ties, 0) / 2)
    assert np.mean(fast_ranks == ranks) > 0.9


def test_the_factorised_path_does_not_depend_on_the_chunk_size(featured_events):
    settings = {"predictor": {"module": "common_neighbours"}}
    small, _, kept_small = both_paths(featured_events, settings, roots_per_chunk=7)
    large, _, kept_large = both_paths(featured_events, settings, roots_per_chunk=100_000)
    for (a, _), (b, _) in zip(kept_small, kept_large):
        np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(small.all_ranks(), large.all_ranks())


@pytest.mark.parametrize("settings, reason", [
    ({"memory": {**SMALL["memory"], "update_time": "query"}}, "update_time"),
    ({"embedding": {**SMALL["embedding"], "layers": 2}, "sampler": {"fanouts": [4, 4]}}, "temporal attention"),
    ({"embedding": {"module": "jodie"}, "memory": {**SMALL["memory"], "updater": "rnn"}}, "temporal attention"),
    ({"sampler": {"strategy": "uniform"}}, "most recent"),
    ({"embedding": {**SMALL["embedding"], "query_time": "batch"}}, "query_time"),
    ({"predictor": {"module": "pair_walks"}}, "neighbours' pair histories"),
], ids=["update_time_query", "two_layers", "jodie", "uniform_sampler", "query_time_batch", "pair_walks"])
def test_the_chunked_path_is_kept_where_the_factorisation_does_not_hold(events, settings, reason):
    setup = build_setup(validate_config({**SMALL, **settings}), events, torch.device("cpu"), seed=0)
    stages = evaluation_stages(setup, "test", setup.split.test, 0)
    ranker = CandidateRanker(stages, events)
    assert ranker.path == "chunked" and reason in ranker.refusal
    ctx = stages.sample(0)
    stages.fetch_features(0, ctx)
    stages.fetch_memory(0, ctx, 0)
    stages.train(0, ctx)
    pos, scores = ranker.scores(0, ctx)
    np.testing.assert_allclose(pos, stages.step.pos_scores[0], rtol=1e-5, atol=1e-6)


def test_on_long_gaps_the_paths_differ_only_by_the_chunked_paths_float32_angles(featured_events, monkeypatch):
    """At gaps of about 1e4 the chunked path's float32 angles `w * gap` are off by up to about 1e-3 rad;
    with every time encoding's angle in float64 the two paths agree again. (Whole-second times, as
    Wikipedia's: the chunked path also rounds each gap to float32, exact for whole numbers below 2^24.)"""
    def float64_angles(self, dt):
        return torch.cos(dt.double().unsqueeze(-1) * self.frequency.double() + self.phase.double()).float()

    monkeypatch.setattr(TimeEncoding, "forward", float64_angles)
    events = dataclasses.replace(featured_events, t=np.round(featured_events.t * 3e4))
    factorised, chunked, kept = both_paths(events, {"predictor": {"module": "common_neighbours"}})
    for (fast_pos, fast), (pos, scores) in kept:
        np.testing.assert_allclose(fast_pos, pos, rtol=0, atol=1e-4)
        np.testing.assert_allclose(fast, scores, rtol=0, atol=1e-4)
    np.testing.assert_allclose(factorised.all_ranks(), chunked.all_ranks())


def test_the_ranking_benchmark_ranks_a_stored_run_as_its_evaluation_does(events, tmp_path):
    """`benchmark.py ranking --runs` replays training and validation with the checkpoint's best weights, so
    its factorised path gives the MRR the run reported, and the chunked path the same ranks to rounding."""
    from benchmarks.ranking import rank_batches, trained_test_stages

    cfg = validate_config({**SMALL, "train": {**SMALL["train"], "epochs": 2}})
    results = train(cfg, events, tmp_path, torch.device("cpu"), seed=0, show_progress=False)
    stages = trained_test_stages(str(tmp_path), events)
    rows = rank_batches("run", stages, events, batches=1000)
    ranked = sum(row["events"] for row in rows)
    assert ranked == sum(len(batch) for batch in stages.batches) > 0
    mrr = {path: sum(row[f"mrr_{path}"] * row["events"] for row in rows) / ranked for path in ("chunked", "factorised")}
    assert mrr["factorised"] == pytest.approx(results["test_mrr_all"], abs=1e-9)
    assert mrr["chunked"] == pytest.approx(mrr["factorised"], abs=1e-3)
    assert all(row["max_score_diff"] < 1e-4 for row in rows)
