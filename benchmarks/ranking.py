"""`ranking`: the time one-vs-all ranking (`eval.ranking: all`) takes per test batch, by the chunked path
and the factorised path of `CandidateRanker` (pipeline/run/ranking.py), alternating on the same batches,
with how far their scores and ranks differ, and each path's MRR and Hits@10 over the batches ranked.

The model is not trained: what a ranking costs does not depend on the weights. The test batches are scored
from an empty memory (no replay of training and validation), as evaluation scores them, and each is ranked
by both paths before its memory is written.

    python scripts/benchmark.py ranking --configs configs/dyglib/tgn.yml,configs/dyglib/tgn_cn.yml \
        --data wikipedia --batches 2 --out runs/bench_ranking.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from _cli import add_data_arguments, configure_process, load_data, positive_int
from benchmarks.shared import add_parser, git_commit, library_versions, machine
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.evaluation import ranking_summary, ranks_against_candidates
from pipeline.run.ranking import CandidateRanker, true_destinations
from pipeline.run.setup import build_setup, evaluation_stages

TABLE = ["config", "batch", "chunked_s", "factorised_s", "speedup", "max_score_diff", "ranks_differ"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `ranking` subcommand and its options."""
    parser = add_parser(commands, "ranking", "one-vs-all ranking time per test batch: chunked vs factorised path",
                        __doc__)
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--configs", default="configs/dyglib/tgn.yml,configs/dyglib/tgn_cn.yml",
                        help="comma-separated model configs (eval.ranking is set to all)")
    parser.add_argument("--batches", type=positive_int, default=2, help="first test batches ranked by each path")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def rank_batches(config: str, events, batches: int, seed: int) -> list[dict]:
    """Both paths on the first `batches` test batches of `config`'s untrained model, the order of the two
    alternating from batch to batch."""
    cfg = apply_overrides(load_config(config), {"eval.ranking": "all"})
    setup = build_setup(cfg, events, torch.device("cpu"), seed)
    stages = evaluation_stages(setup, "test", setup.split.test, 0)
    paths = {"chunked": CandidateRanker(stages, events, factorise=False),
             "factorised": CandidateRanker(stages, events)}
    if paths["factorised"].path != "factorised":
        raise RuntimeError(f"{config}: no factorised path ({paths['factorised'].refusal})")
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
        rows.append({"config": config, "batch": i, "events": len(batch), "chunked_s": seconds["chunked"],
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
    """Time both paths on each config's first test batches."""
    configure_process(args.threads)
    events = load_data(args)
    results = []
    for config in args.configs.split(","):
        results.extend(rank_batches(config.strip(), events, args.batches, args.seed))
    summary = {}
    for config in args.configs.split(","):
        rows = [row for row in results if row["config"] == config.strip()]
        chunked, factorised = (statistics.median(row[k] for row in rows) for k in ("chunked_s", "factorised_s"))
        events = sum(row["events"] for row in rows)
        summary[config.strip()] = {
            "median_chunked_s": chunked, "median_factorised_s": factorised, "speedup_of_medians": chunked / factorised,
            "total_chunked_s": sum(row["chunked_s"] for row in rows),
            "total_factorised_s": sum(row["factorised_s"] for row in rows), "events": events,
            **{f"{key}_{name}": sum(row[f"{key}_{name}"] * row["events"] for row in rows) / events
               for key in ("mrr", "hits@10") for name in ("chunked", "factorised")}}
    return {"benchmark": "ranking", "dataset": args.data, "threads": args.threads, "machine": machine(),
            "commit": git_commit(), "versions": library_versions(), "summary": summary, "results": results}
