"""The training loop: epochs of pipelined training, validation and test after each epoch (memory
continues from training and is restored afterwards), best epoch by validation AP, atomic checkpoints
and resumption, TensorBoard logs and `results.json`."""
from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.errors import ConfigError, NonFiniteLossError
from graph.events import EventStream
from models.tgnn import build_model
from pipeline.run.baselines import BASELINES, run_baseline
from pipeline.run.checkpoint import (
    CHECKPOINT_NAME, check_contents, check_plugins, config_fingerprint, dataset_fingerprint,
    load_optimizer_state, resume_checkpoint, save_checkpoint,
)
from pipeline.engine.host_threads import use_threads
from pipeline.engine.schedulers import Auto, Scheduler, make_scheduler
from pipeline.engine.profiler import StageProfiler
from pipeline.engine.runner import STAGES, RunStats, run_batches
from pipeline.stages.link_prediction import LinkPredictionStages
from pipeline.run.config import RunConfig, validate_config
from pipeline.run.world import World
from pipeline.run.evaluation import event_subsets, negative_columns, ranking_summary, split_metrics
from pipeline.run.reporting import RunLog
from pipeline.run.setup import RunSetup, build_setup, evaluation_stages, training_stages
from pipeline.run.tgb import check_ranking_files, make_ranker


@dataclass
class TrainingState:
    """What a checkpoint must hold to continue a run exactly where its last complete epoch ended."""

    next_epoch: int = 0
    best_epoch: int = -1
    best_val_ap: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    def record_epoch(self, summary: dict[str, Any], metrics: dict[str, float], model: torch.nn.Module) -> None:
        """Append an epoch's summary; keep its metrics and a copy of the weights if its validation AP is the
        best so far."""
        epoch = summary["epoch"]
        self.history.append(summary)
        if metrics["val_ap"] > self.best_val_ap:
            self.best_val_ap, self.best_epoch, self.best_metrics = metrics["val_ap"], epoch, metrics
            self.best_model = copy.deepcopy(model.state_dict())
        self.next_epoch = epoch + 1


def run_stages(stages: LinkPredictionStages, scheduler: Scheduler, profiler: StageProfiler | None,
               stop: threading.Event | None, desc: str, show_progress: bool) -> RunStats:
    """Run every batch of `stages` under `scheduler`, with a progress bar."""
    with tqdm(total=len(stages.batches), desc=desc, unit="batch", leave=False, disable=not show_progress) as bar:
        return run_batches(len(stages.batches), stages, scheduler, profiler=profiler, stop=stop,
                           on_batch_done=lambda i: bar.update(1))


def evaluate(setup: RunSetup, name: str, indices: np.ndarray, inductive: np.ndarray, version_offset: int,
             stop: threading.Event | None, show_progress: bool, rank_all: bool = False) -> tuple[dict[str, float], int]:
    """Score a split in time order, continuing the memory; return its metrics (over the whole split, from
    every process's scores, plus DyGLib's batch means as `{name}_batch_ap/auc`) and the next version.

    Metrics under random negatives have plain names (`test_ap`); under DyGLib's other strategies they end
    in `@historical` or `@inductive` (`test_ap@historical`). With `rank_all`, each event's destination is
    also ranked as `eval.ranking` says: against every destination (`{name}_mrr_all`, `{name}_hits@10_all`), or
    against its own negatives (`{name}_mrr_sampled`, `{name}_mrr_tgb`, ...), and `{name}_ranking_s`."""
    stages = evaluation_stages(setup, name, indices, version_offset)
    ranking = setup.cfg.eval.ranking
    ranker = make_ranker(setup.cfg, setup.events, setup.split, name, indices, stages) if rank_all else None
    stages.step.on_scored = ranker
    started = time.perf_counter()
    run_stages(stages, make_scheduler("sequential"), None, stop, f"eval {name}", show_progress)
    pos, neg = setup.world.split_scores(np.concatenate(setup.eval_positions(len(indices))),
                                        np.concatenate(stages.step.pos_scores), np.concatenate(stages.step.neg_scores))
    _check_scores(name, pos, neg)
    metrics = split_metrics(name, pos, neg, negative_columns(setup.cfg), setup.cfg.eval.batch_size,
                            event_subsets(indices, inductive, setup.repeated_pairs))
    if ranker is not None:
        metrics.update({f"{name}_{key}_{ranking}": value for key, value in ranking_summary(ranker.all_ranks()).items()})
        metrics[f"{name}_ranking_s"] = time.perf_counter() - started
    return metrics, version_offset + len(stages.batches)


