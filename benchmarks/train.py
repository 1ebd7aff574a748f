r"""`train`: training throughput of pipeline modes side by side in one invocation (same data, seed and
epochs; the variants alternate, run after run): events/s, speedup over the first mode (ratio of the means,
and the median of the ratios of runs made one after the other), test AP, measured
stage times, staleness bound `k`, the staleness seen, the ideal pipeline speedup
`min(sum(tau) / max(tau), cores)` from that mode's own stage times, and for `auto` the mode it chose in
each run. Variants beyond the five modes make the ablation: `mspipe-no-delay` (memory fetched as soon
as allowed), `mspipe-mitigation` / `mspipe-mitigation-coneighbour` (staleness mitigation on), and
`fixed-k` expanded over `--k`.

    python scripts/benchmark.py train --data wikipedia --model tgn --modes sequential,presample,mspipe \
        --edge-feat-dim 172 --epochs 2 --repeat 3 --out runs/bench_train.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from _cli import add_data_arguments, configure_process, load_data
from _threads import available_cores
from benchmarks.shared import (REPO, add_parser, add_training_arguments, git_commit, library_versions, machine,
                               parse_variant)
from common.errors import UserError
from graph.synthetic import with_random_edge_features
from pipeline.engine.runner import STAGES
from pipeline.run.config import apply_overrides, load_config, parse_settings
from pipeline.run.trainer import train

VARIANTS: dict[str, dict] = {  # variant name -> config overrides
    "sequential": {"pipeline.mode": "sequential"},
    "presample": {"pipeline.mode": "presample"},
    "mspipe": {"pipeline.mode": "mspipe"},
    "auto": {"pipeline.mode": "auto"},
    "mspipe-no-delay": {"pipeline.mode": "mspipe", "pipeline.delayed_fetch": False},
    "mspipe-mitigation": {"pipeline.mode": "mspipe", "pipeline.mitigation.enabled": True},
    "mspipe-mitigation-coneighbour": {"pipeline.mode": "mspipe", "pipeline.mitigation.enabled": True,
                                      "pipeline.mitigation.similarity": "coneighbour"},
}
TABLE = ["variant", "events_per_s", "speedup", "speedup_median", "ideal_speedup", "test_ap", "k",
         "staleness_mean", "staleness_max", "train_busy", *(f"{stage}_ms" for stage in STAGES)]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `train` subcommand and its options."""
    parser = add_parser(commands, "train", "training throughput and accuracy of pipeline modes side by side",
                        __doc__)
    add_data_arguments(parser, "wikipedia")
    parser.add_argument("--model", default="tgn", help="a config in configs/ (tgn, jodie, apan) or a YAML path")
    parser.add_argument("--modes", default="sequential,presample,mspipe",
                        help=f"comma-separated variants: {', '.join(VARIANTS)}, fixed-k")
    parser.add_argument("--k", default="1,2,4,8", help="staleness bounds for the fixed-k variant")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="a further variant: the config with these overrides, e.g. "
                             "'cn:predictor.module=common_neighbours' (repeatable; runs after the modes)")
    parser.add_argument("--edge-feat-dim", type=int, default=0,
                        help="add random edge features of this width (172 = TGL's Wikipedia features)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the table shows the mean")
    add_training_arguments(parser, default_epochs=2)
    parser.set_defaults(run=run, table=TABLE)


def train_variants(modes: str, ks: str, extra: list[str] = ()) -> dict[str, dict]:
    """Variant name -> config overrides for the requested `--modes` (fixed-k expanded over `--k`), then the
    named `--variant`s."""
    variants: dict[str, dict] = {}
    for mode in (m.strip() for m in modes.split(",") if m.strip()):
        if mode == "fixed-k":
            try:
                bounds = [int(k) for k in ks.split(",")]
            except ValueError:
                raise UserError(f"--k: expected comma-separated integers, got '{ks}'") from None
            variants.update({f"fixed-k={k}": {"pipeline.mode": "fixed-k", "pipeline.k": k} for k in bounds})
        elif mode in VARIANTS:
            variants[mode] = VARIANTS[mode]
        else:
            raise UserError(f"--modes: unknown variant '{mode}' (known: {', '.join(VARIANTS)}, fixed-k)")
    for text in extra:
        name, overrides = parse_variant(text)
        if name in variants:
            raise UserError(f"--variant: '{name}' is already a variant of this run")
        variants[name] = parse_settings(overrides, f"--variant {name}")
    if not variants:
        raise UserError("--modes: no variant given")
    return variants


