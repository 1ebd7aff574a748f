"""`breakdown`: where a sequential training step's time goes on the `compare` cases: milliseconds per batch
of each stage (an unprofiled pass), and the train stage split into forward, backward and optimizer step in
the proportions torch.profiler measures on the following batches. The JSON names the commit it measured.

    python scripts/benchmark.py breakdown --cases uci,wikipedia172 --batches 50 --out runs/bench_breakdown.json
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from _cli import configure_process
from benchmarks.shared import add_parser, git_commit, library_versions, machine
from benchmarks.compare import COMPARE_CASES, compare_events, our_config
from common.errors import UserError
from pipeline.engine.runner import STAGES
from pipeline.run.setup import build_setup, training_stages
from pipeline.stages.link_prediction import TRAIN_STEP_PARTS, LinkPredictionStages

TABLE = ["case", "events_per_s", *(f"{stage}_ms" for stage in STAGES), "forward_ms", "backward_ms", "optimizer_ms"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `breakdown` subcommand and its options."""
    parser = add_parser(commands, "breakdown", "where a sequential training step's time goes, stage by stage",
                        __doc__)
    parser.add_argument("--cases", default=",".join(COMPARE_CASES),
                        help=f"comma-separated cases: {', '.join(COMPARE_CASES)}")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per case (twice: plain, profiled)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def timed_stages(stages: LinkPredictionStages, batch: int) -> list[float]:
    """Run the five stages of one batch in order, as the sequential mode does; seconds of each."""
    stamps = [time.perf_counter()]
    ctx = stages.sample(batch)
    stamps.append(time.perf_counter())
    stages.fetch_features(batch, ctx)
    stamps.append(time.perf_counter())
    stages.fetch_memory(batch, ctx, 0)
    stamps.append(time.perf_counter())
    stages.train(batch, ctx)
    stamps.append(time.perf_counter())
    stages.update_memory(batch, ctx)
    stamps.append(time.perf_counter())
    return list(np.diff(stamps))


def breakdown_case(name: str, args: argparse.Namespace) -> dict:
    """Per-stage milliseconds per batch of sequential training on one `compare` case, and the train stage
    split into forward, backward and optimizer step."""
    case = COMPARE_CASES[name]
    setup = build_setup(our_config(case, epochs=1), compare_events(case, None, args.seed), torch.device("cpu"),
                        args.seed)
    stages = training_stages(setup, epoch=0)
    if args.warmup + 2 * args.batches > len(stages.batches):
        raise UserError(f"{name}: --warmup + 2 * --batches must be at most {len(stages.batches)} batches")
    setup.store.reset()
    for batch in range(args.warmup):
        timed_stages(stages, batch)
    clean = np.array([timed_stages(stages, args.warmup + b) for b in range(args.batches)]).mean(axis=0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for batch in range(args.warmup + args.batches, args.warmup + 2 * args.batches):
            timed_stages(stages, batch)
    part_us = {event.key: event.cpu_time_total for event in profiler.key_averages() if event.key in TRAIN_STEP_PARTS}
    train_ms = 1000 * clean[STAGES.index("train")]
    share = {part: part_us.get(part, 0.0) / sum(part_us.values()) for part in TRAIN_STEP_PARTS}
    return {"case": name, "batch_size": case["batch_size"], "events_per_s": case["batch_size"] / clean.sum(),
            **{f"{stage}_ms": 1000 * seconds for stage, seconds in zip(STAGES, clean)},
            **{f"{part.split('/')[1]}_ms": train_ms * share[part] for part in TRAIN_STEP_PARTS}}


def run(args: argparse.Namespace) -> dict:
    """Where the time of a sequential training step goes, for each requested case."""
    if args.batches < 1 or args.warmup < 0:
        raise UserError(f"--batches must be positive and --warmup non-negative, got {args.batches}, {args.warmup}")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPARE_CASES]
    if unknown or not names:
        raise UserError(f"--cases: unknown case '{','.join(unknown)}' (known: {', '.join(COMPARE_CASES)})")
    plan = configure_process(args.threads)
    return {
        "benchmark": "breakdown", "dataset": ",".join(names), "command": " ".join(sys.argv),
        "commit": git_commit(), "torch_threads": plan.intra_op, "batches": args.batches, "warmup": args.warmup,
        "note": "stage times from an unprofiled pass; forward/backward/optimizer split the train time in the "
                "proportions torch.profiler measured on the following batches",
        "versions": library_versions(),
        "machine": machine(),
        "results": [breakdown_case(name, args) for name in names],
    }
