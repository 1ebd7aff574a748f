"""`breakdown`: where a sequential training step's time goes on the `compare` cases: milliseconds per batch
of each stage (an unprofiled pass), and the train stage split into forward, backward and optimizer step in
the proportions torch.profiler measures on the following batches. From the same profile, per train step:
the aten ops dispatched, the host synchronisations (ops whose result the host must wait for on a GPU:
`.item()`, `nonzero`, `unique`, ...), the GFLOP of its matrix products and the rate they ran at (their
FLOPs over their own CPU time). With `--scaling 0.25,0.5,1,2`, also the train stage's median milliseconds
at those multiples of each case's batch size (sizes alternating, `--scaling-rounds` times) and the
least-squares line through them: the fixed part of a step (Python, op dispatch, the optimizer, DGL's per-call work) and the part per
event, so a change can be judged by which of the two it cuts. The JSON names the commit it measured.

    python scripts/benchmark.py breakdown --cases uci,wikipedia172 --batches 50 --out runs/bench_breakdown.json
    python scripts/benchmark.py breakdown --batches 40 --scaling 0.125,0.25,0.5,1,2 --out runs/bench_scaling.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from _cli import configure_process
from benchmarks.shared import add_parser, git_commit, library_versions, machine
from benchmarks.compare import COMPARE_CASES, compare_events, our_config
from common.errors import UserError
from graph.events import EventStream
from pipeline.engine.runner import STAGES
from pipeline.run.setup import build_setup, training_stages
from pipeline.stages.link_prediction import TRAIN_STEP_PARTS, LinkPredictionStages

TABLE = ["case", "events_per_s", *(f"{stage}_ms" for stage in STAGES), "forward_ms", "backward_ms", "optimizer_ms",
         "aten_ops", "host_syncs", "matmul_gflop", "matmul_gflop_per_s", "fixed_train_ms", "train_us_per_event"]
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"})
# Ops whose output the host must read before going on: a device synchronisation on a GPU.
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
                      "aten::unique_dim", "aten::unique_consecutive", "aten::_unique", "aten::repeat_interleave"})


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
    parser.add_argument("--scaling", default="", metavar="MULTIPLES",
                        help="comma-separated multiples of each case's batch size to time the train stage at "
                             "(none: skip)")
    parser.add_argument("--scaling-rounds", type=int, default=3, help="times each --scaling size is timed")
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


def matmul_flops(shapes: list[list[int]]) -> int:
    """FLOPs of a (batched) matrix product from its recorded input shapes: its last two operands of 2 or 3
    dimensions are `(..., n, k)` and `(..., k, m)` (a bias or an accumulated output comes first)."""
    left, right = [shape for shape in shapes if len(shape) in (2, 3)][-2:]
    return 2 * math.prod(left) * right[-1]


def in_train_step(event) -> bool:
    """Whether a profiled event ran inside the train step (forward, backward or optimizer step)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in TRAIN_STEP_PARTS:
            return True
        parent = parent.cpu_parent
    return False


def train_step_counts(events, batches: int) -> dict:
    """Per train step: aten ops dispatched from Python or autograd (not counting the ops an op calls inside),
    host synchronisations, matrix-product GFLOP and their rate."""
    ops = [event for event in events if event.name.startswith("aten::") and in_train_step(event)]
    dispatched = [event for event in ops if not event.cpu_parent.name.startswith("aten::")]
    products = [event for event in ops if event.name in MATMUL_OPS]
    flops = sum(matmul_flops(event.input_shapes) for event in products)
    seconds = sum(event.self_cpu_time_total for event in products) / 1e6
    return {"aten_ops": len(dispatched) / batches, "host_syncs": sum(event.name in SYNC_OPS for event in ops) / batches,
            "matmul_gflop": flops / batches / 1e9, "matmul_gflop_per_s": flops / seconds / 1e9 if seconds else 0.0}


def case_stages(case: dict, events: EventStream, args: argparse.Namespace,
                batch_size: int | None = None) -> LinkPredictionStages:
    """The first training epoch's stage functions of a `compare` case on its `events` (at `batch_size`, if
    given), memory reset."""
    if batch_size is not None:
        case = {**case, "batch_size": batch_size}
    setup = build_setup(our_config(case, epochs=1), events, torch.device("cpu"), args.seed)
    setup.store.reset()
    return training_stages(setup, epoch=0)


def train_ms_median(stages: LinkPredictionStages, warmup: int, batches: int) -> float:
    """Median milliseconds of the train stage over `batches` batches after `warmup` untimed ones."""
    return 1000 * float(np.median([timed_stages(stages, b)[STAGES.index("train")]
                                   for b in range(warmup + batches)][warmup:]))


def fixed_and_per_event(sizes: list[int], train_ms: list[float]) -> tuple[float, float]:
    """The least-squares line `train_ms = fixed + per_event * size`: (fixed ms, per-event microseconds)."""
    per_event_ms, fixed = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(train_ms, dtype=float), 1)
    return float(fixed), 1000 * float(per_event_ms)


