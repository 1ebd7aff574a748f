"""`compare`: this project's TGN (sequential mode) against a PyTorch Geometric TGN written after PyG's
examples/tgn.py (benchmarks/pyg_tgn.py; needs `pip install -e .[bench]`), on the same events, split and
negatives, with the same dimensions, neighbours, epochs and threads. Every run is a fresh process (the
internal `compare-run` subcommand, one system after the other, then again), so its peak RSS is its own:
training events/s, peak RSS, the RSS training added, test AP (ours: of the best epoch by validation AP, as
the trainer reports it; PyG: after the last epoch), page faults and kernel CPU seconds of the whole run,
and the ratios to PyG of the means. Each system runs twice over: `ours` with the allocator policy
scripts/train.py sets (scripts/_allocator.py) and `ours-malloc-defaults` without it; `pyg` as PyG's
users run it and `pyg+keep-freed` with our policy. So the table separates what the policy gives from what
the rest of the training step does. `ours-query-batch` embeds each node once per batch from the events
before it, as PyG's TGN does (`embedding.query_time: batch`), where `ours` embeds every root at its own
event's time; it separates what the two systems compute from how fast each computes it. `other_cpu_load`
is how many cores other processes kept busy during a run: well above 0 on a 2-core machine, the run was
slowed by them and its events/s should not be trusted.

    python scripts/benchmark.py compare --cases uci,wikipedia172 --epochs 2 --repeat 3 --out runs/bench_compare.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from _allocator import keep_freed_memory
from _threads import available_cores, configure_threads
from benchmarks import pyg_tgn
from benchmarks.shared import REPO, add_parser, git_commit, library_versions, machine, peak_resident_mb, resident_mb
from common.errors import UserError
from graph.datasets import load_dataset
from graph.events import EventStream, event_stream_from_raw
from graph.split import chronological_split
from graph.synthetic import with_random_edge_features
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.trainer import train

class CompareSystem(NamedTuple):
    """One system `compare` times: this project's trainer or PyG's reference, with freed memory kept for reuse
    or not, and (ours only) config settings over the case's config."""

    ours: bool
    keeps_freed: bool
    settings: tuple[tuple[str, Any], ...] = ()


