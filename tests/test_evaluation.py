"""Ranking metrics over a whole split and DyGLib's per-batch means."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline.run.evaluation import batch_mean_metrics, event_subsets, ranking_metrics, split_metrics


def test_perfect_and_inverted_scores():
    pos = np.array([3.0, 2.0, 5.0])
    assert ranking_metrics(pos, -pos[:, None]) == {"ap": 1.0, "auc": 1.0}
    assert ranking_metrics(-pos, pos[:, None])["auc"] == 0.0


def test_ap_uses_first_negative_and_matches_sklearn():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 50), rng.normal(0, 1, (50, 4))
    labels = np.r_[np.ones(50), np.zeros(50)]
    expected = average_precision_score(labels, np.r_[pos, neg[:, 0]])
    assert ranking_metrics(pos, neg)["ap"] == pytest.approx(expected)


def test_mrr_counts_negatives_scoring_at_least_the_positive():
    pos = np.array([1.0, 1.0])
    neg = np.array([[0.0, 0.5, 0.2], [2.0, 1.0, 0.0]])
    assert ranking_metrics(pos, neg)["mrr"] == pytest.approx((1 / 1 + 1 / 3) / 2)


def test_empty_split_gives_nan():
    assert np.isnan(ranking_metrics(np.array([]), np.zeros((0, 1)))["ap"])


def test_batch_means_average_each_batch_ranking():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 250), rng.normal(0, 1, (250, 3))
    batches = [slice(0, 100), slice(100, 200), slice(200, 250)]
    expected = np.mean([ranking_metrics(pos[b], neg[b, :1])["ap"] for b in batches])
    assert batch_mean_metrics(pos, neg, 100)["ap"] == pytest.approx(expected)


def test_batch_means_ignore_score_drift_between_batches():
    pos = np.array([1.0, 2.0, 11.0, 12.0])
    neg = np.array([[0.0], [0.5], [10.0], [10.5]])
    assert batch_mean_metrics(pos, neg, 2) == {"ap": 1.0, "auc": 1.0}
    assert ranking_metrics(pos, neg)["auc"] < 1.0


def test_split_metrics_score_each_subset_on_its_own_events_and_negatives():
    rng = np.random.default_rng(2)
    indices = np.arange(100, 160)
    pos, neg = rng.normal(1, 1, 60), rng.normal(0, 1, (60, 1))
    repeated = np.zeros(200, dtype=bool)
    repeated[indices[::3]] = True
    subsets = event_subsets(indices, inductive=indices[:10], repeated=repeated)
    assert subsets["repeat"].sum() == 20 and np.array_equal(subsets["new"], ~subsets["repeat"])
    metrics = split_metrics("test", pos, neg, {"random": slice(0, 1)}, 200, subsets)
    for name, mask in subsets.items():
        assert metrics[f"test_{name}_ap"] == ranking_metrics(pos[mask], neg[mask])["ap"]
    assert metrics["test_repeat_ap"] != metrics["test_new_ap"]
