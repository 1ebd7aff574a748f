"""Evaluate a trained run's best weights on validation and test (transductive and inductive AP/AUC).

    python scripts/evaluate.py --run runs/demo [--data uci]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _cli import add_data_arguments, load_data, run_cli

from graph.datasets import DEFAULT_DATASET
from pipeline.engine.allocator import keep_freed_memory
from pipeline.engine.device import resolve_device
from pipeline.run.checkpoint import CHECKPOINT_NAME, dataset_fingerprint, load_checkpoint
from pipeline.run.trainer import evaluate_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    add_data_arguments(parser, DEFAULT_DATASET)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    keep_freed_memory()
    events = load_data(args)
    path = Path(args.run) / CHECKPOINT_NAME
    ckpt = load_checkpoint(path, None, dataset_fingerprint(events))
    metrics = evaluate_checkpoint(ckpt, events, resolve_device(args.device))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    run_cli(main)