# ours as scripts/train.py runs it, with glibc's default allocator, and embedding each node once per batch as
# PyG does (`embedding.query_time: batch`); PyG's reference as its users run it and with our allocator policy
COMPARE_SYSTEMS: dict[str, CompareSystem] = {
    "ours": CompareSystem(True, True), "ours-malloc-defaults": CompareSystem(True, False),
    "ours-query-batch": CompareSystem(True, True, (("embedding.query_time", "batch"),)),
    "pyg": CompareSystem(False, False), "pyg+keep-freed": CompareSystem(False, True),
}
COMPARE_CASES: dict[str, dict] = {  # case -> data, random edge feature width, batch size, our config
    "uci": {"data": "uci", "edge_feat_dim": 0, "batch_size": 200, "config": "configs/dyglib/tgn.yml"},
    "wikipedia172": {"data": "wikipedia", "edge_feat_dim": 172, "batch_size": 600, "config": "configs/tgn.yml"},
}
COMPARE_DIM = 100  # memory, time encoding and embedding width on both sides
COMPARE_NEIGHBOURS = 10  # most recent neighbours attended to, on both sides
TABLE = ["case", "system", "events_per_s", "events_per_s_vs_pyg", "peak_rss_mb", "peak_rss_vs_pyg",
         "train_rss_mb", "test_ap", "val_ap", "page_faults", "kernel_cpu_s", "other_cpu_load"]


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that `compare` passes on to every `compare-run`."""
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, negatives, features and weights")
    parser.add_argument("--max-events", type=int, default=None,
                        help="train on the first N events of each dataset only (quick checks)")


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `compare` subcommand and the internal `compare-run` (one run, one JSON line on stdout)."""
    parser = add_parser(commands, "compare", "this project's TGN against PyTorch Geometric's, side by side", __doc__)
    parser.add_argument("--cases", default=",".join(COMPARE_CASES),
                        help=f"comma-separated cases: {', '.join(COMPARE_CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system and case, alternating systems")
    parser.add_argument("--systems", default=",".join(COMPARE_SYSTEMS),
                        help=f"comma-separated systems, pyg among them (the ratios' base): "
                             f"{', '.join(COMPARE_SYSTEMS)}")
    add_compare_arguments(parser)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)
    internal = commands.add_parser("compare-run")  # internal: no help, so it is not listed
    internal.add_argument("--system", choices=list(COMPARE_SYSTEMS), required=True)
    internal.add_argument("--case", choices=list(COMPARE_CASES), required=True)
    add_compare_arguments(internal)
    internal.set_defaults(run=compare_run, table=None, out=None)


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used so far (Linux /proc/stat: all but idle and iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has used so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def our_config(case: dict, epochs: int, settings: tuple[tuple[str, Any], ...] = ()) -> dict:
    """This project's TGN config of a `compare` case: sequential mode, every epoch (no early stopping),
    evaluated as the PyG reference is (the native protocol's split and random negatives, whatever protocol
    the case's config names), then a system's `settings`."""
    return apply_overrides(load_config(REPO / case["config"]), {
        "pipeline.mode": "sequential", "train.epochs": epochs, "train.patience": 0,
        "eval.protocol": "native", "eval.negatives": ["random"],
        "train.batch_size": case["batch_size"], "eval.batch_size": case["batch_size"],
        "memory.dim": COMPARE_DIM, "memory.dim_time": COMPARE_DIM, "embedding.dim_out": COMPARE_DIM,
        "embedding.dim_time": COMPARE_DIM, "sampler.fanouts": [COMPARE_NEIGHBOURS], **dict(settings)})


def train_ours(case: dict, events: EventStream, args: argparse.Namespace) -> dict:
    """One run of this project's TGN in sequential mode, every epoch (no early stopping)."""
    cfg = our_config(case, args.epochs, COMPARE_SYSTEMS[args.system].settings)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        results = train(cfg, events, Path(scratch), torch.device("cpu"), args.seed, show_progress=False)
    return {key: results[key] for key in ("train_events_per_s", "epoch_time_s", "val_ap", "test_ap")}


def train_pyg(case: dict, events: EventStream, args: argparse.Namespace) -> dict:
    """One run of the PyG reference on the split our trainer uses (default ratios, same seed)."""
    results = pyg_tgn.train_pyg_tgn(
        events, chronological_split(events, seed=args.seed), batch_size=case["batch_size"], epochs=args.epochs,
        memory_dim=COMPARE_DIM, time_dim=COMPARE_DIM, embedding_dim=COMPARE_DIM, neighbours=COMPARE_NEIGHBOURS,
        seed=args.seed)
    return {key: results[key] for key in ("train_events_per_s", "epoch_time_s", "val_ap", "test_ap", "pyg_version")}


def compare_run(args: argparse.Namespace) -> dict:
    """`compare-run`: train one system once in this process; its RSS is the run's own. Training's progress
    lines go to stderr, so stdout carries only the result line scripts/benchmark.py prints."""
    if args.epochs < 1 or (args.max_events is not None and args.max_events < 1):
        raise UserError(f"--epochs and --max-events must be positive, got {args.epochs} and {args.max_events}")
    ours, keeps_freed, _ = COMPARE_SYSTEMS[args.system]
    if not ours:
        pyg_tgn.require_pyg()
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
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "compare-run", "--system", system,
               "--case", case, "--epochs", str(args.epochs), "--threads", str(args.threads), "--seed", str(args.seed)]
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


def run(args: argparse.Namespace) -> dict:
    """Alternate fresh `compare-run` processes, one per system in turn, `--repeat` times per case; one row
    per case and system, each with the ratios to PyG (as its users run it) of the mean events/s and of the
    mean peak RSS."""
    pyg = pyg_tgn.require_pyg()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in COMPARE_CASES]
    if not cases or unknown:
        raise UserError(f"--cases: unknown or no case '{','.join(unknown)}' (known: {', '.join(COMPARE_CASES)})")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "pyg" not in systems or any(s not in COMPARE_SYSTEMS for s in systems):
        raise UserError(f"--systems: '{args.systems}' must name known systems, pyg among them "
                        f"(known: {', '.join(COMPARE_SYSTEMS)})")
    if args.epochs < 1 or args.repeat < 1 or args.threads < 1:
        raise UserError(f"--epochs, --repeat and --threads must be positive, got {args.epochs}, {args.repeat} "
                        f"and {args.threads}")
    rows = []
    for case in cases:
        runs: dict[str, list[dict]] = {system: [] for system in systems}
        for repeat in range(args.repeat):
            for system in systems:
                runs[system].append(launch_compare_run(system, case, args))
                latest = runs[system][-1]
                print(f"{case} {system} run {repeat + 1}/{args.repeat}: {latest['train_events_per_s']:.0f} events/s, "
                      f"peak RSS {latest['peak_rss_mb']:.0f} MB, test AP {latest['test_ap']:.4f}, "
                      f"other processes' CPU load {latest['other_cpu_load']:.2f} cores", flush=True)
        summaries = {system: summarize_system(runs[system]) for system in systems}
        for system in systems:
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
        "machine": machine(),
        "command": " ".join(sys.argv), "commit": git_commit(),
        "results": rows,
    }
