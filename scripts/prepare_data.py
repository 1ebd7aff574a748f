"""Convert an event stream in any supported format to TGL's layout, with the chronological split as ext_roll.

    python scripts/prepare_data.py --data uci --out DATA/uci

Writes DIR/edges.csv (`,src,dst,time,ext_roll`, contiguous 0-based ids, sorted by time) and, when the input
has them, DIR/edge_features.pt and DIR/node_features.pt; prints the counts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _cli import add_data_arguments, load_data, run_cli  # first: Ctrl-C while importing is `interrupted`, exit 130

import numpy as np
import pandas as pd
import torch

from common.errors import UserError
from graph.datasets import DEFAULT_DATASET
from graph.events import EventStream
from graph.loaders import TGL_EDGES
from graph.split import split_periods


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, DEFAULT_DATASET)
    parser.add_argument("--out", required=True, help="output directory (TGL layout)")
    parser.add_argument("--val-ratio", type=float, default=0.15, help="share of events (by time) in validation")
    parser.add_argument("--test-ratio", type=float, default=0.15, help="share of events (by time) in test")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing edges.csv in --out")
    return parser.parse_args(argv)


def write_tgl(events: EventStream, ext_roll: np.ndarray, out: Path) -> None:
    """Write the stream as TGL's edges.csv plus feature tensors."""
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"src": events.src, "dst": events.dst, "time": events.t, "ext_roll": ext_roll})
    table.to_csv(out / TGL_EDGES)
    for filename, features in (("edge_features.pt", events.edge_feat), ("node_features.pt", events.node_feat)):
        if features is not None:
            torch.save(torch.from_numpy(features), out / filename)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if (out / TGL_EDGES).exists() and not args.overwrite:
        raise UserError(f"{out / TGL_EDGES}: already exists (pass --overwrite to replace it)")
    events = load_data(args)
    try:
        periods = split_periods(events, args.val_ratio, args.test_ratio)
    except ValueError as err:
        raise UserError(f"--val-ratio/--test-ratio: {err}") from err
    write_tgl(events, periods, out)
    train, val, test = np.bincount(periods, minlength=3)
    print(f"{events.name}: {events.num_events} events, {events.num_nodes} nodes, "
          f"edge features {events.dim_edge_feat}, node features {events.dim_node_feat}; "
          f"train/val/test {train}/{val}/{test} -> {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
