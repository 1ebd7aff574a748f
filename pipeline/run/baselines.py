"""Runs of models that need no training (EdgeBank): scored on the same split, with the same negatives and
metrics as a trained model's evaluation, so they sit in the same tables. `model: edgebank` selects it."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from graph.events import EventStream, repeated_pairs
from graph.split import chronological_split
from models.edgebank import EdgeBank
from pipeline.run.config import RunConfig
from pipeline.run.evaluation import (event_subsets, negative_columns, ranking_summary, ranks_against_candidates,
                                     split_metrics, split_negatives)
from pipeline.run.ranking import true_destinations
from pipeline.run.reporting import RunLog
from pipeline.run.setup import require_every_part

BASELINES = ("edgebank",)


def edgebank_for(cfg: RunConfig, events: EventStream, train_end: float) -> EdgeBank:
    """The EdgeBank `edgebank.memory` describes: unlimited, or a window of `edgebank.window_ratio` times
    the training period's time span (TGB's fixed time window)."""
    settings = cfg.edgebank
    window = None
    if settings.memory == "window":
        window = settings.window_ratio * (train_end - float(events.t[0]))
    return EdgeBank.from_stream(events.src, events.dst, events.t, events.num_nodes, window)


def batch_starts(indices: np.ndarray, batch_size: int) -> np.ndarray:
    """For each event of a split, the index of its evaluation batch's first event: how many events the
    batch may have seen."""
    return indices[(np.arange(len(indices)) // batch_size) * batch_size]


def score_split(bank: EdgeBank, cfg: RunConfig, events: EventStream, indices: np.ndarray,
                negatives: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a split's positives and negatives; each evaluation batch sees the events before it."""
    neg_dst, neg_src = negatives
    if neg_src is None:
        neg_src = np.repeat(events.src[indices][:, None], neg_dst.shape[1], axis=1)
    seen = batch_starts(indices, cfg.eval.batch_size)
    pos = bank.scores(events.src[indices], events.dst[indices], seen)
    neg = np.stack([bank.scores(neg_src[:, c], neg_dst[:, c], seen) for c in range(neg_dst.shape[1])], axis=1)
    return pos, neg


def rank_all_destinations(bank: EdgeBank, cfg: RunConfig, events: EventStream, indices: np.ndarray,
                          chunk: int = 1000) -> np.ndarray:
    """The filtered rank of each event's destination among every destination of the stream (TGB's
    one-vs-many ranking with all destinations as candidates), scored in vectorised chunks of events."""
    candidates = np.unique(events.dst)
    seen = batch_starts(indices, cfg.eval.batch_size)
    excluded = true_destinations(events, events.src[indices], events.t[indices], candidates)
    ranks = []
    for start in range(0, len(indices), chunk):
        part, part_seen = indices[start:start + chunk], seen[start:start + chunk]
        src, dst = events.src[part], events.dst[part]
        scores = bank.scores(np.repeat(src, len(candidates)), np.tile(candidates, len(part)),
                             np.repeat(part_seen, len(candidates))).reshape(len(part), len(candidates))
        pos = bank.scores(src, dst, part_seen)
        ranks.append(ranks_against_candidates(pos, scores, excluded[start:start + chunk]))
    return np.concatenate(ranks) if ranks else np.empty(0)


def run_baseline(cfg: RunConfig, events: EventStream, out_dir: Path, seed: int) -> dict[str, Any]:
    """Score validation and test with the config's baseline; write TensorBoard scalars and results.json."""
    split = chronological_split(events, val_ratio=cfg.eval.val_ratio, test_ratio=cfg.eval.test_ratio,
                                inductive_ratio=cfg.eval.inductive_ratio, seed=seed)
    require_every_part(events, split)
    bank = edgebank_for(cfg, events, float(events.t[split.train[-1]]))
    repeated = repeated_pairs(events)
    metrics = {}
    for name, indices, inductive in (("val", split.val, split.val_inductive), ("test", split.test, split.test_inductive)):
        negatives = split_negatives(cfg, events, split, seed, name, indices)
        pos, neg = score_split(bank, cfg, events, indices, negatives)
        metrics.update(split_metrics(name, pos, neg, negative_columns(cfg), cfg.eval.batch_size,
                                     event_subsets(indices, inductive, repeated)))
        if cfg.eval.ranking == "all":
            started = time.perf_counter()
            ranks = rank_all_destinations(bank, cfg, events, indices)
            metrics.update({f"{name}_{key}_all": value for key, value in ranking_summary(ranks).items()})
            metrics[f"{name}_ranking_s"] = time.perf_counter() - started
    results = {"model": cfg.model, "dataset": events.name, "mode": "no training", "epochs": 0, "seed": seed,
               "best_epoch": -1, "train_events_per_s": math.nan, **metrics, "config": cfg.to_dict()}
    log = RunLog(out_dir)
    try:
        log.scalars(0, {f"eval/{key}": value for key, value in metrics.items()})
        log.results(results)
    finally:
        log.close()
    return results
