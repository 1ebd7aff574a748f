"""Train a memory-based temporal GNN (TGN, JODIE, APAN) on an event stream with the chosen pipeline mode.

    python scripts/train.py --config configs/tgn.yml --data uci --epochs 3 --out runs/tgn_uci

Writes TensorBoard logs, `checkpoint.pt` (every epoch), `pipeline_events.csv`, `timeline.png` and
`results.json` into --out, each atomically and never through a symbolic link (common/files.py).
`--resume` continues a killed run from its last checkpoint.
One run at a time per --out: a second is refused while the first holds the directory's lock (`.lock`).

Data-parallel on N processes (docs/distributed.md); rank 0 writes --out, rank r > 0 writes --out/rank<r>:

    torchrun --nproc_per_node=2 scripts/train.py --config configs/tgn.yml --out runs/tgn_ddp --distributed
"""
from __future__ import annotations

from _cli import add_data_arguments, configure_process, load_data, positive_int, run_cli  # first: Ctrl-C while importing

import argparse
import fcntl
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch

from common.errors import UserError
from common.files import check_target, check_writable
from graph.datasets import DEFAULT_DATASET
from graph.events import EventStream
from pipeline.stages.device import resolve_device
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import MODES, RunConfig, apply_overrides, load_config, parse_settings
from pipeline.run.distributed import DEFAULT_TIMEOUT_S, init_world
from pipeline.run.world import LocalWorld, World
from pipeline.run.reporting import RUN_FILES
from pipeline.run.trainer import train

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "tgn.yml"), help="YAML model/run config")
    add_data_arguments(parser, DEFAULT_DATASET)
    parser.add_argument("--out", required=True, help="run directory for logs, checkpoints and results.json")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size and eval.batch_size")
    parser.add_argument("--lr", type=float, help="override train.lr")
    parser.add_argument("--mode", help=f"override pipeline.mode ({', '.join(MODES)}, or a plugin's scheduler)")
    parser.add_argument("--k", type=int, help="staleness bound for --mode fixed-k (pipeline.k)")
    parser.add_argument("--mitigation", action=argparse.BooleanOptionalAction, default=None,
                        help="staleness mitigation on/off (pipeline.mitigation.enabled)")
    parser.add_argument("--delayed-fetch", action=argparse.BooleanOptionalAction, default=None,
                        help="mspipe's delayed memory fetch on/off (pipeline.delayed_fetch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set memory.update_time=batch (repeatable; applied last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU cores torch may use (default: all available, and pipeline.mode auto may train with "
                             "half as many where that is faster)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training as one rank of a torchrun launch (train.batch_size is global)")
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a collective may wait for the other ranks before the run fails")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config)
    return apply_overrides(cfg, {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "eval.batch_size": args.batch_size,
        "train.lr": args.lr,
        "pipeline.mode": args.mode,
        "pipeline.k": args.k,
        "pipeline.mitigation.enabled": args.mitigation,
        "pipeline.delayed_fetch": args.delayed_fetch,
        "pipeline.auto.threads": None if args.threads is None else [args.threads],
        **parse_settings(args.set),
    })


def run_files(out_dir: Path) -> list[Path]:
    """What an earlier run left in `out_dir`: its results, checkpoint, logs and TensorBoard event files."""
    return [p for p in out_dir.iterdir() if p.name in RUN_FILES or p.name.startswith("events.out.tfevents")]


LOCK_NAME = ".lock"
HOLDER_WAIT_S = 1.0  # how long to wait for a lock's new holder to write its pid


