"""Runs of models that need no training (EdgeBank): scored on the same split, with the same negatives and
metrics as a trained model's evaluation, so they sit in the same tables. `model: edgebank` selects it."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from graph.events import EventStream, repeated_pairs
from graph.split import Split, chronological_batches
from models.edgebank import EdgeBank
from models.edgebank import scores as edgebank_scores
from pipeline.run.config import RunConfig
from pipeline.run.evaluation import (event_subsets, negative_columns, ranking_summary, ranks_against_candidates,
                                     require_negative_pairs, split_metrics, split_negatives)
from pipeline.run.ranking import true_destinations
from pipeline.run.reporting import RunLog
from pipeline.run.setup import require_every_part, run_split
from pipeline.run.tgb import RankingNegatives, ranking_negatives

BASELINES = ("edgebank",)


def edgebank_for(cfg: RunConfig, events: EventStream, train_end: float) -> EdgeBank:
    """The EdgeBank `edgebank` describes; `window` spans `window_ratio` of the training period (TGB's window)."""
    settings = cfg.edgebank
    return EdgeBank(memory=settings.memory, window=settings.window_ratio * (train_end - float(events.t[0])),
                    proportion=settings.window_ratio)


def known_events(cfg: RunConfig, events: EventStream, split: Split) -> np.ndarray:
    """Mask of the events EdgeBank may remember once they are past: every event of the stream, or under
    DyGLib's protocol its training, validation and test data (no training-period event of a held-out node)."""
    if cfg.eval.protocol != "dyglib":
        return np.ones(events.num_events, dtype=bool)
    known = np.zeros(events.num_events, dtype=bool)
    known[np.concatenate([split.train, split.val, split.test])] = True
    return known


def batch_memories(bank: EdgeBank, cfg: RunConfig, events: EventStream, known: np.ndarray,
                   indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each evaluation batch of a split: its rows in `indices`, and the pairs remembered from the known
    events before its first event."""
    batches = []
    for rows in chronological_batches(np.arange(len(indices)), cfg.eval.batch_size):
        past = np.flatnonzero(known[:indices[rows[0]]])
        batches.append((rows, bank.remembered(events.src[past], events.dst[past], events.t[past], events.num_nodes)))
    return batches


def score_split(batches: list[tuple[np.ndarray, np.ndarray]], events: EventStream, indices: np.ndarray,
                negatives: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a split's positives `(n,)` and negatives `(n, columns)` from its `batch_memories`."""
    neg_dst, neg_src = negatives
    if neg_src is None:
        neg_src = np.repeat(events.src[indices][:, None], neg_dst.shape[1], axis=1)
    pos, neg = np.empty(len(indices)), np.empty(neg_dst.shape)
    for rows, memory in batches:
        pos[rows] = edgebank_scores(memory, events.src[indices[rows]], events.dst[indices[rows]], events.num_nodes)
        neg[rows] = edgebank_scores(memory, neg_src[rows], neg_dst[rows], events.num_nodes)
    return pos, neg


def rank_all_destinations(batches: list[tuple[np.ndarray, np.ndarray]], events: EventStream,
                          indices: np.ndarray) -> np.ndarray:
    """The filtered rank of each event's destination among every destination of the stream (TGB's
    one-vs-many ranking with all destinations as candidates), from the split's `batch_memories`."""
    candidates = np.unique(events.dst)
    excluded = true_destinations(events, events.src[indices], events.t[indices], candidates)
    ranks = []
    for rows, memory in batches:
        src, dst = events.src[indices[rows]], events.dst[indices[rows]]
        table = edgebank_scores(memory, src[:, None], candidates[None, :], events.num_nodes)
        pos = edgebank_scores(memory, src, dst, events.num_nodes)
        ranks.append(ranks_against_candidates(pos, table, excluded[rows]))
    return np.concatenate(ranks) if ranks else np.empty(0)


def rank_own_negatives(batches: list[tuple[np.ndarray, np.ndarray]], events: EventStream, indices: np.ndarray,
                       negatives: RankingNegatives) -> np.ndarray:
    """The rank of each event's destination among its own negatives (`eval.ranking: sampled` or `tgb`), from
    the split's `batch_memories`."""
    ranks = []
    for rows, memory in batches:
        src, dst = events.src[indices[rows]], events.dst[indices[rows]]
        table = edgebank_scores(memory, src[:, None], negatives.dst[rows], events.num_nodes)
        pos = edgebank_scores(memory, src, dst, events.num_nodes)
        ranks.append(ranks_against_candidates(pos, table, ~negatives.valid[rows]))
    return np.concatenate(ranks) if ranks else np.empty(0)


def run_baseline(cfg: RunConfig, events: EventStream, out_dir: Path, seed: int) -> dict[str, Any]:
    """Score validation and test with the config's baseline; write TensorBoard scalars and results.json."""
    split = run_split(cfg, events, seed)
    require_every_part(events, split)
    require_negative_pairs(cfg, events, {"val": split.val, "test": split.test})
    bank = edgebank_for(cfg, events, float(events.t[split.train[-1]]))
    known = known_events(cfg, events, split)
    repeated = repeated_pairs(events)
    metrics = {}
    for name, indices, inductive in (("val", split.val, split.val_inductive), ("test", split.test, split.test_inductive)):
        negatives = split_negatives(cfg, events, split, seed, name, indices)
        batches = batch_memories(bank, cfg, events, known, indices)
        pos, neg = score_split(batches, events, indices, negatives)
        metrics.update(split_metrics(name, pos, neg, negative_columns(cfg), cfg.eval.batch_size,
                                     event_subsets(indices, inductive, repeated)))
        if cfg.eval.ranking != "none":
            started = time.perf_counter()
            if cfg.eval.ranking == "all":
                ranks = rank_all_destinations(batches, events, indices)
            else:
                ranks = rank_own_negatives(batches, events, indices,
                                           ranking_negatives(cfg, events, split, name, indices))
            metrics.update({f"{name}_{key}_{cfg.eval.ranking}": value for key, value in ranking_summary(ranks).items()})
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
