r"""`side-by-side`: training runs that share the machine, as a user who starts two seeds at once gets them.
For each setting, `--runs` copies of `scripts/train.py` start together (same config, data and epochs, seeds
0, 1, ...) and each run's training events/s and test AP are read from its `results.json`. A setting is a
pipeline mode and the train stage's thread count (`sequential@2`: `--mode sequential --threads 2`), or
`auto`, the default, which chooses both on the running job. Settings alternate, `--repeat` times, so a slow
spell of the machine hits each alike. The table shows the mean events/s over every run of a setting, its
slowest run, and the ratio to the first setting that is not `auto` and to the best fixed setting.

    python scripts/benchmark.py side-by-side --config configs/dyglib/tgn.yml --data uci --epochs 1 \
        --settings auto,sequential@2,sequential@1,mspipe@2,mspipe@1 --repeat 3 --out runs/bench_side.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _threads import available_cores
from _cli import positive_int
from benchmarks.shared import REPO, add_parser, git_commit, library_versions, machine
from common.errors import UserError
from pipeline.engine.schedulers import SCHEDULERS

TABLE = ["setting", "events_per_s", "slowest_run", "vs_first_fixed", "vs_best_fixed", "test_ap", "auto_chose"]
RUN_TIMEOUT_S = 3600


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `side-by-side` subcommand and its options."""
    parser = add_parser(commands, "side-by-side", "training runs that share the machine, per mode and thread count",
                        __doc__)
    parser.add_argument("--config", default="configs/dyglib/tgn.yml", help="config every run trains")
    parser.add_argument("--data", default="uci", help="dataset name or file every run trains on")
    parser.add_argument("--epochs", type=positive_int, default=1, help="epochs of each run")
    parser.add_argument("--runs", type=positive_int, default=2, help="runs started together per setting")
    parser.add_argument("--settings", default="auto,sequential@2,sequential@1,mspipe@2,mspipe@1",
                        help="comma-separated: auto, or MODE@THREADS")
    parser.add_argument("--repeat", type=positive_int, default=3, help="times each setting runs, alternating")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def setting_arguments(setting: str) -> list[str]:
    """The `scripts/train.py` options of one setting (`auto` or `MODE@THREADS`); a malformed one is refused."""
    if setting == "auto":
        return ["--mode", "auto"]
    mode, sep, threads = setting.partition("@")
    if not sep or mode not in SCHEDULERS or mode == "auto" or not threads.isdigit() or int(threads) < 1:
        raise UserError(f"--settings: '{setting}' is neither auto nor MODE@THREADS with a mode of "
                        f"{', '.join(SCHEDULERS.names())} and a thread count >= 1")
    return ["--mode", mode, "--threads", threads]


def run_together(setting: str, args: argparse.Namespace, scratch: Path, repeat: int) -> list[dict]:
    """Start `args.runs` training runs of `setting` at once; each one's results once all have ended."""
    outs = [scratch / f"{setting}-{repeat}-{copy}" for copy in range(args.runs)]
    processes = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), "--config", args.config,
                                   "--data", args.data, "--epochs", str(args.epochs), "--seed", str(copy),
                                   "--out", str(out), "--no-progress", *setting_arguments(setting)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for copy, out in enumerate(outs)]
    failures = []
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode != 0:
            failures.append(stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {process.returncode}")
    if failures:
        raise UserError(f"setting {setting}: a training run failed: {failures[0]}")
    return [json.loads((out / "results.json").read_text()) for out in outs]


def summarize(setting: str, results: list[dict]) -> dict:
    """One table row: every run's events/s and test AP, and what `auto` chose in each."""
    speeds = [result["train_events_per_s"] for result in results]
    chosen = [f"{r['auto']['mode']}@{r['auto']['threads']}" for r in results if "auto" in r]
    return {"setting": setting, "events_per_s": statistics.mean(speeds), "slowest_run": min(speeds),
            "events_per_s_runs": speeds, "test_ap": statistics.mean(r["test_ap"] for r in results),
            "auto_chose": ",".join(sorted(set(chosen))), "auto_decisions": [r["auto"]["decisions"] for r in results
                                                                          if "auto" in r]}


def run(args: argparse.Namespace) -> dict:
    """Every setting `--repeat` times, alternating, `--runs` runs at once; one row per setting."""
    settings = [setting.strip() for setting in args.settings.split(",") if setting.strip()]
    if not settings:
        raise UserError("--settings: no setting given")
    for setting in settings:
        setting_arguments(setting)
    results: dict[str, list[dict]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as scratch:
        for repeat in range(args.repeat):
            for setting in settings:
                runs = run_together(setting, args, Path(scratch), repeat)
                results[setting].extend(runs)
                speeds = ", ".join(f"{r['train_events_per_s']:.0f}" for r in runs)
                print(f"{setting} repeat {repeat + 1}: {speeds} events/s", flush=True)
    rows = [summarize(setting, runs) for setting, runs in results.items()]
    fixed = [row for row in rows if row["setting"] != "auto"]
    for row in rows:
        row["vs_first_fixed"] = row["events_per_s"] / fixed[0]["events_per_s"] if fixed else float("nan")
        row["vs_best_fixed"] = (row["events_per_s"] / max(r["events_per_s"] for r in fixed)) if fixed else float("nan")
    return {"benchmark": "side-by-side", "dataset": args.data, "command": " ".join(sys.argv), "commit": git_commit(),
            "config": args.config, "epochs": args.epochs, "runs_together": args.runs, "repeat": args.repeat,
            "cores": available_cores(), "versions": library_versions(), "machine": machine(), "results": rows}