def evaluate_after_training(setup: RunSetup, version: int, stop: threading.Event | None,
                            show_progress: bool, rank_test: bool = False) -> dict[str, float]:
    """Validation continues from the training memory, test from validation; the store is restored after.
    `rank_test` adds the ranking of the test split (`eval.ranking`)."""
    snapshot = setup.store.snapshot() if setup.store is not None else None
    split = setup.split
    val, version = evaluate(setup, "val", split.val, split.val_inductive, version, stop, show_progress)
    test, _ = evaluate(setup, "test", split.test, split.test_inductive, version, stop, show_progress, rank_test)
    if snapshot is not None:
        setup.store.restore(snapshot)
    return {**val, **test}


def replay_and_evaluate(setup: RunSetup, weights: dict[str, torch.Tensor], stop: threading.Event | None,
                        show_progress: bool, rank_test: bool = False) -> dict[str, float]:
    """Evaluate `weights` on a fresh memory: replay the training events to rebuild it, then score validation
    and test exactly as training did."""
    setup.model.load_state_dict(weights)
    if setup.store is not None:
        setup.store.reset()
    _, version = evaluate(setup, "train", setup.split.train, setup.split.train, 0, stop, show_progress)
    return evaluate_after_training(setup, version, stop, show_progress, rank_test)


def _checkpoint_state(setup: RunSetup, state: TrainingState) -> dict[str, Any]:
    return {
        "config": setup.cfg.to_dict(),
        "seed": setup.seed,
        "config_fingerprint": config_fingerprint(setup.cfg),
        "dataset_fingerprint": dataset_fingerprint(setup.events),
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "training": state.__dict__,
    }


def _restore(setup: RunSetup, path: Path) -> TrainingState:
    """The training state `--resume` continues from, with the model and optimizer loaded; a checkpoint of
    another seed, config, dataset or plugins, or one whose contents do not fit the model, is refused first."""
    ckpt = resume_checkpoint(path, setup.cfg, dataset_fingerprint(setup.events), setup.seed)
    check_contents(path, ckpt, setup.model.state_dict())
    setup.model.load_state_dict(ckpt["model"])
    load_optimizer_state(path, setup.optimizer, ckpt["optimizer"])
    return TrainingState(**ckpt["training"])


