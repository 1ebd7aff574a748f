"""Runs of models that need no training (EdgeBank): scored on the same split, with the same negatives and
metrics as a trained model's evaluation, so they sit in the same tables. `model: edgebank` selects it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from graph.events import EventStream
from graph.split import chronological_split
from models.edgebank import EdgeBank
from pipeline.evaluation import split_metrics
from pipeline.reporting import RunLog
from pipeline.setup import negative_columns, require_every_part, split_negatives

BASELINES = ("edgebank",)


def edgebank_for(cfg: dict, events: EventStream, train_end: float) -> EdgeBank:
    """The EdgeBank `edgebank.memory` describes: unlimited, or a window of `edgebank.window_ratio` times
    the training period's time span (TGB's fixed time window)."""
    settings = cfg["edgebank"]
    window = None
    if settings["memory"] == "window":
        window = settings["window_ratio"] * (train_end - float(events.t[0]))
    return EdgeBank.from_stream(events.src, events.dst, events.t, events.num_nodes, window)


def score_split(bank: EdgeBank, cfg: dict, events: EventStream, indices: np.ndarray,
                negatives: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a split's positives and negatives; each evaluation batch sees the events before it."""
    neg_dst, neg_src = negatives
    if neg_src is None:
        neg_src = np.repeat(events.src[indices][:, None], neg_dst.shape[1], axis=1)
    batch_size = cfg["eval"]["batch_size"]
    seen = indices[(np.arange(len(indices)) // batch_size) * batch_size]  # the first event of each one's batch
    pos = bank.scores(events.src[indices], events.dst[indices], seen)
    neg = np.stack([bank.scores(neg_src[:, c], neg_dst[:, c], seen) for c in range(neg_dst.shape[1])], axis=1)
    return pos, neg


def run_baseline(cfg: dict, events: EventStream, out_dir: Path, seed: int) -> dict[str, Any]:
    """Score validation and test with the config's baseline; write TensorBoard scalars and results.json."""
    split = chronological_split(events, val_ratio=cfg["eval"]["val_ratio"], test_ratio=cfg["eval"]["test_ratio"],
                                inductive_ratio=cfg["eval"]["inductive_ratio"], seed=seed)
    require_every_part(events, split)
    bank = edgebank_for(cfg, events, float(events.t[split.train[-1]]))
    metrics = {}
    for name, indices, inductive in (("val", split.val, split.val_inductive), ("test", split.test, split.test_inductive)):
        negatives = split_negatives(cfg, events, split, seed, name, indices)
        pos, neg = score_split(bank, cfg, events, indices, negatives)
        metrics.update(split_metrics(name, pos, neg, negative_columns(cfg), cfg["eval"]["batch_size"],
                                     np.isin(indices, inductive)))
    results = {"model": cfg["model"], "dataset": events.name, "mode": "no training", "epochs": 0, "seed": seed,
               "best_epoch": -1, "train_events_per_s": math.nan, **metrics, "config": cfg}
    log = RunLog(out_dir)
    try:
        log.scalars(0, {f"eval/{key}": value for key, value in metrics.items()})
        log.results(results)
    finally:
        log.close()
    return results
