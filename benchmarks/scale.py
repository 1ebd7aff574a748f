r"""`scale`: streams bigger than memory. Synthetic streams (`graph.synthetic.synthetic_events`, generated a
chunk at a time, with uniform float32 edge features) are written to disk in the prepared layout through the
writer `scripts/prepare_data.py` uses; for each: preparation time and peak anonymous memory, the T-CSR
build time; then, with a cold page cache before every run, sampler roots/s (the prepared, memory-mapped
index) and training events/s over the last `--batches` training batches under each mode and sampler,
beside the same model on the same stream with its edge features read into RAM (for the sizes that fit).
Each step, and each training run, runs in a child process whose peak `RssAnon` (/proc/PID/status) the
parent records. `--csv-events N` also writes such a stream as a CSV and times `scripts/prepare_data.py` on it. Streams are
deleted afterwards unless --keep.

    python scripts/benchmark.py scale --events 1000000,10000000,100000000 --workdir /tmp/scale \
        --out benchmarks/scale.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _cli import configure_process
from benchmarks.shared import REPO, add_parser, git_commit, library_versions, machine
from common.errors import UserError
from common.files import replacing
from graph.prepared import PreparedWriter, load_prepared
from graph.synthetic import synthetic_events
from pipeline.engine.profiler import StageProfiler
from pipeline.engine.runner import run_batches
from pipeline.engine.schedulers import Auto, make_scheduler
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.setup import build_setup, training_stages

TABLE = ["events", "storage", "strategy", "mode", "events_per_s", "speedup", "auto_chose", "fetch_ms",
         "train_ms", "rss_anon_peak_mb"]
STAGE_TIMES = ("sample", "fetch_features", "fetch_memory", "train", "update_memory")
GENERATE_CHUNK = 1_000_000  # events generated and written per step
POLL_S = 0.02  # how often the parent reads a child's RssAnon


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `scale` subcommand and its options."""
    parser = add_parser(commands, "scale", "streams on disk: preparation, index build and training at 1M-100M events",
                        __doc__)
    parser.add_argument("--events", default="1000000,10000000,100000000", help="comma-separated stream sizes")
    parser.add_argument("--csv-events", type=int, default=0,
                        help="also time scripts/prepare_data.py on a CSV of this many events (0: no)")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=100, help="edge feature width (float32)")
    parser.add_argument("--batches", type=int, default=500, help="training batches timed per run")
    parser.add_argument("--batch-size", type=int, default=600)
    parser.add_argument("--modes", default="sequential,presample,mspipe,auto")
    parser.add_argument("--strategies", default="recent,uniform")
    parser.add_argument("--in-ram-max", type=int, default=10_000_000,
                        help="largest stream also trained with its features in RAM")
    parser.add_argument("--train-max", type=int, default=None, help="largest stream trained (default: all)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tgn.yml"))
    parser.add_argument("--threads", type=int, default=None, help="CPU cores torch may use (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", required=True, help="where the streams are written (deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the prepared streams")
    parser.add_argument("--no-drop-caches", action="store_true",
                        help="do not drop the page cache before each run (needs root otherwise)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--step", choices=("prepare", "train"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stream", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--in-ram", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sampler-rates", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run, table=TABLE)


def write_synthetic(out: Path, num_events: int, num_nodes: int, dim: int, seed: int) -> dict:
    """A synthetic stream of `num_events` written chunk by chunk through `PreparedWriter`; its meta data."""
    rng = np.random.default_rng(seed)
    offset = 0.0
    with PreparedWriter(out, f"synthetic-{num_events}", overwrite=True) as writer:
        for part, start in enumerate(range(0, num_events, GENERATE_CHUNK)):
            size = min(GENERATE_CHUNK, num_events - start)
            chunk = synthetic_events(num_nodes, size, seed=seed + part)
            features = rng.random((size, dim), dtype=np.float32) - np.float32(0.5)
            writer.append(chunk.src, chunk.dst, chunk.t + offset, features)
            offset += float(chunk.t[-1])
        return writer.finish()


def write_csv(path: Path, num_events: int, num_nodes: int, dim: int, seed: int) -> None:
    """The same kind of synthetic stream as a plain `src,dst,t,feat...` CSV with a header, chunk by chunk."""
    rng = np.random.default_rng(seed)
    offset = 0.0
    with replacing(path, text=True) as handle:  # atomically, never through a link in --workdir
        handle.write(",".join(["src", "dst", "t", *(f"f{j}" for j in range(dim))]) + "\n")
        for part, start in enumerate(range(0, num_events, GENERATE_CHUNK)):
            size = min(GENERATE_CHUNK, num_events - start)
            chunk = synthetic_events(num_nodes, size, seed=seed + part)
            table = pd.DataFrame(rng.random((size, dim), dtype=np.float32) - np.float32(0.5),
                                 columns=[f"f{j}" for j in range(dim)])
            table.insert(0, "t", chunk.t + offset)
            table.insert(0, "dst", chunk.dst)
            table.insert(0, "src", chunk.src)
            table.to_csv(handle, header=False, index=False, float_format="%.7g")
            offset += float(chunk.t[-1])


def convert_csv(args: argparse.Namespace, workdir: Path) -> dict:
    """`scripts/prepare_data.py` on a CSV of `--csv-events` events: its time and peak RssAnon."""
    csv, out = workdir / "synthetic.csv", workdir / "from_csv"
    write_csv(csv, args.csv_events, args.nodes, args.dim, args.seed)
    begin = time.perf_counter()
    _, peak = _watch([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--data", str(csv),
                      "--out", str(out), "--no-progress", "--overwrite"])
    seconds = time.perf_counter() - begin
    meta = json.loads((out / "meta.json").read_text())
    row = {"events": args.csv_events, "csv_gb": csv.stat().st_size / 1e9, "convert_s": seconds,
           "rss_anon_peak_mb": peak, "timings": meta["timings"]}
    if not args.keep:
        csv.unlink()
        shutil.rmtree(out)
    return row


def drop_page_cache() -> None:
    """Empty the page cache (root only), so that the next run reads its features from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def train_run(args: argparse.Namespace) -> dict:
    """One stream, storage, sampler and mode (`--modes` names one): the last `--batches` training batches.

    A process of its own per run: pages a process has mapped stay resident when the page cache is dropped,
    so a second run in the same process would read warm features."""
    configure_process(args.threads)
    events = load_prepared(args.stream)
    if args.in_ram:
        events = dataclasses.replace(events, edge_feat=np.array(events.edge_feat))
    cfg = apply_overrides(load_config(args.config), {"sampler.strategy": args.strategy,
                                                     "train.batch_size": args.batch_size}, "scale")
    started = time.perf_counter()
    setup = build_setup(cfg, events, torch.device("cpu"), args.seed)
    setup_s = time.perf_counter() - started
    roots_per_s = _sampler_roots_per_s(setup, args) if args.sampler_rates else {}
    stages = training_stages(setup, 0)
    stages.batches = timed_batches(stages.batches, args.batches)
    scheduler = make_scheduler(args.modes, cfg.pipeline)
    if not args.no_drop_caches:
        drop_page_cache()
    begin = time.perf_counter()
    stats = run_batches(len(stages.batches), stages, scheduler, StageProfiler())
    seconds = time.perf_counter() - begin
    means = stats.stage_mean_s
    return {
        "mode": args.modes, "events_per_s": sum(len(b) for b in stages.batches) / seconds, "seconds": seconds,
        "batches": len(stages.batches), "auto_chose": str(scheduler.chosen) if isinstance(scheduler, Auto) else "",
        **{f"{stage}_ms": 1000 * means.get(stage, 0.0) for stage in STAGE_TIMES},
        "fetch_ms": 1000 * means.get("fetch_features", 0.0), "k_mean": float(np.mean(stats.k)),
        "setup_s": setup_s, **roots_per_s,
    }


def timed_batches(batches: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The last `count` full training batches (the final one may be short): those with the deepest history."""
    return batches[-count - 1:-1]


def _sampler_roots_per_s(setup, args: argparse.Namespace) -> dict:
    """Roots/s of sampling the timed window from the run's training index (in RAM) and from the prepared
    stream's whole index (memory-mapped), each after emptying the page cache."""
    batches = timed_batches(training_stages(setup, 0).batches, args.batches)
    rates = {}
    for name, sampler in (("train_index", setup.train_sampler), ("mapped_index", setup.eval_sampler)):
        if not args.no_drop_caches:
            drop_page_cache()
        roots, begin = 0, time.perf_counter()
        for i, events in enumerate(batches):
            src, dst, t = setup.events.src[events], setup.events.dst[events], setup.events.t[events]
            nodes = np.concatenate([src, dst, np.random.default_rng(i).integers(0, setup.events.num_nodes, len(t))])
            sampler.sample(nodes, np.tile(t, 3), seed=i)
            roots += len(nodes)
        rates[f"sampler_roots_per_s_{name}"] = roots / (time.perf_counter() - begin)
    return rates


def _child(args: argparse.Namespace, step: str, *extra: str) -> tuple[object, float]:
    """Run `scale --step STEP` in a child process; its JSON result and its peak RssAnon in MB."""
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "scale", "--step", step,
               "--workdir", args.workdir, "--nodes", str(args.nodes), "--dim", str(args.dim),
               "--batches", str(args.batches), "--batch-size", str(args.batch_size),
               "--config", args.config, "--seed", str(args.seed), *extra]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.no_drop_caches:
        command.append("--no-drop-caches")
    output, peak = _watch(command)
    return json.loads(output.strip().splitlines()[-1]), peak


def _watch(command: list[str]) -> tuple[str, float]:
    """Run `command`; its standard output and its peak RssAnon in MB."""
    with tempfile.TemporaryFile("w+") as stdout:
        child = subprocess.Popen(command, stdout=stdout, text=True)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _rss_anon_kb(child.pid))
            time.sleep(POLL_S)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed with exit code {child.returncode}")
        stdout.seek(0)
        return stdout.read(), peak / 1024