def train(cfg: RunConfig, events: EventStream, out_dir: Path, device: torch.device, seed: int, *,
          resume: bool = False, stop: threading.Event | None = None, show_progress: bool = True,
          world: World | None = None) -> dict[str, Any]:
    """Train `cfg` on `events`, writing logs, checkpoints and results into `out_dir`; return the results.

    `world` makes this process one rank of a data-parallel run (pipeline/run/distributed.py); default: alone.
    A model that needs no training (`model: edgebank`) is only scored (pipeline/run/baselines.py).
    """
    if cfg.model in BASELINES:
        return run_baseline(cfg, events, out_dir, seed)
    if cfg.eval.ranking != "none" and world is not None and world.size > 1:
        raise ConfigError(f"key 'eval.ranking' '{cfg.eval.ranking}' ranks on one process only; run it without "
                          f"--distributed")
    setup = build_setup(cfg, events, device, seed, world)
    check_ranking_files(cfg, events, setup.split)
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = _restore(setup, ckpt_path) if resume else TrainingState()
    batches_per_epoch = len(setup.train_batches)
    log = RunLog(out_dir, purge_step=state.next_epoch * batches_per_epoch if resume else None)
    mode = cfg.pipeline.mode
    if mode == "auto" and setup.world.size > 1:
        mode = "mspipe"
        tqdm.write("pipeline auto: mspipe, since the processes of a data-parallel run must agree on a mode and "
                   "auto chooses from one process's timings")
    profiler = StageProfiler()
    chooser = make_scheduler(mode, cfg.pipeline)  # one per run: `auto` keeps its choice across epochs
    threads = torch.get_num_threads()  # `auto` may change it for the run; the caller gets it back
    try:
        for epoch in range(state.next_epoch, cfg.train.epochs):
            if state.stopped_early:
                break
            scheduler = setup.world.agreed_scheduler(chooser, profiler)
            _train_one_epoch(setup, state, epoch, scheduler, profiler, log, stop, show_progress)
            save_checkpoint(ckpt_path, _checkpoint_state(setup, state))
            patience = cfg.train.patience
            state.stopped_early = bool(patience) and epoch - state.best_epoch >= patience
        results = _results(setup, state, mode)
        if isinstance(chooser, Auto):
            chosen = chooser.chosen  # None if the run ended before its trials did
            results["auto"] = {"mode": chosen and chosen.mode, "threads": chosen and chosen.threads,
                               "decisions": chooser.decisions}
        if cfg.eval.ranking != "none":
            results.update(rank_with_best_weights(setup, state, stop, show_progress))
            ranked = (f"test_mrr_{cfg.eval.ranking}", f"test_hits@10_{cfg.eval.ranking}")
            log.scalars(state.best_epoch, {f"eval/{key}": results[key] for key in ranked})
        log.results(results)
        return results
    finally:
        use_threads(threads)
        log.close()


def _train_one_epoch(setup: RunSetup, state: TrainingState, epoch: int, scheduler: Scheduler, profiler: StageProfiler,
                     log: RunLog, stop: threading.Event | None, show_progress: bool) -> None:
    """One epoch: train, evaluate, log, and keep the weights if they are the best so far."""
    decided = len(scheduler.decisions) if isinstance(scheduler, Auto) else 0
    stages, stats, seconds = _run_training(setup, epoch, scheduler, profiler, stop, show_progress)
    _check_weights(setup.model, epoch)
    metrics = evaluate_after_training(setup, len(stages.batches), stop, show_progress)
    summary = _epoch_summary(epoch, stages, stats, seconds, len(setup.split.train), metrics)
    if isinstance(scheduler, Auto):
        _report_auto(log, scheduler, scheduler.decisions[decided:])
        summary["auto_mode"] = scheduler.chosen and str(scheduler.chosen)
    _log_epoch(log, epoch * len(stages.batches), stages.step.losses, stats, summary, metrics)
    state.record_epoch(summary, metrics, setup.model)
    tqdm.write(f"epoch {epoch}: loss {summary['loss']:.4f}  {summary['events_per_s']:.0f} events/s  "
               f"val AP {metrics['val_ap']:.4f}  test AP {metrics['test_ap']:.4f}  k {summary['k_mean']:.1f}")


def _non_finite(values: torch.Tensor | np.ndarray) -> str | None:
    """'nan' or 'inf' if `values` hold one (nan first), else None."""
    values = torch.as_tensor(values)
    if bool(torch.isnan(values).any()):
        return "nan"
    return "inf" if bool(torch.isinf(values).any()) else None


def _check_weights(model: torch.nn.Module, epoch: int) -> None:
    """Divergence the per-batch loss check cannot see: the optimizer step of an epoch's last batch (or of
    one whose loss stayed finite) left a weight NaN or infinite. Raised before evaluation scores with them
    and before the epoch's checkpoint is written, so the last checkpoint stays the last good one."""
    for name, weight in model.named_parameters():
        kind = _non_finite(weight.detach())
        if kind is not None:
            raise NonFiniteLossError(f"training weights became {kind} in epoch {epoch} (parameter '{name}'); "
                                     f"lower train.lr")


def _check_scores(split: str, pos: np.ndarray, neg: np.ndarray) -> None:
    """Scores that are NaN or infinite (finite weights, but a memory that overflowed) as the same user error
    as a diverged loss, rather than the metric library's `Input contains NaN`."""
    kind = _non_finite(pos) or _non_finite(neg)
    if kind is not None:
        raise NonFiniteLossError(f"the model's {split} scores became {kind}: training diverged; lower train.lr")


