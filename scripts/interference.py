"""What slows the train stage down beside the pipeline's other stages, measured one cause at a time.

    python scripts/interference.py --cases uci,wikipedia172 --threads 2,1 --repeat 3 \
        --out benchmarks/interference_pipeline.json

For each case (`scripts/benchmark.py compare`'s: UCI at batch 200, Wikipedia with 172 random edge
features at batch 600) and each torch thread count, the first `--batches` training batches of an epoch
run under these variants, in turn, `--repeat` times (alternating, so a slow spell of a shared machine
hits every variant alike):

- `alone`: sequential mode: the train stage has the machine to itself;
- `before`: MSPipe with the host stages as they ran before this benchmark existed: the train stage in
  a thread of its own, host-stage threads as they start (no `HostThreadPolicy` setting on);
- `+train-in-caller`, `+one-openmp-thread`, `+sched-idle`, `+switch-interval`: the settings of
  `pipeline.engine.host_threads.HostThreadPolicy` switched on one after the other; the last is what
  training uses;
- `stand-ins`: what training uses, with the host stages replaced by stand-ins that only sleep for their
  sequential time (their outputs were computed beforehand): the pipeline's machinery without any CPU or
  GIL demand from the host stages.

Each row: events/s of the batches, its ratio to `alone`, the train stage's mean time (batches from the
10th on, so MSPipe's sequential warm-up is not counted) and its ratio to `alone`, the share of time the
train stage was busy, and the mean staleness bound k.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time

from _cli import configure_process, run_cli  # first: Ctrl-C while importing is `interrupted`, exit 130

import numpy as np
import torch

from benchmarks.shared import REPO, check_output, git_commit, library_versions, print_table, write_json
from benchmarks.compare import COMPARE_CASES
from common.errors import UserError
from graph.datasets import load_dataset
from graph.synthetic import with_random_edge_features
from pipeline.engine.host_threads import HostThreadPolicy
from pipeline.engine.runner import StageEvent, run_batches
from pipeline.engine.schedulers import MSPipe, Scheduler, Sequential
from pipeline.stages.link_prediction import BatchContext, LinkPredictionStages
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.setup import RunSetup, build_setup, training_stages

POLICIES: dict[str, HostThreadPolicy] = {  # pipelined variant -> host-thread policy, one setting on after another
    "before": HostThreadPolicy(train_in_caller=False, one_openmp_thread=False, sched_idle=False,
                               switch_interval_s=None),
    "+train-in-caller": HostThreadPolicy(one_openmp_thread=False, sched_idle=False, switch_interval_s=None),
    "+one-openmp-thread": HostThreadPolicy(sched_idle=False, switch_interval_s=None),
    "+sched-idle": HostThreadPolicy(switch_interval_s=None),
    "+switch-interval": HostThreadPolicy(),
}
VARIANTS = ["alone", *POLICIES, "stand-ins"]
TABLE = ["case", "threads", "variant", "events_per_s", "speedup", "train_ms", "train_vs_alone", "train_busy", "k"]
FIRST_TIMED_BATCH = 10  # train-stage means start here, after MSPipe's sequential warm-up


class SleepingStandIns:
    """The five stages with every host stage replaced by a sleep of its sequential time; `sample` hands
    out a copy of a context prepared beforehand, so the train stage does exactly its usual work."""

    def __init__(self, real: LinkPredictionStages, prepared: list[BatchContext], stage_s: dict[str, float]) -> None:
        self.real, self.prepared, self.stage_s = real, prepared, stage_s

    def sample(self, i: int) -> BatchContext:
        time.sleep(self.stage_s["sample"])
        return dataclasses.replace(self.prepared[i])

    def fetch_features(self, i: int, ctx: BatchContext) -> None:
        time.sleep(self.stage_s["fetch_features"])

    def fetch_memory(self, i: int, ctx: BatchContext, staleness: int) -> int | None:
        time.sleep(self.stage_s["fetch_memory"])
        return None

    def train(self, i: int, ctx: BatchContext) -> None:
        self.real.train(i, ctx)

    def update_memory(self, i: int, ctx: BatchContext) -> None:
        time.sleep(self.stage_s["update_memory"])


class Case:
    """One dataset and config, set up once; every run starts from the same weights and an empty memory."""

    def __init__(self, name: str, batches: int, seed: int) -> None:
        spec = COMPARE_CASES[name]
        events = load_dataset(spec["data"])
        if spec["edge_feat_dim"]:
            events = with_random_edge_features(events, spec["edge_feat_dim"], seed)
        cfg = apply_overrides(load_config(REPO / spec["config"]), {"train.batch_size": spec["batch_size"]})
        self.name, self.batches = name, batches
        self.setup: RunSetup = build_setup(cfg, events, torch.device("cpu"), seed)
        self.weights = copy.deepcopy(self.setup.model.state_dict())
        self.optimizer_state = copy.deepcopy(self.setup.optimizer.state_dict())
        self.prepared: list[BatchContext] | None = None

    def fresh_stages(self) -> LinkPredictionStages:
        """The first `batches` training batches of epoch 0, from the initial weights and an empty memory."""
        self.setup.model.load_state_dict(self.weights)
        self.setup.optimizer.load_state_dict(self.optimizer_state)
        if self.setup.store is not None:
            self.setup.store.reset()
        stages = training_stages(self.setup, 0)
        stages.batches = stages.batches[:self.batches]
        return stages

    def prepare(self) -> list[BatchContext]:
        """Every batch's context as the train stage receives it, from one sequential pass (once per case)."""
        if self.prepared is None:
            stages, self.prepared = self.fresh_stages(), []
            for i in range(len(stages.batches)):
                ctx = stages.sample(i)
                stages.fetch_features(i, ctx)
                stages.fetch_memory(i, ctx, 0)
                self.prepared.append(dataclasses.replace(ctx))
                stages.train(i, ctx)
                stages.update_memory(i, ctx)
        return self.prepared


