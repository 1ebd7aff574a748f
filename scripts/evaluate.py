"""Evaluate a trained run's best weights on validation and test (transductive and inductive AP/AUC).

    python scripts/evaluate.py --run runs/demo [--data uci]
    python scripts/evaluate.py --run runs/toy_decay --data uci --plugins examples/toy_updater.py

A run directory is data, and nothing in it selects code to import: a run trained with plugins (the
config's `plugins` key) is evaluated only when --plugins names them again; otherwise it is refused, in
one line that says which.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _cli import add_data_arguments, load_data, run_cli

from graph.datasets import DEFAULT_DATASET
from _allocator import keep_freed_memory
from pipeline.stages.device import resolve_device
from pipeline.run.checkpoint import CHECKPOINT_NAME, dataset_fingerprint, load_checkpoint
from pipeline.run.plugins import load_plugins
from pipeline.run.trainer import evaluate_checkpoint


def plugin_list(values: list[str]) -> tuple[str, ...]:
    """--plugins, repeatable and comma-separated: `.py` files relative to the working directory or module names."""
    return tuple(entry.strip() for value in values for entry in value.split(",") if entry.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    add_data_arguments(parser, DEFAULT_DATASET)
    parser.add_argument("--plugins", action="append", default=[], metavar="PLUGIN[,PLUGIN...]",
                        help="the plugins the run was trained with, imported before its config is checked: "
                             ".py files (relative to the working directory) or module names (repeatable)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    keep_freed_memory()
    plugins = tuple(load_plugins(list(plugin_list(args.plugins)), Path.cwd(), "--plugins", key=None))
    events = load_data(args)
    path = Path(args.run) / CHECKPOINT_NAME
    ckpt = load_checkpoint(path, None, dataset_fingerprint(events))
    metrics = evaluate_checkpoint(ckpt, events, resolve_device(args.device), path=path, plugins=plugins)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    run_cli(main)