def _report_auto(log: RunLog, auto: Auto, decisions: list[dict[str, Any]]) -> None:
    """One console line per choice `auto` made in the epoch; TensorBoard, at the training step it was made:
    the chosen setting (its position among the settings) and each setting's measured time per batch."""
    names = [str(setting) for setting in auto.settings]
    for decision in decisions:
        times = ", ".join(f"{name} {ms:.1f}" for name, ms in decision["ms_per_batch"].items())
        skipped = "; ".join(f"{name}: {why}" for name, why in decision["not_tried"].items())
        tqdm.write(f"pipeline auto: {decision['setting']} from batch {decision['batch']} (ms per batch: {times}"
                   + (f"; not tried, as they cannot win: {skipped}" if skipped else "")
                   + f"; another setting replaces {names[0]} only if {auto.margin:.0%} faster)")
        log.scalars(decision["batch"], {"pipeline/auto_setting": names.index(decision["setting"]),
                                        **{f"pipeline/auto_ms_per_batch/{name}": ms
                                           for name, ms in decision["ms_per_batch"].items()}})


def _run_training(setup: RunSetup, epoch: int, scheduler: Scheduler, profiler: StageProfiler,
                  stop: threading.Event | None, show_progress: bool) -> tuple[LinkPredictionStages, RunStats, float]:
    """Train one epoch from a reset memory, seeded by the epoch: its stages, the runner's stats and its seconds."""
    torch.manual_seed(setup.seed * 1000 + epoch)
    if setup.store is not None:
        setup.store.reset()
    stages = training_stages(setup, epoch)
    started = time.perf_counter()
    stats = run_stages(stages, scheduler, profiler, stop, f"epoch {epoch}", show_progress)
    return stages, stats, time.perf_counter() - started


def _epoch_summary(epoch: int, stages: LinkPredictionStages, stats: RunStats, seconds: float, num_events: int,
                   metrics: dict[str, float]) -> dict[str, Any]:
    """The history entry of an epoch: loss, throughput, staleness, stage times and its evaluation metrics."""
    return {
        "epoch": epoch,
        "loss": float(np.mean(stages.step.losses)),
        "epoch_time_s": seconds,
        "events_per_s": num_events / seconds,
        "k_mean": float(np.mean(stats.k)),
        "staleness_mean": float(np.mean(stats.staleness)),
        "staleness_max": int(np.max(stats.staleness)),
        "train_busy_fraction": stats.train_busy_fraction,
        "mitigated_roots": stages.mitigated_roots,
        "stage_time_s": dict(stats.stage_mean_s),
        **metrics,
    }


def _log_epoch(log: RunLog, first_step: int, losses: list[float], stats: RunStats, summary: dict[str, Any],
               metrics: dict[str, float]) -> None:
    """TensorBoard: the loss of every step, the pipeline's timings and staleness, and the epoch's scalars."""
    epoch = summary["epoch"]
    for i, loss in enumerate(losses):
        log.scalars(first_step + i, {"train/loss": loss})
    log.epoch_pipeline(epoch, first_step, stats)
    log.scalars(epoch, {
        "train/loss_epoch": summary["loss"], "train/events_per_s": summary["events_per_s"],
        "pipeline/mitigated_roots": summary["mitigated_roots"],
        **{f"eval/{key}": value for key, value in metrics.items()},
    })


def evaluate_checkpoint(ckpt: dict[str, Any], events: EventStream, device: torch.device,
                        show_progress: bool = True, *, path: Path = Path(CHECKPOINT_NAME),
                        plugins: tuple[str, ...] = ()) -> dict[str, float]:
    """Re-evaluate a checkpoint's best weights on a memory rebuilt by replaying the training events;
    ranks the test split too when its config asks (`eval.ranking`)."""
    setup, best = checkpoint_setup(ckpt, events, device, path=path, plugins=plugins)
    return replay_and_evaluate(setup, best, None, show_progress, setup.cfg.eval.ranking != "none")


