"""Benchmarks, one subcommand each; every run writes a JSON file (--out) and prints a table.

    python scripts/benchmark.py sampler --data wikipedia --out runs/bench_sampler.json

    python scripts/benchmark.py train --data wikipedia --model tgn --modes sequential,presample,mspipe \
        --edge-feat-dim 172 --epochs 2 --repeat 3 --out runs/bench_train.json

`sampler`: temporal neighbour sampling throughput on one core, walking the event stream in time order in
batches of roots (src, dst, one random negative dst per event): the raw neighbour finding alone, then the
full `TemporalSampler.sample()` including DGL block construction.

`train`: training throughput of pipeline modes side by side in one invocation (same data, seed and
epochs; the variants alternate, run after run): events/s, speedup over the first mode (ratio of the means,
and the median of the ratios of runs made one after the other), test AP, measured
stage times, staleness bound `k`, the staleness seen, the ideal pipeline speedup
`min(sum(tau) / max(tau), cores)` from that mode's own stage times, and for `auto` the mode it chose in
each run. Variants beyond the five modes make the ablation: `mspipe-no-delay` (memory fetched as soon
as allowed), `mspipe-mitigation` / `mspipe-mitigation-coneighbour` (staleness mitigation on), and
`fixed-k` expanded over `--k`.

    python scripts/benchmark.py soak --data wikipedia --mode mspipe --epochs 10 --out runs/bench_soak.json

`soak`: one long training run, with this process's resident memory (RSS) sampled in the background and
closed off at every epoch's checkpoint: RSS at the epoch's end and the highest RSS seen during it. The
memory counts as stable (`memory_stable`) when the last epoch's RSS is within 5% or 50 MB of epoch 2's
(epoch 1 still grows caches and allocator pools).

    python scripts/benchmark.py compare --cases uci,wikipedia172 --epochs 2 --repeat 3 --out runs/bench_compare.json

`compare`: this project's TGN (sequential mode) against a PyTorch Geometric TGN written after PyG's
examples/tgn.py (scripts/pyg_reference.py; needs `pip install -e .[bench]`), on the same events, split and
negatives, with the same dimensions, neighbours, epochs and threads. Every run is a fresh process (the
internal `compare-run` subcommand, one system after the other, then again), so its peak RSS is its own:
training events/s, peak RSS, the RSS training added, test AP (ours: of the best epoch by validation AP, as
the trainer reports it; PyG: after the last epoch), page faults and kernel CPU seconds of the whole run,
and the ratios to PyG of the means. Each system runs twice over: `ours` with the allocator policy
scripts/train.py sets (scripts/_allocator.py) and `ours-malloc-defaults` without it; `pyg` as PyG's
users run it and `pyg+keep-freed` with our policy. So the table separates what the policy gives from what
the rest of the training step does. `other_cpu_load`
is how many cores other processes kept busy during a run: well above 0 on a 2-core machine, the run was
slowed by them and its events/s should not be trusted.

    python scripts/benchmark.py breakdown --cases uci,wikipedia172 --batches 50 --out runs/bench_breakdown.json

`breakdown`: where a sequential training step's time goes on the `compare` cases: milliseconds per batch
of each stage (an unprofiled pass), and the train stage split into forward, backward and optimizer step in
the proportions torch.profiler measures on the following batches. The JSON names the commit it measured.

    python scripts/benchmark.py accuracy --configs configs/dyglib/tgn.yml --data uci,enron --seeds 0,1,2 \
        --epochs 10 --jobs 2 --out runs/bench_accuracy.json

`accuracy`: trains each config on each dataset with each seed (`scripts/train.py`, one thread per run,
`--jobs` runs at once) and records every validation and test metric of the best epoch, with mean and
standard deviation over seeds: under each negative strategy the configs' `eval.negatives` lists.
`--variant 'NAME:KEY=VALUE;KEY=VALUE'` (repeatable) runs every config once per variant, with those
overrides (`train.py --set`): an ablation in one JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import gc
import itertools
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _cli import add_data_arguments, configure_process, load_data  # first: Ctrl-C while importing is `interrupted`

import dgl
import numpy as np
import torch

import pyg_reference
from common.errors import UserError
from graph.datasets import load_dataset
from graph.events import EventStream, event_stream_from_raw
from graph.negatives import batch_seed, sample_negatives
from graph.split import chronological_split
from graph.synthetic import with_random_edge_features
from pipeline.engine.runner import STAGES
from pipeline.stages.link_prediction import TRAIN_STEP_PARTS, LinkPredictionStages
from _allocator import keep_freed_memory
from _threads import available_cores, configure_threads
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import MODES, apply_overrides, load_config, parse_settings
from pipeline.run.setup import build_setup, training_stages
from pipeline.run.trainer import train
from sampler import TCSR, TemporalSampler

REPO = Path(__file__).resolve().parents[1]

Step = Callable[[int, np.ndarray, np.ndarray], int]  # (batch index, roots, root times) -> edges sampled

SAMPLER_CASES = [  # (stage, strategy, fanouts): "find" = neighbour finding only, "sample" = with blocks
    ("find", "recent", [10]),
    ("find", "uniform", [10]),
    ("sample", "recent", [10]),
    ("sample", "recent", [10, 10]),
    ("sample", "uniform", [10]),
]
SAMPLER_TABLE = ["case", "roots", "edges", "roots_per_s", "edges_per_s", "us_per_batch"]

TRAIN_VARIANTS: dict[str, dict] = {  # variant name -> config overrides
    "sequential": {"pipeline.mode": "sequential"},
    "presample": {"pipeline.mode": "presample"},
    "mspipe": {"pipeline.mode": "mspipe"},
    "auto": {"pipeline.mode": "auto"},
    "mspipe-no-delay": {"pipeline.mode": "mspipe", "pipeline.delayed_fetch": False},
    "mspipe-mitigation": {"pipeline.mode": "mspipe", "pipeline.mitigation.enabled": True},
    "mspipe-mitigation-coneighbour": {"pipeline.mode": "mspipe", "pipeline.mitigation.enabled": True,
                                      "pipeline.mitigation.similarity": "coneighbour"},
}
TRAIN_TABLE = ["variant", "events_per_s", "speedup", "speedup_median", "ideal_speedup", "test_ap", "k",
               "staleness_mean", "staleness_max", "train_busy", *(f"{stage}_ms" for stage in STAGES)]
ACCURACY_TABLE = ["config", "variant", "dataset", "seeds", "val_ap_mean", "test_ap_mean", "test_ap@historical_mean",
                  "test_ap@inductive_mean", "test_auc_mean", "test_auc@historical_mean", "test_auc@inductive_mean",
                  "test_mrr_all_mean", "val_repeat_ap_mean", "test_repeat_ap_mean", "val_new_ap_mean", "test_new_ap_mean"]
ATTENTION_TABLE = ["roots", "edges", "dgl_ms", "torch_ms", "torch_over_dgl"]
SOAK_TABLE = ["epoch", "rss_mb", "peak_rss_mb", "epoch_s", "test_ap"]
SOAK_GROWTH_FRACTION = 0.05  # the last epoch's RSS may exceed epoch 2's by this share ...
SOAK_GROWTH_MB = 50.0  # ... or by this many MB, whichever is larger

# system -> (this project's trainer, not PyG's reference; freed memory kept for reuse): ours as scripts/train.py
# runs it and with glibc's default allocator, PyG's reference as its users run it and with our allocator policy
COMPARE_SYSTEMS: dict[str, tuple[bool, bool]] = {
    "ours": (True, True), "ours-malloc-defaults": (True, False), "pyg": (False, False), "pyg+keep-freed": (False, True),
}
COMPARE_CASES: dict[str, dict] = {  # case -> data, random edge feature width, batch size, our config
    "uci": {"data": "uci", "edge_feat_dim": 0, "batch_size": 200, "config": "configs/dyglib/tgn.yml"},
    "wikipedia172": {"data": "wikipedia", "edge_feat_dim": 172, "batch_size": 600, "config": "configs/tgn.yml"},
}
BREAKDOWN_TABLE = ["case", "events_per_s", *(f"{stage}_ms" for stage in STAGES), "forward_ms", "backward_ms",
                   "optimizer_ms"]
COMPARE_DIM = 100  # memory, time encoding and embedding width on both sides
COMPARE_NEIGHBOURS = 10  # most recent neighbours attended to, on both sides
COMPARE_TABLE = ["case", "system", "events_per_s", "events_per_s_vs_pyg", "peak_rss_mb", "peak_rss_vs_pyg",
                 "train_rss_mb", "test_ap", "val_ap", "page_faults", "kernel_cpu_s", "other_cpu_load"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line with one subcommand per benchmark; each sets `run` (the function that performs it,
    returning a JSON-able dict with a "results" list of rows) and `table` (the row keys to print)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{sampler,train,soak,compare,breakdown,accuracy,attention}")
    add_sampler_command(commands)
    add_train_command(commands)
    add_soak_command(commands)
    add_compare_command(commands)
    add_breakdown_command(commands)
    add_accuracy_command(commands)
    add_attention_command(commands)
    return parser.parse_args(argv)


def add_training_arguments(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    """Options of the subcommands that train: epochs, batch size, seed, threads and the output file."""
    parser.add_argument("--epochs", type=int, default=default_epochs, help="epochs of each run")
    parser.add_argument("--batch-size", type=int, default=None, help="override train/eval batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU cores torch may use (default: all)")
    parser.add_argument("--out", required=True, help="JSON file for the results")


def add_sampler_command(commands: argparse._SubParsersAction) -> None:
    """The `sampler` subcommand and its options."""
    parser = commands.add_parser("sampler", help="temporal neighbour sampling throughput (roots/s)")
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--batch", type=int, default=600, help="events per batch (3 roots per event)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the whole stream per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negatives and the uniform draws")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=benchmark_sampler, table=SAMPLER_TABLE)


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The `train` subcommand and its options."""
    parser = commands.add_parser("train", help="training throughput and accuracy of pipeline modes side by side")
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--model", default="tgn", help="a config in configs/ (tgn, jodie, apan) or a YAML path")
    parser.add_argument("--modes", default="sequential,presample,mspipe",
                        help=f"comma-separated variants: {', '.join(TRAIN_VARIANTS)}, fixed-k")
    parser.add_argument("--k", default="1,2,4,8", help="staleness bounds for the fixed-k variant")
    parser.add_argument("--edge-feat-dim", type=int, default=0,
                        help="add random edge features of this width (172 = TGL's Wikipedia features)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the table shows the mean")
    add_training_arguments(parser, default_epochs=2)
    parser.set_defaults(run=benchmark_train, table=TRAIN_TABLE)


