"""EdgeBank: which pairs it remembers on a tiny stream, its runs through train() like any model, and TGB's
filtered one-vs-all ranking (against a brute-force reference, ties included)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from graph.events import EventStream
from models.edgebank import EdgeBank
from models.edgebank import scores as edgebank_scores
from pipeline.run.baselines import batch_memories, rank_all_destinations
from pipeline.run.ranking import true_destinations
from pipeline.run.config import validate_config
from pipeline.run.evaluation import ranking_summary, ranks_against_candidates
from pipeline.run.trainer import train

# directed events 0->1 (t 1), 1->2 (t 2), 0->1 (t 3), 2->0 (t 10)
SRC, DST, T = np.array([0, 1, 0, 2]), np.array([1, 2, 1, 0]), np.array([1.0, 2.0, 3.0, 10.0])


def remembered_after(bank: EdgeBank, count: int) -> set[tuple[int, int]]:
    """The pairs `bank` remembers after the first `count` events of the tiny stream."""
    keys = bank.remembered(SRC[:count], DST[:count], T[:count], num_nodes=3)
    return {(int(key) // 3, int(key) % 3) for key in keys}


def test_unlimited_memory_remembers_every_earlier_pair_in_its_direction():
    bank = EdgeBank()
    assert remembered_after(bank, 0) == set()
    assert remembered_after(bank, 1) == {(0, 1)}
    assert remembered_after(bank, 4) == {(0, 1), (1, 2), (2, 0)}
    memory = bank.remembered(SRC, DST, T, num_nodes=3)
    np.testing.assert_array_equal(edgebank_scores(memory, np.array([0, 1, 2]), np.array([1, 0, 0]), 3), [1, 0, 1])


def test_time_window_forgets_pairs_older_than_the_window_before_the_latest_event():
    bank = EdgeBank(memory="window", window=5.0)
    # after all 4 events the latest is t 10: 0->1 (last at t 3) and 1->2 are forgotten, 2->0 (t 10) is remembered
    assert remembered_after(bank, 4) == {(2, 0)}
    # after 3 events the latest is t 3: everything is within the window
    assert remembered_after(bank, 3) == {(0, 1), (1, 2)}


def test_dyglib_memories_match_their_definitions():
    # times 1, 2, 3, 10: the 1 - 0.5 quantile is 2.5, so `proportion` keeps the events at t 3 and t 10
    assert remembered_after(EdgeBank(memory="proportion", proportion=0.5), 4) == {(0, 1), (2, 0)}
    # 0->1 repeats after 2 s, the others are seen once: the mean repeat interval is 2 / 3 pairs, and only the
    # pair seen within it before t 10 is kept
    assert remembered_after(EdgeBank(memory="repeat_interval"), 4) == {(2, 0)}
    # counts 2, 1, 1: the mean is 4 / 3, so only 0->1 is seen at least that often
    assert remembered_after(EdgeBank(memory="repeat_threshold"), 4) == {(0, 1)}


def test_edgebank_runs_through_train_and_reports_every_strategy(uci_events, tmp_path):
    cfg = validate_config({"model": "edgebank", "edgebank": {"memory": "window"},
                           "eval": {"batch_size": 200, "negatives": ["random", "historical", "inductive"]}})
    results = train(cfg, uci_events, tmp_path, torch.device("cpu"), seed=0, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == "edgebank" and saved["epochs"] == 0 and math.isnan(results["train_events_per_s"])
    for key in ("val_ap", "test_ap", "test_auc", "test_batch_ap", "test_inductive_ap", "test_ap@historical",
                "test_ap@inductive"):
        assert 0.0 <= saved[key] <= 1.0
    # UCI's messages recur: remembering pairs ranks positives above random negatives
    assert saved["test_ap"] > 0.6
    # a pair it has never seen scores 0, so on new pairs no positive ranks above its negative
    assert saved["test_new_auc"] <= 0.5 < saved["test_ap"] < saved["test_repeat_ap"]
    assert not (tmp_path / "checkpoint.pt").exists()


def brute_force_rank(pos: float, candidates: list[float]) -> float:
    """TGB's rank, one candidate at a time: 1 + those above + half of those tied."""
    rank = 1.0
    for score in candidates:
        rank += 1.0 if score > pos else 0.5 if score == pos else 0.0
    return rank


def test_ranks_match_a_brute_force_reference_with_ties_and_filtering():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 4, 50).astype(float)
    candidates = rng.integers(0, 4, (50, 12)).astype(float)  # few distinct scores: many ties
    excluded = rng.random((50, 12)) < 0.2
    expected = [brute_force_rank(pos[i], [c for c, out in zip(candidates[i], excluded[i]) if not out])
                for i in range(50)]
    ranks = ranks_against_candidates(pos, candidates, excluded)
    np.testing.assert_allclose(ranks, expected)
    summary = ranking_summary(ranks)
    assert summary["mrr"] == pytest.approx(np.mean(1 / np.array(expected)))
    assert summary["hits@10"] == pytest.approx(np.mean(np.array(expected) <= 10))


def test_filtered_ranking_leaves_out_other_true_destinations_at_the_same_time():
    # node 0 sends to 3 and 4 at t 5; ranking 0->3 at t 5 must not count 4 against it
    stream = EventStream(name="tiny", src=np.array([0, 1, 0, 0, 2]), dst=np.array([3, 4, 3, 4, 5]),
                         t=np.array([1.0, 2.0, 5.0, 5.0, 6.0]), num_nodes=6, node_ids=np.arange(6))
    candidates = np.unique(stream.dst)  # 3, 4, 5
    mask = true_destinations(stream, np.array([0, 2]), np.array([5.0, 6.0]), candidates)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    cfg = validate_config({"model": "edgebank", "eval": {"batch_size": 1, "ranking": "all"}})
    known, indices = np.ones(stream.num_events, dtype=bool), np.array([2, 4])
    # event 2 (0->3 at t 5) was seen before (t 1): score 1, candidates 4 (filtered) and 5 (score 0) -> rank 1;
    # event 4 (2->5) is new: score 0, tied with 3 and 4 (never sent by 2) -> rank 1 + 0.5 * 2 = 2
    batches = batch_memories(EdgeBank(), cfg, stream, known, indices)
    np.testing.assert_allclose(rank_all_destinations(batches, stream, indices), [1.0, 2.0])