class RunLock:
    """An exclusive `flock` on `<run directory>/.lock`, so that one run at a time uses a directory.

    The kernel drops the lock when its process ends however it ends (kill -9 included), so a lock file
    left behind never blocks a later run. `release` removes the file while still holding the lock; a run
    that opened the file just before checks, once it holds a lock, that it locked the file now at the path.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock and write this process's pid into it; a `UserError` naming the holder's pid if
        another run holds it, an `OSError` if the file cannot be created or locked."""
        while self.fd is None:
            # never through a link: a run directory from elsewhere could point .lock at another file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise UserError(f"{self.out_dir}: another run (pid {holder}) is using this run directory; wait "
                                f"for it to end or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            if not self._is_current(fd):
                os.close(fd)  # its holder removed the file after we opened it: lock the one there now
                continue
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except BaseException:
                self.release()
                raise
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _holder(self, fd: int) -> str:
        """The pid the holder wrote (it writes it right after locking, so wait a moment for it)."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while True:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text or time.monotonic() > deadline:
                return text if text.isdigit() else "unknown"
            time.sleep(0.02)

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file first, while the lock still guards it)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the directory went away or became read-only; the lock still ends with the descriptor
        os.close(self.fd)
        self.fd = None


def _cannot_write(out_dir: Path, err: OSError) -> UserError:
    return UserError(f"{out_dir}: cannot write to the run directory ({err.strerror or err})")


def prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock the run directory and check it before training: another run must not be using it, an earlier
    run is never overwritten unless asked, and an unwritable directory fails early. The caller releases
    the returned lock when the run ends."""
    no_checkpoint = f"{out_dir}: --resume given but there is no {CHECKPOINT_NAME} to resume from"
    if out_dir.is_symlink():  # a run directory from elsewhere must not send the run's files somewhere else
        raise UserError(f"{out_dir}: is a symbolic link; name the directory it points to instead")
    if resume and not out_dir.is_dir():
        raise UserError(no_checkpoint)  # before creating the directory
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out_dir).acquire()
    except OSError as err:
        raise _cannot_write(out_dir, err) from None
    try:
        if resume:
            for name in RUN_FILES:  # replaced in place as the run goes on: none may be a link or a folder
                check_target(out_dir / name)
            if not (out_dir / CHECKPOINT_NAME).is_file():
                raise UserError(no_checkpoint)
        elif run_files(out_dir):
            if not overwrite:
                raise UserError(f"{out_dir}: already holds a run; pass --overwrite to replace it or --resume to "
                                f"continue it")
            for path in run_files(out_dir):
                path.unlink()
        check_writable(out_dir)
    except OSError as err:
        lock.release()
        raise _cannot_write(out_dir, err) from None
    except BaseException:
        lock.release()
        raise
    return lock


def stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM ask the pipeline to stop; the last complete checkpoint stays as it is."""
    stop = threading.Event()

    def handler(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    cfg = build_config(args)
    device = resolve_device(args.device)
    events = load_data(args)
    world = init_world(device, args.dist_timeout) if args.distributed else LocalWorld()
    try:
        results = train_as(world, args, cfg, events, world.place(device))
    finally:
        world.close()
    if world.rank == 0:
        speed = results["train_events_per_s"]
        print(f"{results['model']} on {results['dataset']} ({results['mode']}): test AP {results['test_ap']:.4f}  "
              f"AUC {results['test_auc']:.4f}  inductive AP {results['test_inductive_ap']:.4f}  "
              + ("" if math.isnan(speed) else f"{speed:.0f} events/s  ") + f"-> {Path(args.out) / 'results.json'}")
    return 0


def train_as(world: World, args: argparse.Namespace, cfg: RunConfig, events: EventStream,
             device: torch.device) -> dict:
    """Train as this process's part of `world`: rank 0 writes --out, rank r > 0 its own copy in rank<r>/."""
    out_dir = Path(args.out) if world.rank == 0 else Path(args.out) / f"rank{world.rank}"
    lock = prepare_run_dir(out_dir, resume=args.resume, overwrite=args.overwrite)
    try:
        configure_process(args.threads)
        return train(cfg, events, out_dir, device, args.seed, resume=args.resume, stop=stop_on_signals(),
                     show_progress=not args.no_progress and world.rank == 0, world=world)
    finally:
        lock.release()


if __name__ == "__main__":
    run_cli(main)