def _rss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(args: argparse.Namespace) -> dict:
    """Prepare every stream, then train it from disk (and from RAM where it fits); or, in a child, one step."""
    if args.step == "prepare":
        return write_synthetic(Path(args.stream), int(args.events), args.nodes, args.dim, args.seed)
    if args.step == "train":
        return train_run(args)
    if args.out is None:
        raise UserError("--out is required")
    sizes = [int(size) for size in args.events.split(",") if size.strip()]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    preparation, rows = [], []
    for size in sizes:
        stream = workdir / f"synthetic_{size}"
        begin = time.perf_counter()
        meta, peak = _child(args, "prepare", "--stream", str(stream), "--events", str(size))
        preparation.append({"events": size, "prepare_s": time.perf_counter() - begin, "rss_anon_peak_mb": peak,
                            "tcsr_build_s": meta["timings"]["index_s"], "timings": meta["timings"],
                            "disk_gb": sum(f.stat().st_size for f in stream.iterdir()) / 1e9})
        print(json.dumps(preparation[-1]), flush=True)
        if args.train_max is None or size <= args.train_max:
            rows += _train_stream(args, stream, size)
        if not args.keep:
            shutil.rmtree(stream)
    return {"benchmark": "scale", "dataset": f"synthetic ({args.nodes:,} nodes, {args.dim}-d edge features)",
            "command": " ".join(sys.argv), "commit": git_commit(), "machine": machine(),
            "versions": library_versions(), "cores": os.cpu_count(), "config": args.config,
            "page_cache": "kept" if args.no_drop_caches else "dropped (echo 1 > /proc/sys/vm/drop_caches) before every run",
            "preparation": preparation, "csv_conversion": convert_csv(args, workdir) if args.csv_events else None,
            "results": rows}


def _train_stream(args: argparse.Namespace, stream: Path, size: int) -> list[dict]:
    rows = []
    storages = ["disk", "ram"] if size <= args.in_ram_max else ["disk"]
    for strategy in args.strategies.split(","):
        for storage in storages:
            first = None
            for position, mode in enumerate(args.modes.split(",")):
                extra = ["--stream", str(stream), "--strategy", strategy, "--modes", mode,
                         *(["--in-ram"] if storage == "ram" else []), *(["--sampler-rates"] if position == 0 else [])]
                row, peak = _child(args, "train", *extra)
                first = first or row["events_per_s"]
                rows.append({"events": size, "storage": storage, "strategy": strategy, **row,
                             "speedup": row["events_per_s"] / first, "rss_anon_peak_mb": peak})
                print(json.dumps(rows[-1]), flush=True)
    return rows