def ideal_speedup(stage_time_s: dict[str, float], cores: int) -> float:
    """Upper bound of a pipeline's speedup: sum of the stage times over the largest, capped by the cores."""
    taus = [stage_time_s[stage] for stage in STAGES]
    return min(sum(taus) / max(taus), cores) if max(taus) > 0 else 1.0


def summarize_runs(name: str, runs: list[dict], cores: int) -> dict:
    """One table row: the mean over repeated runs of one variant, with the spread of its throughput."""
    stage_s = {stage: statistics.mean(r["stage_time_s"][stage] for r in runs) for stage in STAGES}
    throughput = [r["train_events_per_s"] for r in runs]
    return {
        "variant": name,
        "events_per_s": statistics.mean(throughput),
        "events_per_s_runs": throughput,
        "test_ap": statistics.mean(r["test_ap"] for r in runs),
        "test_ap_runs": [r["test_ap"] for r in runs],
        "k": statistics.mean(r["staleness"]["k"] for r in runs),
        "staleness_mean": statistics.mean(r["staleness"]["mean_seen"] for r in runs),
        "staleness_max": max(r["staleness"]["max_seen"] for r in runs),
        "train_busy": statistics.mean(r["pipeline_utilization"] for r in runs),
        "ideal_speedup": ideal_speedup(stage_s, cores),
        "auto_modes": [r["auto"]["mode"] for r in runs if "auto" in r],
        **{f"{stage}_ms": 1000 * seconds for stage, seconds in stage_s.items()},
    }


def run(args: argparse.Namespace) -> dict:
    """Train every requested variant `--repeat` times on the same data and seed; one row per variant."""
    if args.epochs < 1 or args.repeat < 1:
        raise UserError(f"--epochs and --repeat must be positive, got {args.epochs} and {args.repeat}")
    variants = train_variants(args.modes, args.k, args.variant)
    config_path = Path(args.model) if args.model.endswith((".yml", ".yaml")) else REPO / "configs" / f"{args.model}.yml"
    base = apply_overrides(load_config(config_path), {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "eval.batch_size": args.batch_size})
    # every variant validated before any trains: a bad key or value is one line naming its variant
    configs = {name: apply_overrides(base, overrides, f"variant '{name}'") for name, overrides in variants.items()}
    events = load_data(args)
    if args.edge_feat_dim > 0:
        events = with_random_edge_features(events, args.edge_feat_dim, args.seed)
    plan = configure_process(args.threads)
    cores = args.threads or available_cores()
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        for repeat in range(args.repeat):  # variants alternate, so a slow spell of the machine hits each alike
            for name, cfg in configs.items():
                out = Path(scratch) / f"{name}-{repeat}"
                out.mkdir()
                result = train(cfg, events, out, torch.device("cpu"), args.seed, show_progress=False)
                runs[name].append(result)
                print(f"{name} run {repeat + 1}: {result['train_events_per_s']:.0f} events/s, test AP "
                      f"{result['test_ap']:.4f}", flush=True)
    rows = [summarize_runs(name, measured, cores) for name, measured in runs.items()]
    reference = rows[0]["events_per_s_runs"]
    for row in rows:
        row["speedup"] = row["events_per_s"] / statistics.mean(reference)
        row["speedup_runs"] = [mine / theirs for mine, theirs in zip(row["events_per_s_runs"], reference)]
        row["speedup_median"] = statistics.median(row["speedup_runs"])
    return {
        "benchmark": "train", "dataset": events.name, "model": base.model, "num_events": events.num_events,
        "edge_feat_dim": args.edge_feat_dim, "epochs": args.epochs, "repeat": args.repeat, "seed": args.seed,
        "batch_size": base.train.batch_size, "cores": cores, "torch_threads": plan.intra_op,
        "speedup_reference": rows[0]["variant"], "command": " ".join(sys.argv), "commit": git_commit(),
        "versions": library_versions(),
        "machine": machine(),
        "results": rows,
    }
