"""`soak`: one long training run, with this process's resident memory (RSS) sampled in the background and
closed off at every epoch's checkpoint: RSS at the epoch's end and the highest RSS seen during it. The
memory counts as stable (`memory_stable`) when the last epoch's RSS is within 5% or 50 MB of epoch 2's
(epoch 1 still grows caches and allocator pools).

    python scripts/benchmark.py soak --data wikipedia --mode mspipe --epochs 10 --out runs/bench_soak.json
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import threading
from pathlib import Path

import torch

from _cli import add_data_arguments, configure_process, load_data
from benchmarks.shared import REPO, add_parser, add_training_arguments, machine, peak_resident_mb, resident_mb
from common.errors import UserError
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import MODES, apply_overrides, load_config
from pipeline.run.trainer import train

TABLE = ["epoch", "rss_mb", "peak_rss_mb", "epoch_s", "test_ap"]
GROWTH_FRACTION = 0.05  # the last epoch's RSS may exceed epoch 2's by this share ...
GROWTH_MB = 50.0  # ... or by this many MB, whichever is larger


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `soak` subcommand and its options."""
    parser = add_parser(commands, "soak", "memory growth of one long training run (RSS after every epoch)",
                        __doc__)
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--config", default=str(REPO / "configs" / "tgn.yml"), help="YAML model/run config")
    parser.add_argument("--mode", choices=MODES, default="mspipe", help="pipeline mode")
    add_training_arguments(parser, default_epochs=5)
    parser.set_defaults(run=run, table=TABLE)


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
    limit = max(GROWTH_FRACTION * reference, GROWTH_MB)
    return {"rss_epoch2_mb": reference, "rss_last_mb": last, "rss_growth_mb": last - reference,
            "rss_growth_limit_mb": limit, "memory_stable": last - reference <= limit}


def run(args: argparse.Namespace) -> dict:
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
        "machine": machine(),
        "results": rows,
    }
