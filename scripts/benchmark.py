"""Benchmarks, one subcommand each; every run writes a JSON file (--out) and prints a table.

    python scripts/benchmark.py sampler --data wikipedia --out runs/bench_sampler.json
    python scripts/benchmark.py <subcommand> --help    (what it measures, and its options)

Each subcommand is a module of the `benchmarks` package (benchmarks/<subcommand>.py). An existing --out file
is replaced only with --overwrite (refused before any work starts), and never through a symbolic link.
"""
from __future__ import annotations

import argparse
import json
import sys

from _cli import USER_ERROR_EXIT  # first: Ctrl-C while importing is `interrupted`

from benchmarks import accuracy, attention, breakdown, compare, ranking, sampler, scale, side_by_side, soak, train
from benchmarks.shared import check_output, print_table, write_json
from common.errors import UserError

BENCHMARKS = [sampler, train, soak, compare, side_by_side, breakdown, accuracy, attention, scale, ranking]  # in the order --help lists them


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line with one subcommand per benchmark module; each sets `run` (the function that performs
    it, returning a JSON-able dict with a "results" list of rows) and `table` (the row keys to print)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ",".join(module.__name__.rpartition(".")[2] for module in BENCHMARKS)
    commands = parser.add_subparsers(dest="command", required=True, metavar=f"{{{names}}}")
    for module in BENCHMARKS:
        module.add_command(commands)
    for command in commands.choices.values():
        command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark subcommand; a user error prints one line and returns 2."""
    args = parse_args(argv)
    try:
        if args.out is not None:
            check_output(args.out, args.overwrite)  # before any work: a refusal costs nothing
        results = args.run(args)
        if args.out is None:  # compare-run: one result line on stdout for the `compare` that launched it
            print(json.dumps(results), flush=True)
            return 0
        write_json(results, args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(f"{results['benchmark']} on {results['dataset']} -> {args.out}")
    print_table(results["results"], args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