def train_ms(events: list[StageEvent]) -> float:
    """Mean train-stage time of the batches from FIRST_TIMED_BATCH on, in ms."""
    timed = [e.end - e.start for e in events if e.stage == "train" and e.batch >= FIRST_TIMED_BATCH]
    return 1000 * float(np.mean(timed))


def run_variant(case: Case, variant: str, stage_s: dict[str, float] | None) -> dict:
    """One run of `variant`; returns its measurements and, from `alone`, the mean time of each stage."""
    stages = case.fresh_stages()
    scheduler: Scheduler = Sequential() if variant == "alone" else MSPipe()
    policy = POLICIES.get(variant, HostThreadPolicy())
    run_stages = stages if variant != "stand-ins" else SleepingStandIns(stages, case.prepare(), stage_s)
    started = time.perf_counter()
    stats = run_batches(len(stages.batches), run_stages, scheduler, host_policy=policy)
    seconds = time.perf_counter() - started
    return {"events_per_s": sum(len(b) for b in stages.batches) / seconds, "train_ms": train_ms(stats.events),
            "train_busy": stats.train_busy_fraction, "k": float(np.mean(stats.k)), "stage_s": stats.stage_mean_s}


def measure(case: Case, threads: int, repeat: int) -> list[dict]:
    """All variants `repeat` times, alternating, under `threads` torch threads; one row per variant."""
    torch.set_num_threads(threads)
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    stage_s = None
    for _ in range(repeat):
        for variant in VARIANTS:
            run = run_variant(case, variant, stage_s)
            if variant == "alone":
                stage_s = run["stage_s"]
            runs[variant].append(run)
            print(f"{case.name} threads={threads} {variant}: {run['events_per_s']:.0f} events/s, "
                  f"train {run['train_ms']:.1f} ms", flush=True)
    alone_eps = statistics.mean(r["events_per_s"] for r in runs["alone"])
    alone_train = statistics.mean(r["train_ms"] for r in runs["alone"])
    rows = []
    for variant, measured in runs.items():
        eps = statistics.mean(r["events_per_s"] for r in measured)
        train = statistics.mean(r["train_ms"] for r in measured)
        rows.append({
            "case": case.name, "threads": threads, "variant": variant, "events_per_s": eps,
            "speedup": eps / alone_eps, "train_ms": train, "train_vs_alone": train / alone_train,
            "train_busy": statistics.mean(r["train_busy"] for r in measured),
            "k": statistics.mean(r["k"] for r in measured),
            "events_per_s_runs": [r["events_per_s"] for r in measured],
            "train_ms_runs": [r["train_ms"] for r in measured],
        })
    return rows


def parse_list(text: str, option: str, allowed: list[str] | None = None) -> list[str]:
    """A comma-separated option's items, each checked against `allowed` when given."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    wrong = [item for item in items if allowed is not None and item not in allowed]
    if not items or wrong:
        expected = ", ".join(allowed or ["counts"])
        raise UserError(f"{option}: expected a comma-separated list of {expected}, got '{text}'")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(COMPARE_CASES), help=f"comma-separated: {', '.join(COMPARE_CASES)}")
    parser.add_argument("--threads", default="2,1", help="comma-separated torch thread counts")
    parser.add_argument("--batches", type=int, default=120, help="training batches per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    check_output(args.out, args.overwrite)
    if args.batches <= FIRST_TIMED_BATCH or args.repeat < 1:
        raise UserError(f"--batches must be > {FIRST_TIMED_BATCH} and --repeat >= 1, got {args.batches}, {args.repeat}")
    cases = parse_list(args.cases, "--cases", list(COMPARE_CASES))
    try:
        thread_counts = [int(t) for t in parse_list(args.threads, "--threads")]
    except ValueError:
        raise UserError(f"--threads: expected comma-separated counts, got '{args.threads}'") from None
    configure_process(max(thread_counts))
    rows = []
    for name in cases:
        case = Case(name, args.batches, args.seed)
        for threads in thread_counts:
            rows.extend(measure(case, threads, args.repeat))
    write_json({"benchmark": "interference", "dataset": ",".join(cases), "batches": args.batches,
                "repeat": args.repeat, "command": " ".join(["python", *sys.argv]), "commit": git_commit(),
                "versions": library_versions(), "results": rows}, args.out)
    print(f"interference -> {args.out}")
    print_table(rows, TABLE)
    return 0


if __name__ == "__main__":
    run_cli(main)
