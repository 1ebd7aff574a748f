"""Prepare an event stream once for training from disk: any supported input (a built-in name, a csv, jodie,
DyGLib or TGL file, `--columns` for other layouts) becomes a directory of memory-mapped arrays (events,
edge and node features, the T-CSR index; see docs/usage.md#streams-on-disk) that `--data DIR` trains,
evaluates and benchmarks from.

    python scripts/prepare_data.py --data big_stream.csv.xz --out DATA/big
    python scripts/train.py --config configs/tgn.yml --data DATA/big

The input is read `--chunk-rows` rows at a time, so it may be far bigger than memory; a bad row stops the
conversion with one line naming its line, and nothing is left behind (the directory appears, complete, only
at the end). `--layout tgl` writes TGL's edges.csv and feature tensors instead (read whole into memory),
with the chronological split as ext_roll.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _cli import add_data_arguments, load_data, ratio, run_cli  # first: Ctrl-C while importing is `interrupted`

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from common.errors import UserError
from common.files import check_new_output, check_target, replacing
from graph.datasets import DEFAULT_DATASET, dataset_source
from graph.events import EventStream
from graph.loaders import TGL_EDGES, iter_event_chunks, parse_columns
from graph.prepared import PreparedWriter
from graph.split import split_periods

TGL_FEATURES = ("edge_features.pt", "node_features.pt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, DEFAULT_DATASET)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layout", choices=("prepared", "tgl"), default="prepared",
                        help="prepared: memory-mapped arrays (default); tgl: TGL's edges.csv and .pt features")
    parser.add_argument("--chunk-rows", type=int, default=1_000_000, help="input rows read per step (prepared)")
    parser.add_argument("--val-ratio", type=ratio, default=0.15, help="share of events (by time) in validation (tgl)")
    parser.add_argument("--test-ratio", type=ratio, default=0.15, help="share of events (by time) in test (tgl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.val_ratio + args.test_ratio >= 1:
        raise UserError(f"--val-ratio {args.val_ratio:g} and --test-ratio {args.test_ratio:g}: together they must be "
                        f"below 1 (the rest is the training period)")
    return args


def write_tgl(events: EventStream, ext_roll: np.ndarray, out: Path) -> None:
    """Write the stream as TGL's edges.csv plus feature tensors, each atomically (common/files.py)."""
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"src": events.src, "dst": events.dst, "time": events.t, "ext_roll": ext_roll})
    with replacing(out / TGL_EDGES, text=True) as handle:
        table.to_csv(handle)
    for filename, features in zip(TGL_FEATURES, (events.edge_feat, events.node_feat)):
        if features is not None:
            with replacing(out / filename) as handle:
                torch.save(torch.from_numpy(features), handle)


def prepare_tgl(args: argparse.Namespace, out: Path) -> str:
    if out.is_dir():  # before loading: an earlier output is replaced only with --overwrite, never through a link
        check_new_output(out / TGL_EDGES, args.overwrite)
        for filename in TGL_FEATURES:
            check_target(out / filename)
    events = load_data(args)
    periods = split_periods(events, args.val_ratio, args.test_ratio)
    write_tgl(events, periods, out)
    train, val, test = np.bincount(periods, minlength=3)
    return (f"{events.name}: {events.num_events} events, {events.num_nodes} nodes, "
            f"edge features {events.dim_edge_feat}, node features {events.dim_node_feat}; "
            f"train/val/test {train}/{val}/{test} -> {out}")


def prepare_memory_mapped(args: argparse.Namespace, out: Path) -> str:
    """Read the input chunk by chunk into a `PreparedWriter`, with a progress bar per step."""
    if args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be positive, got {args.chunk_rows}")
    source, name = dataset_source(args.data)
    columns = None if args.columns is None else parse_columns(args.columns)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, events: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(desc=stage, unit=" events", unit_scale=True, disable=args.no_progress)
        bars[stage].update(events)

    try:
        with iter_event_chunks(source, fmt=args.format, columns=columns, chunk_rows=args.chunk_rows) as chunks, \
                PreparedWriter(out, name or chunks.name, overwrite=args.overwrite, progress=progress) as writer:
            for chunk in chunks:
                writer.append(chunk.src, chunk.dst, chunk.t, chunk.edge_feat, chunk.ext_roll)
            meta = writer.finish(chunks.node_feat)
    except MemoryError:
        raise UserError(f"{args.data}: not enough memory for chunks of {args.chunk_rows:,} rows; lower --chunk-rows") from None
    finally:
        for bar in bars.values():
            bar.close()
    arrays = meta["arrays"]
    width = {key: arrays[key]["shape"][1] if key in arrays else 0 for key in ("edge_feat", "node_feat")}
    seconds = ", ".join(f"{key.removesuffix('_s')} {value:.1f} s" for key, value in meta["timings"].items())
    return (f"{meta['name']}: {meta['num_events']} events, {meta['num_nodes']} nodes, edge features "
            f"{width['edge_feat']}, node features {width['node_feat']} ({seconds}) -> {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    print(prepare_tgl(args, out) if args.layout == "tgl" else prepare_memory_mapped(args, out))
    return 0


if __name__ == "__main__":
    run_cli(main)
