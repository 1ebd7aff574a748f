"""What several benchmarks share: the repository root, the options of the subcommands that train, what a
result records about where it was measured (machine, library versions, commit), this process's resident
memory, and writing a result as JSON and as a text table."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
from pathlib import Path

import dgl
import numpy as np
import torch

from _cli import positive_int
from common.errors import OutputError, UserError
from common.files import check_new_output, write_atomic
from pipeline.run.config import parse_settings

REPO = Path(__file__).resolve().parents[1]


def add_parser(commands: argparse._SubParsersAction, name: str, summary: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's subcommand: `summary` in the list of subcommands, its module's docstring `doc` heading its
    own --help."""
    return commands.add_parser(name, help=summary, description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def add_training_arguments(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    """Options of the subcommands that train: epochs, batch size, seed, threads and the output file."""
    parser.add_argument("--epochs", type=positive_int, default=default_epochs, help="epochs of each run")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="override train/eval batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU cores torch may use (default: all)")
    parser.add_argument("--out", required=True, help="JSON file for the results")


def machine() -> str:
    """The processor the numbers were measured on, as the platform names it."""
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """The versions of Python and the libraries a benchmark's numbers depend on."""
    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "dgl": dgl.__version__}


def git_commit() -> str:
    """The checked-out commit of this repository, with "+dirty" when tracked files other than the
    benchmark results in benchmarks/ have uncommitted changes."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks")
    return commit + ("+dirty" if changed else "")


def resident_mb() -> float:
    """This process's current resident set size in MB (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mb() -> float:
    """The highest resident set size this process has had so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_number(value: float) -> str:
    """Large numbers with thousands separators, small ones (speedups, AP, milliseconds) with decimals."""
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as an aligned text table; numbers rounded, with thousands separators."""
    cells = [[format_number(row[c]) if isinstance(row.get(c), (int, float)) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def check_output(path: str, overwrite: bool) -> None:
    """Check --out before any benchmark work: it must not be a symbolic link or a folder, nor an existing
    file unless `overwrite` (--overwrite), and a missing folder for it must be one that can be made; each is
    one line (`OutputError`). Nothing is created yet."""
    folder = Path(path).absolute().parent
    if folder.is_dir():
        check_new_output(path, overwrite)
        return
    ancestor = next(parent for parent in folder.parents if os.path.lexists(parent))
    if not ancestor.is_dir():
        raise OutputError(f"{ancestor}: is not a directory, so the folder of --out cannot be made in it")


def write_json(results: dict, path: str) -> None:
    """Write the results atomically, never through a symbolic link, creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(results, indent=2) + "\n")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:KEY=VALUE;KEY=VALUE` as the variant's name and its `--set` overrides (checked by `parse_settings`)."""
    name, sep, settings = text.partition(":")
    if not sep or not name.strip():
        raise UserError(f"--variant: '{text}' is not NAME:KEY=VALUE;... (e.g. 'batch:memory.update_time=batch')")
    overrides = [setting.strip() for setting in settings.split(";") if setting.strip()]
    parse_settings(overrides, f"--variant {name.strip()}")
    return name.strip(), overrides