def checkpoint_setup(ckpt: dict[str, Any], events: EventStream, device: torch.device, *,
                     path: Path = Path(CHECKPOINT_NAME),
                     plugins: tuple[str, ...] = ()) -> tuple[RunSetup, dict[str, torch.Tensor]]:
    """The run a checkpoint describes, built for `events`, and its best weights (not yet loaded).

    The checkpoint is data: the plugins its config records are never imported. `plugins` (resolved, what
    the user named) are, and must cover them; the weights must fit the model its config describes, which
    is checked on shapes alone (device `meta`) before anything of that size is allocated, or on the built
    model where a part cannot be built on `meta`."""
    check_plugins(path, ckpt, plugins, "pass them with --plugins")
    cfg = validate_config({**ckpt["config"], "plugins": list(plugins)}, f"{path}: stored config")
    shapes = _model_shapes(cfg, events)
    if shapes is not None:
        check_contents(path, ckpt, shapes)
    setup = build_setup(cfg, events, device, ckpt["seed"])
    if shapes is None:
        check_contents(path, ckpt, setup.model.state_dict())
    return setup, ckpt["training"]["best_model"] or ckpt["model"]


def _model_shapes(cfg: RunConfig, events: EventStream) -> dict[str, torch.Tensor] | None:
    """The state dict `cfg`'s model would have, as `meta` tensors (shapes and dtypes, no memory); None when a
    (plugin's) part cannot be built on `meta`, and the real model is checked instead."""
    if cfg.model in BASELINES:
        return None
    try:
        with torch.device("meta"):
            return build_model(cfg, events.dim_node_feat, events.dim_edge_feat).state_dict()
    except Exception:
        return None


def rank_with_best_weights(setup: RunSetup, state: TrainingState, stop: threading.Event | None,
                           show_progress: bool) -> dict[str, float]:
    """TGB's ranking of the test split (`eval.ranking`) by the best epoch's weights, on a memory rebuilt by
    replaying the training and validation events (the memory at the end of that epoch is not kept).
    `test_ap_replayed` is the same pass's test AP, beside the ranking it goes with."""
    replayed = replay_and_evaluate(setup, state.best_model or setup.model.state_dict(), stop, show_progress,
                                   rank_test=True)
    ranked = (f"test_mrr_{setup.cfg.eval.ranking}", f"test_hits@10_{setup.cfg.eval.ranking}", "test_ranking_s")
    return {**{key: replayed[key] for key in ranked}, "test_ap_replayed": replayed["test_ap"]}


def _results(setup: RunSetup, state: TrainingState, mode: str) -> dict[str, Any]:
    history = state.history
    total_events = len(setup.split.train) * len(history)
    total_seconds = sum(h["epoch_time_s"] for h in history)
    stage_time = {stage: float(np.mean([h["stage_time_s"].get(stage, 0.0) for h in history])) for stage in STAGES}
    best = state.best_metrics
    return {
        "model": setup.cfg.model,
        "dataset": setup.events.name,
        "mode": mode,
        "epochs": len(history),
        "seed": setup.seed,
        "best_epoch": state.best_epoch,
        "train_events_per_s": total_events / total_seconds if total_seconds else 0.0,
        "epoch_time_s": [h["epoch_time_s"] for h in history],
        **{key: best.get(key, math.nan) for key in (
            "val_ap", "val_auc", "test_ap", "test_auc", "val_inductive_ap", "val_inductive_auc",
            "test_inductive_ap", "test_inductive_auc", "val_batch_ap", "val_batch_auc", "test_batch_ap",
            "test_batch_auc")},
        **best,
        "stage_time_s": stage_time,
        "staleness": {
            "k": float(np.mean([h["k_mean"] for h in history])) if history else 0.0,
            "mean_seen": float(np.mean([h["staleness_mean"] for h in history])) if history else 0.0,
            "max_seen": int(max((h["staleness_max"] for h in history), default=0)),
        },
        "pipeline_utilization": float(np.mean([h["train_busy_fraction"] for h in history])) if history else 0.0,
        "history": history,
        "config": setup.cfg.to_dict(),
    }