def add_soak_command(commands: argparse._SubParsersAction) -> None:
    """The `soak` subcommand and its options."""
    parser = commands.add_parser("soak", help="memory growth of one long training run (RSS after every epoch)")
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--config", default=str(REPO / "configs" / "tgn.yml"), help="YAML model/run config")
    parser.add_argument("--mode", choices=MODES, default="mspipe", help="pipeline mode")
    add_training_arguments(parser, default_epochs=5)
    parser.set_defaults(run=benchmark_soak, table=SOAK_TABLE)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that `compare` passes on to every `compare-run`."""
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, negatives, features and weights")
    parser.add_argument("--max-events", type=int, default=None,
                        help="train on the first N events of each dataset only (quick checks)")


def add_compare_command(commands: argparse._SubParsersAction) -> None:
    """The `compare` subcommand and the internal `compare-run` (one run, one JSON line on stdout)."""
    parser = commands.add_parser("compare", help="this project's TGN against PyTorch Geometric's, side by side")
    parser.add_argument("--cases", default=",".join(COMPARE_CASES),
                        help=f"comma-separated cases: {', '.join(COMPARE_CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system and case, alternating systems")
    add_compare_arguments(parser)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=benchmark_compare, table=COMPARE_TABLE)
    run = commands.add_parser("compare-run")  # internal: no help, so it is not listed
    run.add_argument("--system", choices=list(COMPARE_SYSTEMS), required=True)
    run.add_argument("--case", choices=list(COMPARE_CASES), required=True)
    add_compare_arguments(run)
    run.set_defaults(run=compare_run, table=None, out=None)


def add_accuracy_command(commands: argparse._SubParsersAction) -> None:
    """The `accuracy` subcommand and its options."""
    parser = commands.add_parser("accuracy", help="test AP/AUC over seeds under each negative strategy")
    parser.add_argument("--configs", default="configs/dyglib/tgn.yml,configs/dyglib/jodie.yml",
                        help="comma-separated config files")
    parser.add_argument("--data", default="uci,enron", help="comma-separated datasets")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs of every config")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="a named set of config overrides every config also runs with, e.g. "
                             "'batch:memory.update_time=batch' (repeatable; none: each config as it is)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--runs-dir", default="runs/accuracy", help="where each run writes its directory")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=benchmark_accuracy, table=ACCURACY_TABLE)


def add_attention_command(commands: argparse._SubParsersAction) -> None:
    """The `attention` subcommand and its options."""
    parser = commands.add_parser("attention", help="the attention's message passing: DGL kernels against torch ops")
    parser.add_argument("--roots", default="600,1800",
                        help="comma-separated roots per batch (600: UCI at batch 200; 1800: Wikipedia at batch 600)")
    parser.add_argument("--fanout", type=int, default=10, help="neighbours per root")
    parser.add_argument("--repeat", type=int, default=15, help="timed steps per implementation, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=benchmark_attention, table=ATTENTION_TABLE)


def add_breakdown_command(commands: argparse._SubParsersAction) -> None:
    """The `breakdown` subcommand and its options."""
    parser = commands.add_parser("breakdown", help="where a sequential training step's time goes, stage by stage")
    parser.add_argument("--cases", default=",".join(COMPARE_CASES),
                        help=f"comma-separated cases: {', '.join(COMPARE_CASES)}")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per case (twice: plain, profiled)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=benchmark_breakdown, table=BREAKDOWN_TABLE)


def train_variants(modes: str, ks: str) -> dict[str, dict]:
    """Variant name -> config overrides for the requested `--modes` (fixed-k expanded over `--k`)."""
    variants: dict[str, dict] = {}
    for mode in (m.strip() for m in modes.split(",") if m.strip()):
        if mode == "fixed-k":
            try:
                bounds = [int(k) for k in ks.split(",")]
            except ValueError:
                raise UserError(f"--k: expected comma-separated integers, got '{ks}'") from None
            variants.update({f"fixed-k={k}": {"pipeline.mode": "fixed-k", "pipeline.k": k} for k in bounds})
        elif mode in TRAIN_VARIANTS:
            variants[mode] = TRAIN_VARIANTS[mode]
        else:
            raise UserError(f"--modes: unknown variant '{mode}' (known: {', '.join(TRAIN_VARIANTS)}, fixed-k)")
    if not variants:
        raise UserError("--modes: no variant given")
    return variants


def ideal_speedup(stage_time_s: dict[str, float], cores: int) -> float:
    """Upper bound of a pipeline's speedup: sum of the stage times over the largest, capped by the cores."""
    taus = [stage_time_s[stage] for stage in STAGES]
    return min(sum(taus) / max(taus), cores) if max(taus) > 0 else 1.0


