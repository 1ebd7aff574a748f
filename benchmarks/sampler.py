"""`sampler`: temporal neighbour sampling throughput on one core, walking the event stream in time order in
batches of roots (src, dst, one random negative dst per event): the raw neighbour finding alone, then the
full `TemporalSampler.sample()` including DGL block construction.

    python scripts/benchmark.py sampler --data wikipedia --out runs/bench_sampler.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from _cli import add_data_arguments, load_data
from benchmarks.shared import add_parser, library_versions, machine
from common.errors import UserError
from graph.events import EventStream
from graph.negatives import batch_seed, sample_negatives
from graph.split import chronological_batches
from sampler import TCSR, TemporalSampler

Step = Callable[[int, np.ndarray, np.ndarray], int]  # (batch index, roots, root times) -> edges sampled

CASES = [  # (stage, strategy, fanouts): "find" = neighbour finding only, "sample" = with blocks
    ("find", "recent", [10]),
    ("find", "uniform", [10]),
    ("sample", "recent", [10]),
    ("sample", "recent", [10, 10]),
    ("sample", "uniform", [10]),
]
TABLE = ["case", "roots", "edges", "roots_per_s", "edges_per_s", "us_per_batch"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `sampler` subcommand and its options."""
    parser = add_parser(commands, "sampler", "temporal neighbour sampling throughput (roots/s)", __doc__)
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--batch", type=int, default=600, help="events per batch (3 roots per event)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the whole stream per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negatives and the uniform draws")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def root_batches(events: EventStream, batch_size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch of events in time order: roots [src, dst, negative dst] and their times."""
    candidates = np.unique(events.dst)
    batches = []
    for index, rows in enumerate(chronological_batches(np.arange(events.num_events), batch_size)):
        negatives = sample_negatives(candidates, len(rows), batch_seed(seed, 0, index))
        roots = np.concatenate([events.src[rows], events.dst[rows], negatives])
        batches.append((roots, np.tile(events.t[rows], 3)))
    return batches


def find_step(sampler: TemporalSampler, seed: int) -> Step:
    """Neighbour finding alone (T-CSR search and selection, no blocks) for the sampler's top layer."""
    fanout = sampler.fanouts[-1]

    def step(index: int, roots: np.ndarray, times: np.ndarray) -> int:
        rng = np.random.default_rng(seed + index) if sampler.strategy == "uniform" else None
        return len(sampler.find_neighbours(roots, times, fanout, rng).entry)

    return step


def sample_step(sampler: TemporalSampler, seed: int) -> Step:
    """The full `sample()`, all layers, DGL block construction included."""

    def step(index: int, roots: np.ndarray, times: np.ndarray) -> int:
        return sum(block.num_edges() for block in sampler.sample(roots, times, seed=seed + index))

    return step


STEPS = {"find": find_step, "sample": sample_step}


def timed_passes(step: Step, batches: list, repeat: int) -> Iterator[tuple[float, int]]:
    """(seconds, edges) of `repeat` full passes over the batches, after one warm-up batch."""
    step(0, *batches[0])
    for _ in range(repeat):
        begin, edges = time.perf_counter(), 0
        for index, (roots, times) in enumerate(batches):
            edges += step(index, roots, times)
        yield time.perf_counter() - begin, edges


def run(args: argparse.Namespace) -> dict:
    """Roots/s of neighbour finding and of full block sampling, for each case of CASES."""
    if args.batch < 1 or args.repeat < 1:
        raise UserError(f"--batch and --repeat must be positive, got {args.batch} and {args.repeat}")
    torch.set_num_threads(1)
    events = load_data(args)
    begin = time.perf_counter()
    tcsr = TCSR.from_events(events.src, events.dst, events.t, events.num_nodes)
    build_s = time.perf_counter() - begin
    batches = root_batches(events, args.batch, args.seed)
    num_roots = sum(len(roots) for roots, _ in batches)
    rows = []
    for stage, strategy, fanouts in CASES:
        step = STEPS[stage](TemporalSampler(tcsr, fanouts, strategy, args.seed), args.seed)
        passes = list(timed_passes(step, batches, args.repeat))
        best_s = min(seconds for seconds, _ in passes)
        rows.append({
            "case": f"{stage} {strategy} {'x'.join(map(str, fanouts))}",
            "stage": stage, "strategy": strategy, "fanouts": fanouts,
            "roots": num_roots, "edges": passes[0][1],
            "best_s": best_s, "median_s": statistics.median(seconds for seconds, _ in passes),
            "roots_per_s": num_roots / best_s, "edges_per_s": passes[0][1] / best_s,
            "us_per_batch": best_s / len(batches) * 1e6,
        })
    return {
        "benchmark": "sampler", "dataset": events.name, "num_events": events.num_events,
        "num_nodes": events.num_nodes, "batch": args.batch, "num_batches": len(batches), "repeat": args.repeat,
        "torch_threads": torch.get_num_threads(), "tcsr_nnz": len(tcsr.nbr), "tcsr_build_s": build_s,
        "versions": library_versions(),
        "machine": machine(),
        "results": rows,
    }