def train_time_scaling(case: dict, events: EventStream, sizes: list[int], args: argparse.Namespace) -> dict:
    """The train stage's median ms at each batch size (sizes alternating, `--scaling-rounds` rounds, each
    size's median over rounds) and the line through them. Each round times about 2,000 events per size."""
    rounds: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.scaling_rounds):
        for size in sizes:
            stages = case_stages(case, events, args, size)
            batches = min(max(10, 2000 // size), len(stages.batches) - args.warmup)
            if batches < 1:
                raise UserError(f"--scaling: batch size {size} leaves no batch after --warmup {args.warmup}")
            rounds[size].append(train_ms_median(stages, args.warmup, batches))
    medians = [float(np.median(rounds[size])) for size in sizes]
    fixed, per_event = fixed_and_per_event(sizes, medians)
    return {"fixed_train_ms": fixed, "train_us_per_event": per_event,
            "scaling": {"batch_sizes": sizes, "train_ms": medians, "train_ms_rounds": [rounds[s] for s in sizes]}}


def breakdown_case(name: str, args: argparse.Namespace) -> dict:
    """Per-stage milliseconds per batch of sequential training on one `compare` case, and the train stage
    split into forward, backward and optimizer step."""
    case = COMPARE_CASES[name]
    events = compare_events(case, None, args.seed)
    stages = case_stages(case, events, args)
    if args.warmup + 2 * args.batches > len(stages.batches):
        raise UserError(f"{name}: --warmup + 2 * --batches must be at most {len(stages.batches)} batches")
    for batch in range(args.warmup):
        timed_stages(stages, batch)
    clean = np.array([timed_stages(stages, args.warmup + b) for b in range(args.batches)]).mean(axis=0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        for batch in range(args.warmup + args.batches, args.warmup + 2 * args.batches):
            timed_stages(stages, batch)
    part_us = {event.key: event.cpu_time_total for event in profiler.key_averages() if event.key in TRAIN_STEP_PARTS}
    train_ms = 1000 * clean[STAGES.index("train")]
    share = {part: part_us.get(part, 0.0) / sum(part_us.values()) for part in TRAIN_STEP_PARTS}
    sizes = scaling_sizes(args.scaling, case["batch_size"])
    return {"case": name, "batch_size": case["batch_size"], "events_per_s": case["batch_size"] / clean.sum(),
            **{f"{stage}_ms": 1000 * seconds for stage, seconds in zip(STAGES, clean)},
            **{f"{part.split('/')[1]}_ms": train_ms * share[part] for part in TRAIN_STEP_PARTS},
            **train_step_counts(profiler.events(), args.batches),
            **(train_time_scaling(case, events, sizes, args) if sizes else {})}


def scaling_sizes(text: str, batch_size: int) -> list[int]:
    """The batch sizes `--scaling` names as multiples of `batch_size` (empty: none), at least two distinct
    ones of at least one event each."""
    try:
        multiples = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--scaling: expected comma-separated multiples of the batch size, got '{text}'") from None
    sizes = sorted({round(multiple * batch_size) for multiple in multiples if math.isfinite(multiple)})
    if multiples and (len(sizes) < len(multiples) or len(sizes) < 2 or sizes[0] < 1):
        raise UserError(f"--scaling: a line needs at least two distinct batch sizes of at least one event, got "
                        f"'{text}' of batch size {batch_size}")
    return sizes


def run(args: argparse.Namespace) -> dict:
    """Where the time of a sequential training step goes, for each requested case."""
    if args.batches < 1 or args.warmup < 0 or args.scaling_rounds < 1:
        raise UserError(f"--batches and --scaling-rounds must be positive and --warmup non-negative, got "
                        f"{args.batches}, {args.scaling_rounds}, {args.warmup}")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPARE_CASES]
    if unknown or not names:
        raise UserError(f"--cases: unknown case '{','.join(unknown)}' (known: {', '.join(COMPARE_CASES)})")
    for name in names:  # a bad --scaling fails before any case is timed
        scaling_sizes(args.scaling, COMPARE_CASES[name]["batch_size"])
    plan = configure_process(args.threads)
    return {
        "benchmark": "breakdown", "dataset": ",".join(names), "command": " ".join(sys.argv),
        "commit": git_commit(), "torch_threads": plan.intra_op, "batches": args.batches, "warmup": args.warmup,
        "note": "stage times from an unprofiled pass; forward/backward/optimizer split the train time in the "
                "proportions torch.profiler measured on the following batches; aten_ops, host_syncs and "
                "matmul_gflop are per train step, matmul_gflop_per_s is their FLOPs over their own CPU time, "
                "all from that profile; fixed_train_ms and train_us_per_event, with --scaling, are the line "
                "through the train stage's median ms at those batch sizes",
        "versions": library_versions(),
        "machine": machine(),
        "results": [breakdown_case(name, args) for name in names],
    }
