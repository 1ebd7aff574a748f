r"""`accuracy`: trains each config on each dataset with each seed (`scripts/train.py`, one thread per run,
`--jobs` runs at once) and records every validation and test metric of the best epoch, with mean and
standard deviation over seeds: under each negative strategy the configs' `eval.negatives` lists.
`--variant 'NAME:KEY=VALUE;KEY=VALUE'` (repeatable) runs every config once per variant, with those
overrides (`train.py --set`): an ablation in one JSON.

    python scripts/benchmark.py accuracy --configs configs/dyglib/tgn.yml --data uci,enron --seeds 0,1,2 \
        --epochs 10 --jobs 2 --out runs/bench_accuracy.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _cli import positive_int, seed_list
from benchmarks.shared import REPO, add_parser, git_commit, library_versions, parse_variant
from common.errors import UserError
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import apply_overrides, load_config, parse_settings

TABLE = ["config", "variant", "dataset", "seeds", "val_ap_mean", "test_ap_mean", "test_ap@historical_mean",
         "test_ap@inductive_mean", "test_auc_mean", "test_auc@historical_mean", "test_auc@inductive_mean",
         "test_mrr_all_mean", "val_repeat_ap_mean", "test_repeat_ap_mean", "val_new_ap_mean", "test_new_ap_mean"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `accuracy` subcommand and its options."""
    parser = add_parser(commands, "accuracy", "test AP/AUC over seeds under each negative strategy", __doc__)
    parser.add_argument("--configs", default="configs/dyglib/tgn.yml,configs/dyglib/jodie.yml",
                        help="comma-separated config files")
    parser.add_argument("--data", default="uci,enron", help="comma-separated datasets")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override train.epochs of every config")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="a named set of config overrides every config also runs with, e.g. "
                             "'batch:memory.update_time=batch' (repeatable; none: each config as it is)")
    parser.add_argument("--jobs", type=positive_int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--runs-dir", default="runs/accuracy", help="where each run writes its directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs of an interrupted benchmark in --runs-dir from their checkpoints "
                             "(a run without one starts afresh)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def accuracy_run(config: str, variant: tuple[str, list[str]], data: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one (config, variant, dataset, seed) in its own process on one thread; its results.json metrics."""
    name, overrides = variant
    out = Path(args.runs_dir) / "_".join(filter(None, (Path(config).stem, name, data, f"s{seed}")))
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", config, "--data", data,
               "--seed", str(seed), "--threads", "1", "--no-progress", "--out", str(out)]
    command.append("--resume" if args.resume and (out / CHECKPOINT_NAME).is_file() else "--overwrite")
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


def check_configs(configs: list[str], variants: list[tuple[str, list[str]]], epochs: int | None) -> None:
    """Every config with every variant's overrides, validated before any run starts: a bad key or value is
    one line naming the variant, not a failed run after the others have trained."""
    for config in configs:
        base = apply_overrides(load_config(config), {"train.epochs": epochs})
        for name, overrides in variants:
            source = f"variant '{name}'"
            apply_overrides(base, parse_settings(overrides, source), source)


def run(args: argparse.Namespace) -> dict:
    """Every (config, dataset, seed) trained to its best validation epoch, `--jobs` at a time, with the
    mean and standard deviation over seeds of every validation and test metric."""
    variants = [parse_variant(text) for text in args.variant] or [("", [])]
    check_configs(args.configs.split(","), variants, args.epochs)
    plan = [(config, variant, data, seed) for config in args.configs.split(",") for variant in variants
            for data in args.data.split(",") for seed in args.seeds]
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
