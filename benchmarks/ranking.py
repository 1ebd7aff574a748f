"""`ranking`: the time one-vs-all ranking (`eval.ranking: all`) takes per test batch, by the chunked path
and the factorised path of `CandidateRanker` (pipeline/run/ranking.py), alternating on the same batches,
with how far their scores and ranks differ, and each path's MRR and Hits@10 over the batches ranked.

With `--configs` the model is not trained (what a ranking costs does not depend on the weights) and the
test batches are scored from an empty memory. With `--runs`, each run directory's checkpoint (written by
scripts/train.py) is ranked as `scripts/evaluate.py` ranks it: its best weights, on a memory rebuilt by
replaying the training and validation events. Either way each test batch is ranked by both paths before its
memory is written.

    python scripts/benchmark.py ranking --configs configs/dyglib/tgn.yml,configs/dyglib/tgn_cn.yml \
        --data wikipedia --batches 2 --out runs/bench_ranking.json
    python scripts/benchmark.py ranking --runs runs/tgn_wiki,runs/tgn_cn_wiki --data wikipedia \
        --batches 1000 --threads 2 --out runs/bench_ranking_trained.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _cli import add_data_arguments, configure_process, load_data, positive_int
from benchmarks.shared import add_parser, git_commit, library_versions, machine
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.evaluation import ranking_summary, ranks_against_candidates
from pipeline.run.ranking import CandidateRanker, true_destinations
from pipeline.run.checkpoint import CHECKPOINT_NAME, dataset_fingerprint, load_checkpoint
from pipeline.run.setup import RunSetup, build_setup, evaluation_stages
from pipeline.run.trainer import checkpoint_setup, evaluate
from pipeline.stages.link_prediction import LinkPredictionStages

TABLE = ["config", "batch", "chunked_s", "factorised_s", "speedup", "max_score_diff", "ranks_differ"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `ranking` subcommand and its options."""
    parser = add_parser(commands, "ranking", "one-vs-all ranking time per test batch: chunked vs factorised path",
                        __doc__)
    add_data_arguments(parser, "wikipedia")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--configs", default="configs/dyglib/tgn.yml,configs/dyglib/tgn_cn.yml",
                        help="comma-separated model configs, ranked untrained (eval.ranking is set to all)")
    models.add_argument("--runs", help="comma-separated run directories of scripts/train.py, ranked with their "
                                       "checkpoint's best weights after replaying training and validation")
    parser.add_argument("--batches", type=positive_int, default=2, help="first test batches ranked by each path")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def untrained_test_stages(config: str, events, seed: int) -> LinkPredictionStages:
    """The test split's stages of `config`'s untrained model, from an empty memory."""
    cfg = apply_overrides(load_config(config), {"eval.ranking": "all"})
    setup = build_setup(cfg, events, torch.device("cpu"), seed)
    return evaluation_stages(setup, "test", setup.split.test, 0)


def trained_test_stages(run_dir: str, events) -> LinkPredictionStages:
    """The test split's stages of a run's best weights, after replaying training and validation into the
    memory, as `scripts/evaluate.py` ranks it."""
    path = Path(run_dir) / CHECKPOINT_NAME
    setup, best = checkpoint_setup(load_checkpoint(path, None, dataset_fingerprint(events)), events,
                                   torch.device("cpu"), path=path)
    setup.model.load_state_dict(best)
    version = _replay(setup)
    return evaluation_stages(setup, "test", setup.split.test, version)


def _replay(setup: RunSetup) -> int:
    """Replay the training and validation events into a fresh memory; the next memory version."""
    if setup.store is not None:
        setup.store.reset()
    _, version = evaluate(setup, "train", setup.split.train, setup.split.train, 0, None, False)
    _, version = evaluate(setup, "val", setup.split.val, setup.split.val_inductive, version, None, False)
    return version


def rank_batches(label: str, stages: LinkPredictionStages, events, batches: int) -> list[dict]:
    """Both paths on the first `batches` test batches of `stages`, the order of the two alternating from
    batch to batch; rows are labelled `label`."""
    paths = {"chunked": CandidateRanker(stages, events, factorise=False),
             "factorised": CandidateRanker(stages, events)}
    if paths["factorised"].path != "factorised":
        raise RuntimeError(f"{label}: no factorised path ({paths['factorised'].refusal})")
    rows = []

    def rank_both(i: int, ctx) -> None:
        seconds, scores = {}, {}
        for name in (("chunked", "factorised") if i % 2 == 0 else ("factorised", "chunked")):
            started = time.perf_counter()
            scores[name] = paths[name].scores(i, ctx)
            seconds[name] = time.perf_counter() - started
        ranker = paths["chunked"]
        batch = ctx.events
        excluded = true_destinations(events, events.src[batch], events.t[batch], ranker.candidates)
        ranks = {name: ranks_against_candidates(*scores[name], excluded) for name in scores}
        score_diff = max(np.abs(scores["chunked"][k] - scores["factorised"][k]).max() for k in (0, 1))
        rank_diff = np.abs(ranks["chunked"] - ranks["factorised"])
        rows.append({"config": label, "batch": i, "events": len(batch), "chunked_s": seconds["chunked"],
                     "factorised_s": seconds["factorised"], "speedup": seconds["chunked"] / seconds["factorised"],
                     "max_score_diff": float(score_diff), "ranks_differ": int(np.sum(rank_diff > 0)),
                     "max_rank_diff": float(rank_diff.max()),
                     **{f"{key}_{name}": value for name in ranks
                        for key, value in ranking_summary(ranks[name]).items()}})

    stages.step.on_scored = rank_both
    for i in range(min(batches, len(stages.batches))):
        ctx = stages.sample(i)
        stages.fetch_features(i, ctx)
        stages.fetch_memory(i, ctx, 0)
        stages.train(i, ctx)
        stages.update_memory(i, ctx)
    return rows


def run(args: argparse.Namespace) -> dict:
    """Time both paths on each model's first test batches."""
    configure_process(args.threads)
    events = load_data(args)
    if args.runs:
        labels = [run_dir.strip() for run_dir in args.runs.split(",")]
        stages = {label: lambda label=label: trained_test_stages(label, events) for label in labels}
    else:
        labels = [config.strip() for config in args.configs.split(",")]
        stages = {label: lambda label=label: untrained_test_stages(label, events, args.seed) for label in labels}
    results = []
    for label in labels:
        results.extend(rank_batches(label, stages[label](), events, args.batches))
    summary = {}
    for label in labels:
        rows = [row for row in results if row["config"] == label]
        chunked, factorised = (statistics.median(row[k] for row in rows) for k in ("chunked_s", "factorised_s"))
        ranked = sum(row["events"] for row in rows)
        summary[label] = {
            "median_chunked_s": chunked, "median_factorised_s": factorised, "speedup_of_medians": chunked / factorised,
            "total_chunked_s": sum(row["chunked_s"] for row in rows),
            "total_factorised_s": sum(row["factorised_s"] for row in rows), "events": ranked,
            **{f"{key}_{name}": sum(row[f"{key}_{name}"] * row["events"] for row in rows) / ranked
               for key in ("mrr", "hits@10") for name in ("chunked", "factorised")}}
        summary[label]["speedup_of_totals"] = summary[label]["total_chunked_s"] / summary[label]["total_factorised_s"]
    return {"benchmark": "ranking", "dataset": args.data, "threads": args.threads, "machine": machine(),
            "commit": git_commit(), "versions": library_versions(), "trained": bool(args.runs),
            "summary": summary, "results": results}
