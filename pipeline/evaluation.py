"""Link-prediction metrics over a whole split: AP and ROC-AUC (one negative per positive) and MRR
(against K fixed negatives per positive)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def ranking_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """AP and AUC of positives against the first negative of each; MRR when there are several.

    `pos` is (n,), `neg` is (n, k) scores of the same rows' negatives.
    """
    if len(pos) == 0:
        return {"ap": float("nan"), "auc": float("nan")}
    first_neg = neg[:, 0]
    scores = np.concatenate([pos, first_neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(first_neg))])
    metrics = {
        "ap": float(average_precision_score(labels, scores)),
        "auc": float(roc_auc_score(labels, scores)),
    }
    if neg.shape[1] > 1:
        rank = 1 + (neg >= pos[:, None]).sum(axis=1)
        metrics["mrr"] = float(np.mean(1.0 / rank))
    return metrics
