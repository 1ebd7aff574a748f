"""Train a memory-based temporal GNN (TGN, JODIE, APAN) on an event stream with the chosen pipeline mode.

    python scripts/train.py --config configs/tgn.yml --data uci --epochs 3 --out runs/tgn_uci

Writes TensorBoard logs, `checkpoint.pt` (every epoch, atomically), `pipeline_events.csv`,
`timeline.png` and `results.json` into --out. `--resume` continues a killed run from its last checkpoint.

Data-parallel on N processes (docs/distributed.md); rank 0 writes --out, rank r > 0 writes --out/rank<r>:

    torchrun --nproc_per_node=2 scripts/train.py --config configs/tgn.yml --out runs/tgn_ddp --distributed
"""
from __future__ import annotations

import argparse
import math
import signal
import threading
from pathlib import Path

from _cli import add_data_arguments, configure_process, load_data, run_cli

import torch

from common.errors import UserError
from graph.datasets import DEFAULT_DATASET
from graph.events import EventStream
from pipeline.engine.device import resolve_device
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import MODES, RunConfig, apply_overrides, load_config, parse_settings
from pipeline.run.distributed import DEFAULT_TIMEOUT_S, LocalWorld, init_world
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
    parser.add_argument("--threads", type=int, default=None, help="CPU cores torch may use (default: all available)")
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
        **parse_settings(args.set),
    })


def run_files(out_dir: Path) -> list[Path]:
    """What an earlier run left in `out_dir`: its results, checkpoint, logs and TensorBoard event files."""
    return [p for p in out_dir.iterdir() if p.name in RUN_FILES or p.name.startswith("events.out.tfevents")]


def prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> Path:
    """Check the run directory before training: never overwrite a run unless asked, fail early if unwritable."""
    if resume:
        if not (out_dir / CHECKPOINT_NAME).is_file():
            raise UserError(f"{out_dir}: --resume given but there is no {CHECKPOINT_NAME} to resume from")
    elif out_dir.is_dir() and run_files(out_dir):
        if not overwrite:
            raise UserError(f"{out_dir}: already holds a run; pass --overwrite to replace it or --resume to continue it")
        for path in run_files(out_dir):
            path.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{out_dir}: cannot write to the run directory ({err.strerror or err})") from None
    return out_dir


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


def train_as(world: LocalWorld, args: argparse.Namespace, cfg: RunConfig, events: EventStream,
             device: torch.device) -> dict:
    """Train as this process's part of `world`: rank 0 writes --out, rank r > 0 its own copy in rank<r>/."""
    out = Path(args.out) if world.rank == 0 else Path(args.out) / f"rank{world.rank}"
    out_dir = prepare_run_dir(out, resume=args.resume, overwrite=args.overwrite)
    configure_process(args.threads)
    return train(cfg, events, out_dir, device, args.seed, resume=args.resume, stop=stop_on_signals(),
                 show_progress=not args.no_progress and world.rank == 0, world=world)


if __name__ == "__main__":
    run_cli(main)
