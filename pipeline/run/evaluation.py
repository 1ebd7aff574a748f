"""Evaluation of link prediction: the fixed negatives of each split (one set of columns per negative
strategy), and the metrics: AP and ROC-AUC (one negative per positive) and MRR (against K fixed negatives
per positive) over a whole split, and AP and AUC averaged over evaluation batches as DyGLib reports them."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from common.errors import DataError
from graph import dyglib
from graph.events import EventStream
from graph.negatives import batch_without_negatives, distinct_count, edge_negatives, eval_negatives, named_seed
from graph.split import Split, chronological_batches
from pipeline.run.config import RunConfig


def negative_columns(cfg: RunConfig) -> dict[str, slice]:
    """The columns of an evaluation split's negatives that each strategy of `eval.negatives` fills: random
    first (`max(1, eval.mrr_negatives)` destinations per event; the first one gives AP/AUC), then one column
    for each of the others, in config order."""
    columns = {"random": slice(0, max(1, cfg.eval.mrr_negatives))}
    for strategy in cfg.eval.negatives:
        if strategy not in columns:
            end = next(reversed(columns.values())).stop
            columns[strategy] = slice(end, end + 1)
    return columns


def split_negatives(cfg: RunConfig, events: EventStream, split: Split, seed: int, split_name: str,
                    indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Negative destinations `(len(indices), columns)` of an evaluation split, laid out by `negative_columns`,
    and their sources (None when random is the only strategy: each negative keeps its event's source).

    Fixed by the run's seed, the split and the strategy, so every model and run ranks against the same
    negatives; the historical and inductive ones follow DyGLib over the global evaluation batches. Under
    `eval.protocol: dyglib` they are DyGLib's own draws (graph/dyglib.py), whatever the seed; DyGLib draws
    none for the training events, so a replay of them (which rebuilds the memory from the positives and
    discards the scores) gets the native draws."""
    columns = negative_columns(cfg)
    batches = chronological_batches(indices, cfg.eval.batch_size)
    if cfg.eval.protocol == "dyglib" and split_name in dyglib.SPLIT_SEEDS:
        drawn = [dyglib.split_negatives(events, split, strategy, batches, split_name) for strategy in columns]
        return np.stack([dst for _, dst in drawn], axis=1), np.stack([src for src, _ in drawn], axis=1)
    random = columns["random"]
    dst = [eval_negatives(np.unique(events.dst), len(indices), random.stop, split_name, seed)]
    src = [np.repeat(events.src[indices][:, None], random.stop, axis=1)]
    for strategy in list(columns)[1:]:
        neg_src, neg_dst = edge_negatives(strategy, events.src, events.dst, events.t, batches,
                                          observed_until=events.t[split.train[-1]],
                                          seed=named_seed(seed, split_name, strategy))
        src.append(neg_src[:, None])
        dst.append(neg_dst[:, None])
    return np.hstack(dst), np.hstack(src) if len(columns) > 1 else None


def require_negative_pairs(cfg: RunConfig, events: EventStream, splits: dict[str, np.ndarray]) -> None:
    """DyGLib's historical and inductive negatives (`eval.negatives`) need, in every evaluation batch of the
    `splits` (name: event indices), a (source, destination) pair that is not one of the batch's own events
    (`batch_without_negatives`). DyGLib's sampler has no fallback for a stream too small for that (it asserts),
    so neither has this one: it is a data error naming the file and the strategies, raised before training."""
    strategies = [strategy for strategy in cfg.eval.negatives if strategy != "random"]
    if not strategies:
        return
    for name, indices in splits.items():
        batches = chronological_batches(indices, cfg.eval.batch_size)
        batch = batch_without_negatives(events.src, events.dst, events.num_nodes, batches)
        if batch is not None:
            sources, destinations = (distinct_count(ids, events.num_nodes) for ids in (events.src, events.dst))
            raise DataError(
                f"{events.origin}: {' and '.join(strategies)} negatives (eval.negatives) need a (source, destination) "
                f"pair that is not one of an evaluation batch's events, but the stream's {_count(sources, 'source')} "
                f"and {_count(destinations, 'destination')} make {_count(sources * destinations, 'pair')}, all among "
                f"the events of {name} batch {batch + 1} (DyGLib's sampler has no fallback either); evaluate with "
                f"eval.negatives: [random], or use a stream with more distinct nodes")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


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
    per_batch = [ranking_metrics(pos[rows], neg[rows, :1])
                 for rows in chronological_batches(np.arange(len(pos)), batch_size)]
    return {key: float(np.mean([metrics[key] for metrics in per_batch])) for key in ("ap", "auc")}


def split_metrics(name: str, pos: np.ndarray, neg: np.ndarray, columns: dict[str, slice], batch_size: int,
                  subsets: dict[str, np.ndarray]) -> dict[str, float]:
    """Every metric of a split's scores, for each negative strategy's columns of `neg`: over the whole split
    (`test_ap`), as DyGLib's batch means (`test_batch_ap`) and on each masked subset of its events
    (`subsets["inductive"]` gives `test_inductive_ap`). Random negatives give the plain names; the other
    strategies' names end in `@strategy`."""
    metrics = {}
    for strategy, where in columns.items():
        suffix = "" if strategy == "random" else f"@{strategy}"
        scored = neg[:, where]
        metrics.update({f"{name}_{key}{suffix}": value for key, value in ranking_metrics(pos, scored).items()})
        metrics.update({f"{name}_batch_{key}{suffix}": value
                        for key, value in batch_mean_metrics(pos, scored, batch_size).items()})
        for subset, mask in subsets.items():
            metrics.update({f"{name}_{subset}_{key}{suffix}": value
                            for key, value in ranking_metrics(pos[mask], scored[mask]).items()})
    return metrics


def event_subsets(indices: np.ndarray, inductive: np.ndarray, repeated: np.ndarray) -> dict[str, np.ndarray]:
    """Masks over a split's events (`indices`): `inductive` (an endpoint held out of training), `repeat`
    (its endpoints interacted before, per the stream-wide `repeated` mask) and `new` (they had not)."""
    repeat = repeated[indices]
    return {"inductive": np.isin(indices, inductive), "repeat": repeat, "new": ~repeat}


def ranks_against_candidates(pos: np.ndarray, candidates: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """The rank of each positive among its candidates' scores, TGB's way: ties count as the mean of the
    optimistic and the pessimistic rank. `pos` (n,), `candidates` and `excluded` (n, C): excluded
    candidates (the true destination itself, and other true destinations of the same source at the same
    time: the filtered setting) are not ranked against."""
    counted = ~excluded
    above = ((candidates > pos[:, None]) & counted).sum(axis=1)
    tied = ((candidates == pos[:, None]) & counted).sum(axis=1)
    return 1.0 + above + 0.5 * tied


def ranking_summary(ranks: np.ndarray) -> dict[str, float]:
    """MRR and Hits@10 of positives' ranks."""
    if len(ranks) == 0:
        return {"mrr": float("nan"), "hits@10": float("nan")}
    return {"mrr": float(np.mean(1.0 / ranks)), "hits@10": float(np.mean(ranks <= 10))}
