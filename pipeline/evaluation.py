"""Link-prediction metrics: AP and ROC-AUC (one negative per positive) and MRR (against K fixed negatives
per positive) over a whole split, and AP and AUC averaged over evaluation batches as DyGLib reports them."""
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


def batch_mean_metrics(pos: np.ndarray, neg: np.ndarray, batch_size: int) -> dict[str, float]:
    """AP and AUC of each run of `batch_size` consecutive events, averaged over the runs.

    This is DyGLib's protocol, behind the published numbers of TGN, JODIE, APAN and others. A batch's
    ranking ignores how scores drift across the split, so it reads higher than the whole-split metrics
    wherever a model's scores shift with time; report it for comparisons, select and judge on the whole split.
    """
    if len(pos) == 0:
        return {"ap": float("nan"), "auc": float("nan")}
    per_batch = [ranking_metrics(pos[start:start + batch_size], neg[start:start + batch_size, :1])
                 for start in range(0, len(pos), batch_size)]
    return {key: float(np.mean([metrics[key] for metrics in per_batch])) for key in ("ap", "auc")}