def summarize_runs(name: str, runs: list[dict], cores: int) -> dict:
    """One table row: the mean over repeated runs of one variant, with the spread of its throughput."""
    stage_s = {stage: statistics.mean(r["stage_time_s"][stage] for r in runs) for stage in STAGES}
    throughput = [r["train_events_per_s"] for r in runs]
    return {
        "variant": name,
        "events_per_s": statistics.mean(throughput),
        "events_per_s_runs": throughput,
        "test_ap": statistics.mean(r["test_ap"] for r in runs),
        "test_ap_runs": [r["test_ap"] for r in runs],
        "k": statistics.mean(r["staleness"]["k"] for r in runs),
        "staleness_mean": statistics.mean(r["staleness"]["mean_seen"] for r in runs),
        "staleness_max": max(r["staleness"]["max_seen"] for r in runs),
        "train_busy": statistics.mean(r["pipeline_utilization"] for r in runs),
        "ideal_speedup": ideal_speedup(stage_s, cores),
        "auto_modes": [r["auto"]["mode"] for r in runs if "auto" in r],
        **{f"{stage}_ms": 1000 * seconds for stage, seconds in stage_s.items()},
    }


def benchmark_train(args: argparse.Namespace) -> dict:
    """Train every requested variant `--repeat` times on the same data and seed; one row per variant."""
    if args.epochs < 1 or args.repeat < 1:
        raise UserError(f"--epochs and --repeat must be positive, got {args.epochs} and {args.repeat}")
    variants = train_variants(args.modes, args.k)
    config_path = Path(args.model) if args.model.endswith((".yml", ".yaml")) else REPO / "configs" / f"{args.model}.yml"
    base = apply_overrides(load_config(config_path), {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "eval.batch_size": args.batch_size})
    events = load_data(args)
    if args.edge_feat_dim > 0:
        events = with_random_edge_features(events, args.edge_feat_dim, args.seed)
    plan = configure_process(args.threads)
    cores = args.threads or available_cores()
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        for repeat in range(args.repeat):  # variants alternate, so a slow spell of the machine hits each alike
            for name, overrides in variants.items():
                out = Path(scratch) / f"{name}-{repeat}"
                out.mkdir()
                result = train(apply_overrides(base, overrides), events, out, torch.device("cpu"), args.seed,
                               show_progress=False)
                runs[name].append(result)
                print(f"{name} run {repeat + 1}: {result['train_events_per_s']:.0f} events/s, test AP "
                      f"{result['test_ap']:.4f}", flush=True)
    rows = [summarize_runs(name, measured, cores) for name, measured in runs.items()]
    reference = rows[0]["events_per_s_runs"]
    for row in rows:
        row["speedup"] = row["events_per_s"] / statistics.mean(reference)
        row["speedup_runs"] = [mine / theirs for mine, theirs in zip(row["events_per_s_runs"], reference)]
        row["speedup_median"] = statistics.median(row["speedup_runs"])
    return {
        "benchmark": "train", "dataset": events.name, "model": base.model, "num_events": events.num_events,
        "edge_feat_dim": args.edge_feat_dim, "epochs": args.epochs, "repeat": args.repeat, "seed": args.seed,
        "batch_size": base.train.batch_size, "cores": cores, "torch_threads": plan.intra_op,
        "speedup_reference": rows[0]["variant"], "command": " ".join(sys.argv), "commit": git_commit(),
        "versions": library_versions(),
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }


def root_batches(events: EventStream, batch_size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch of events in time order: roots [src, dst, negative dst] and their times."""
    candidates = np.unique(events.dst)
    batches = []
    for index, begin in enumerate(range(0, events.num_events, batch_size)):
        rows = slice(begin, begin + batch_size)
        size = len(events.src[rows])
        negatives = sample_negatives(candidates, size, batch_seed(seed, 0, index))
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


def benchmark_sampler(args: argparse.Namespace) -> dict:
    """Roots/s of neighbour finding and of full block sampling, for each case of SAMPLER_CASES."""
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
    for stage, strategy, fanouts in SAMPLER_CASES:
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
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }


def resident_mb() -> float:
    """This process's current resident set size in MB (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mb() -> float:
    """The highest resident set size this process has had so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used so far (Linux /proc/stat: all but idle and iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has used so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def file_version(path: Path) -> tuple[int, int] | None:
    """Identity of the file now at `path` (inode, mtime), which an atomic replace changes; None if absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


class EpochMemoryMonitor(threading.Thread):
    """Samples this process's RSS every `interval_s` while a run trains; the trainer replacing `checkpoint`
    (once per epoch) closes an epoch's record: RSS at its end and the highest RSS sampled during it."""

    def __init__(self, checkpoint: Path, interval_s: float = 0.1) -> None:
        super().__init__(name="soak-memory-monitor", daemon=True)
        self.checkpoint = checkpoint
        self.interval_s = interval_s
        self.epochs: list[dict[str, float]] = []
        self.finished = threading.Event()
        self._last_version: tuple[int, int] | None = None
        self._peak = 0.0

    def run(self) -> None:
        while True:
            finishing = self.finished.wait(self.interval_s)
            self._sample()
            if finishing:
                return

    def _sample(self) -> None:
        rss = resident_mb()
        self._peak = max(self._peak, rss)
        version = file_version(self.checkpoint)
        if version is not None and version != self._last_version:
            self.epochs.append({"epoch": len(self.epochs) + 1, "rss_mb": rss, "peak_rss_mb": self._peak})
            self._last_version, self._peak = version, rss


def memory_verdict(epochs: list[dict[str, float]]) -> dict:
    """Did memory stop growing? The last epoch's RSS against epoch 2's, with the soak tolerance."""
    reference, last = epochs[1]["rss_mb"], epochs[-1]["rss_mb"]
    limit = max(SOAK_GROWTH_FRACTION * reference, SOAK_GROWTH_MB)
    return {"rss_epoch2_mb": reference, "rss_last_mb": last, "rss_growth_mb": last - reference,
            "rss_growth_limit_mb": limit, "memory_stable": last - reference <= limit}


def benchmark_soak(args: argparse.Namespace) -> dict:
    """Train one `--epochs` run as a user would and report the RSS of every epoch and whether it grew."""
    if args.epochs < 2:
        raise UserError(f"--epochs must be at least 2 (epoch 2 is the reference), got {args.epochs}")
    cfg = apply_overrides(load_config(args.config), {
        "train.epochs": args.epochs, "train.patience": 0, "pipeline.mode": args.mode,
        "train.batch_size": args.batch_size, "eval.batch_size": args.batch_size})
    events = load_data(args)
    plan = configure_process(args.threads)
    gc.collect()
    start_mb = resident_mb()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch:
        monitor = EpochMemoryMonitor(Path(scratch) / CHECKPOINT_NAME)
        monitor.start()
        try:
            results = train(cfg, events, Path(scratch), torch.device("cpu"), args.seed, show_progress=False)
        finally:
            monitor.finished.set()
            monitor.join()
    rows = [{**epoch, "epoch_s": history["epoch_time_s"], "test_ap": history["test_ap"]}
            for epoch, history in zip(monitor.epochs, results["history"])]
    verdict = memory_verdict(rows)
    print(f"RSS epoch 2 {verdict['rss_epoch2_mb']:.0f} MB, last {verdict['rss_last_mb']:.0f} MB "
          f"(limit +{verdict['rss_growth_limit_mb']:.0f} MB): {'stable' if verdict['memory_stable'] else 'GROWING'}",
          flush=True)
    return {
        "benchmark": "soak", "dataset": events.name, "model": cfg.model, "mode": args.mode,
        "num_events": events.num_events, "epochs": args.epochs, "seed": args.seed,
        "batch_size": cfg.train.batch_size, "torch_threads": plan.intra_op,
        "rss_before_training_mb": start_mb, "peak_rss_mb": peak_resident_mb(), **verdict,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }


def first_events(events: EventStream, count: int) -> EventStream:
    """The stream's first `count` events, with the nodes renumbered to those that occur in them (the
    inductive split masks a share of all nodes, which must not count nodes of the dropped events)."""
    rows = slice(0, count)
    head = event_stream_from_raw(
        events.name, events.src[rows], events.dst[rows], events.t[rows], source=events.name,
        edge_feat=None if events.edge_feat is None else events.edge_feat[rows], raw_node_feat=events.node_feat,
        ext_roll=None if events.ext_roll is None else events.ext_roll[rows])
    return dataclasses.replace(head, node_ids=events.node_ids[head.node_ids])


def compare_events(case: dict, max_events: int | None, seed: int) -> EventStream:
    """The event stream of a `compare` case, cut to `max_events` when given."""
    events = load_dataset(case["data"])
    if max_events is not None:
        events = first_events(events, max_events)
    if case["edge_feat_dim"] > 0:
        events = with_random_edge_features(events, case["edge_feat_dim"], seed)
    return events


def our_config(case: dict, epochs: int) -> dict:
    """This project's TGN config of a `compare` case: sequential mode, every epoch (no early stopping)."""
    return apply_overrides(load_config(REPO / case["config"]), {
        "pipeline.mode": "sequential", "train.epochs": epochs, "train.patience": 0,
        "train.batch_size": case["batch_size"], "eval.batch_size": case["batch_size"],
        "memory.dim": COMPARE_DIM, "memory.dim_time": COMPARE_DIM, "embedding.dim_out": COMPARE_DIM,
        "embedding.dim_time": COMPARE_DIM, "sampler.fanouts": [COMPARE_NEIGHBOURS]})


def train_ours(case: dict, events: EventStream, args: argparse.Namespace) -> dict:
    """One run of this project's TGN in sequential mode, every epoch (no early stopping)."""
    cfg = our_config(case, args.epochs)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        results = train(cfg, events, Path(scratch), torch.device("cpu"), args.seed, show_progress=False)
    return {key: results[key] for key in ("train_events_per_s", "epoch_time_s", "val_ap", "test_ap")}


def train_pyg(case: dict, events: EventStream, args: argparse.Namespace) -> dict:
    """One run of the PyG reference on the split our trainer uses (default ratios, same seed)."""
    results = pyg_reference.train_pyg_tgn(
        events, chronological_split(events, seed=args.seed), batch_size=case["batch_size"], epochs=args.epochs,
        memory_dim=COMPARE_DIM, time_dim=COMPARE_DIM, embedding_dim=COMPARE_DIM, neighbours=COMPARE_NEIGHBOURS,
        seed=args.seed)
    return {key: results[key] for key in ("train_events_per_s", "epoch_time_s", "val_ap", "test_ap", "pyg_version")}


def compare_run(args: argparse.Namespace) -> dict:
    """`compare-run`: train one system once in this process; its RSS is the run's own. Training's progress
    lines go to stderr, so stdout carries only the result line `main` prints."""
    if args.epochs < 1 or (args.max_events is not None and args.max_events < 1):
        raise UserError(f"--epochs and --max-events must be positive, got {args.epochs} and {args.max_events}")
    ours, keeps_freed = COMPARE_SYSTEMS[args.system]
    if not ours:
        pyg_reference.require_pyg()
    case = COMPARE_CASES[args.case]
    events = compare_events(case, args.max_events, args.seed)
    if ours:
        configure_threads(args.threads)
    else:
        torch.set_num_threads(args.threads)
    if keeps_freed:
        keep_freed_memory()
    gc.collect()
    before_mb = resident_mb()
    began, busy_before, own_before = time.perf_counter(), busy_cpu_s(), own_cpu_s()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    with contextlib.redirect_stdout(sys.stderr):
        results = (train_ours if ours else train_pyg)(case, events, args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    other_cpu_s = (busy_cpu_s() - busy_before) - (own_cpu_s() - own_before)
    peak_mb = peak_resident_mb()
    return {"system": args.system, "case": args.case, "dataset": events.name, "num_events": events.num_events,
            "torch_threads": torch.get_num_threads(), **results, "rss_before_training_mb": before_mb,
            "peak_rss_mb": peak_mb, "train_rss_mb": peak_mb - before_mb,
            "page_faults": usage.ru_minflt - usage_before.ru_minflt,
            "kernel_cpu_s": usage.ru_stime - usage_before.ru_stime,
            "other_cpu_load": max(other_cpu_s, 0.0) / (time.perf_counter() - began)}


def launch_compare_run(system: str, case: str, args: argparse.Namespace) -> dict:
    """Run `compare-run` in a fresh interpreter and return its result line; its stderr passes through."""
    command = [sys.executable, str(Path(__file__).resolve()), "compare-run", "--system", system, "--case", case,
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.max_events is not None:
        command += ["--max-events", str(args.max_events)]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if done.returncode == 2:
        raise UserError(f"{system} on {case}: the run failed (its error is above)")
    done.check_returncode()
    return json.loads(done.stdout)


def summarize_system(runs: list[dict]) -> dict:
    """Means and per-run lists of one system's runs of one case."""
    summary = {}
    for key in ("train_events_per_s", "peak_rss_mb", "train_rss_mb", "test_ap", "val_ap", "page_faults",
                "kernel_cpu_s", "other_cpu_load"):
        values = [run[key] for run in runs]
        name = "events_per_s" if key == "train_events_per_s" else key
        summary[name], summary[f"{name}_runs"] = statistics.mean(values), values
    return summary


def benchmark_compare(args: argparse.Namespace) -> dict:
    """Alternate fresh `compare-run` processes, one per system in turn, `--repeat` times per case; one row
    per case and system, each with the ratios to PyG (as its users run it) of the mean events/s and of the
    mean peak RSS."""
    pyg = pyg_reference.require_pyg()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in COMPARE_CASES]
    if not cases or unknown:
        raise UserError(f"--cases: unknown or no case '{','.join(unknown)}' (known: {', '.join(COMPARE_CASES)})")
    if args.epochs < 1 or args.repeat < 1 or args.threads < 1:
        raise UserError(f"--epochs, --repeat and --threads must be positive, got {args.epochs}, {args.repeat} "
                        f"and {args.threads}")
    rows = []
    for case in cases:
        runs: dict[str, list[dict]] = {system: [] for system in COMPARE_SYSTEMS}
        for repeat in range(args.repeat):
            for system in COMPARE_SYSTEMS:
                runs[system].append(launch_compare_run(system, case, args))
                run = runs[system][-1]
                print(f"{case} {system} run {repeat + 1}/{args.repeat}: {run['train_events_per_s']:.0f} events/s, "
                      f"peak RSS {run['peak_rss_mb']:.0f} MB, test AP {run['test_ap']:.4f}, "
                      f"other processes' CPU load {run['other_cpu_load']:.2f} cores", flush=True)
        summaries = {system: summarize_system(runs[system]) for system in COMPARE_SYSTEMS}
        for system in COMPARE_SYSTEMS:
            rows.append({
                "case": case, "system": system, "dataset": runs[system][0]["dataset"],
                "num_events": runs[system][0]["num_events"], "batch_size": COMPARE_CASES[case]["batch_size"],
                **summaries[system],
                "events_per_s_vs_pyg": summaries[system]["events_per_s"] / summaries["pyg"]["events_per_s"],
                "peak_rss_vs_pyg": summaries[system]["peak_rss_mb"] / summaries["pyg"]["peak_rss_mb"],
                "runs": runs[system],
            })
    return {
        "benchmark": "compare", "dataset": ",".join(cases), "cases": {c: COMPARE_CASES[c] for c in cases},
        "epochs": args.epochs, "repeat": args.repeat, "seed": args.seed, "max_events": args.max_events,
        "dim": COMPARE_DIM, "neighbours": COMPARE_NEIGHBOURS, "torch_threads": args.threads,
        "cores": available_cores(),
        "versions": {**library_versions(), "torch_geometric": pyg.__version__},
        "machine": platform.processor() or platform.machine(),
        "command": " ".join(sys.argv), "commit": git_commit(),
        "results": rows,
    }


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


def benchmark_breakdown(args: argparse.Namespace) -> dict:
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
        "machine": platform.processor() or platform.machine(),
        "results": [breakdown_case(name, args) for name in names],
    }


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:KEY=VALUE;KEY=VALUE` as the variant's name and its `--set` overrides (checked by `parse_settings`)."""
    name, sep, settings = text.partition(":")
    if not sep or not name.strip():
        raise UserError(f"--variant: '{text}' is not NAME:KEY=VALUE;... (e.g. 'batch:memory.update_time=batch')")
    overrides = [setting.strip() for setting in settings.split(";") if setting.strip()]
    parse_settings(overrides, f"--variant {name.strip()}")
    return name.strip(), overrides


def accuracy_run(config: str, variant: tuple[str, list[str]], data: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one (config, variant, dataset, seed) in its own process on one thread; its results.json metrics."""
    name, overrides = variant
    out = Path(args.runs_dir) / "_".join(filter(None, (Path(config).stem, name, data, f"s{seed}")))
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", config, "--data", data,
               "--seed", str(seed), "--threads", "1", "--no-progress", "--overwrite", "--out", str(out)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    for setting in overrides:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(command[1:])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"config": config, "variant": name, "overrides": overrides, "dataset": data, "seed": seed,
            **run_summary(json.loads((out / "results.json").read_text()))}


def run_summary(results: dict) -> dict:
    """What `accuracy` keeps of a run's results.json: its best epoch's metrics, and the staleness it trained
    with (mean staleness seen, roots mitigated per epoch; None and [] for a baseline, which does not train)."""
    metrics = {key: value for key, value in results.items()
               if isinstance(value, float) and key.startswith(("val_", "test_"))}
    staleness = results.get("staleness")
    return {"model": results["model"], "epochs": results["epochs"], "best_epoch": results["best_epoch"],
            "staleness_mean_seen": staleness["mean_seen"] if staleness else None,
            "mitigated_roots": [epoch["mitigated_roots"] for epoch in results.get("history", [])], **metrics}


def benchmark_accuracy(args: argparse.Namespace) -> dict:
    """Every (config, dataset, seed) trained to its best validation epoch, `--jobs` at a time, with the
    mean and standard deviation over seeds of every validation and test metric."""
    variants = [parse_variant(text) for text in args.variant] or [("", [])]
    plan = [(config, variant, data, int(seed)) for config in args.configs.split(",") for variant in variants
            for data in args.data.split(",") for seed in args.seeds.split(",")]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda item: accuracy_run(*item, args), plan))
    summary = []
    for config, (name, overrides), data in itertools.product(args.configs.split(","), variants, args.data.split(",")):
        group = [run for run in runs if (run["config"], run["variant"], run["dataset"]) == (config, name, data)]
        row = {"config": Path(config).stem, "variant": name, "overrides": overrides, "model": group[0]["model"],
               "dataset": data, "seeds": len(group)}
        for key in sorted({key for run in group for key in run if key.startswith(("val_", "test_"))}):
            values = [run[key] for run in group]
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        summary.append(row)
    return {"benchmark": "accuracy", "dataset": args.data, "command": " ".join(sys.argv), "commit": git_commit(),
            "versions": library_versions(), "runs": runs, "results": summary}


def attention_with_dgl(block: dgl.DGLBlock, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The model's message passing (models/attention.py): scores, edge softmax, weighted sum, DGL kernels."""
    scores = torch.nn.functional.leaky_relu(dgl.ops.e_dot_v(block, key, query), 0.2)
    return dgl.ops.copy_e_sum(block, dgl.nn.functional.edge_softmax(block, scores) * value)


def attention_with_torch(dst: torch.Tensor, num_dst: int, key: torch.Tensor, value: torch.Tensor,
                         query: torch.Tensor) -> torch.Tensor:
    """The same with torch gathers and scatters only: what device code without DGL would run."""
    scores = torch.nn.functional.leaky_relu((key * query.index_select(0, dst)).sum(-1, keepdim=True), 0.2)
    index = dst.view(-1, 1, 1).expand_as(scores)
    peak = torch.full((num_dst, *scores.shape[1:]), float("-inf")).scatter_reduce(0, index, scores, "amax")
    weights = torch.exp(scores - peak.index_select(0, dst))
    total = torch.zeros(num_dst, *scores.shape[1:]).index_add_(0, dst, weights)
    return torch.zeros(num_dst, *value.shape[1:]).index_add_(0, dst, weights / total.index_select(0, dst) * value)


def attention_case(roots: int, args: argparse.Namespace) -> dict:
    """Median forward + backward time of both implementations on one batch shape, alternating."""
    heads, head_dim = 2, COMPARE_DIM // 2
    edges = roots * args.fanout
    dst = torch.arange(roots).repeat_interleave(args.fanout)
    block = dgl.create_block((torch.arange(roots, roots + edges), dst), num_src_nodes=roots + edges,
                             num_dst_nodes=roots)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(edges, heads, head_dim, generator=generator), torch.randn(edges, heads, head_dim, generator=generator),
              torch.randn(roots, heads, head_dim, generator=generator)]
    variants = {"dgl": lambda k, v, q: attention_with_dgl(block, k, v, q),
                "torch": lambda k, v, q: attention_with_torch(dst, roots, k, v, q)}

    def step(name: str) -> tuple[float, torch.Tensor]:
        key, value, query = (x.clone().requires_grad_() for x in inputs)
        started = time.perf_counter()
        out = variants[name](key, value, query)
        out.square().sum().backward()
        return time.perf_counter() - started, out.detach()

    outputs = [step(name)[1] for name in variants]
    if not torch.allclose(*outputs, atol=1e-4):
        raise RuntimeError("the torch-only attention does not compute what DGL's does")
    timed = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name in variants:
            timed[name].append(step(name)[0])
    median = {name: 1000 * statistics.median(seconds) for name, seconds in timed.items()}
    return {"roots": roots, "edges": edges, "dgl_ms": median["dgl"], "torch_ms": median["torch"],
            "torch_over_dgl": median["torch"] / median["dgl"]}


def benchmark_attention(args: argparse.Namespace) -> dict:
    """DGL's message-passing kernels against torch-only ones on the compare cases' batch shapes: what
    keeping DGL off the training device (blocks on the host, plain tensors moved) would cost on the CPU."""
    plan = configure_process(args.threads)
    return {"benchmark": "attention", "dataset": "synthetic shapes", "command": " ".join(sys.argv),
            "commit": git_commit(), "torch_threads": plan.intra_op, "versions": library_versions(),
            "note": "forward + backward of scores, edge softmax and weighted sum (2 heads of 50); median of "
                    "alternating steps",
            "results": [attention_case(int(roots), args) for roots in args.roots.split(",")]}


def library_versions() -> dict[str, str]:
    """The versions of Python and the libraries a benchmark's numbers depend on."""
    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "dgl": dgl.__version__}


def git_commit() -> str:
    """The checked-out commit of this repository, with "+dirty" when tracked files other than the
    benchmark results in benchmarks/ have uncommitted changes."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks")
    return commit + ("+dirty" if changed else "")


def format_number(value: float) -> str:
    """Large numbers with thousands separators, small ones (speedups, AP, milliseconds) with decimals."""
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as an aligned text table; numbers rounded, with thousands separators."""
    cells = [[format_number(row[c]) if isinstance(row.get(c), (int, float)) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def write_json(results: dict, path: str) -> None:
    """Write the results, creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark subcommand; a user error prints one line and returns 2."""
    args = parse_args(argv)
    try:
        results = args.run(args)
        if args.out is None:  # compare-run: one result line on stdout for the `compare` that launched it
            print(json.dumps(results), flush=True)
            return 0
        write_json(results, args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{results['benchmark']} on {results['dataset']} -> {args.out}")
    print_table(results["results"], args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
