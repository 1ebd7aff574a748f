"""Shared entry point of the scripts: every failure ends in one `error: ...` line on stderr, without a
traceback, and an exit code that says what kind of failure it was. Scripts import it as
`from _cli import run_cli` (scripts/ is on sys.path).

- a user error (`UserError`: bad file, key or checkpoint): exit 2;
- a failure inside a pipeline stage (a bug, annotated by the runner with `pipeline_stage` and
  `pipeline_batch`) or an operating-system error (disk full, no permission): exit 1;
- Ctrl-C, or SIGINT/SIGTERM turned into a stop request by the script: `interrupted`, exit 130. That holds
  from the start: importing this module (the scripts import it before anything heavy) installs a SIGINT
  handler that ends a script still loading its modules with `interrupted`, exit 130, and raises
  `KeyboardInterrupt` as Python's own does once the script's code runs.

With the environment variable MSPIPE_DEBUG=1 the full traceback is printed before the error line.
Any other exception is a bug and propagates with Python's own traceback (exit 1).

It also holds what the scripts share besides: the data arguments and loading, and `configure_process`,
the process settings (allocator, torch threads) every training entry point applies.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

INTERRUPT_EXIT = 130


def _interrupt_while_loading(signum: int, frame: FrameType | None) -> None:
    """SIGINT while a script is still loading (no function of the script has started): `interrupted` and
    exit 130 at once, rather than a KeyboardInterrupt traceback from inside some import; nothing has been
    written yet. Otherwise Python's own behaviour, a `KeyboardInterrupt` that `run_cli` (or the script)
    turns into `interrupted`."""
    script = vars(sys.modules["__main__"])
    while frame is not None:
        if frame.f_globals is script and not frame.f_code.co_name.startswith("<"):
            raise KeyboardInterrupt
        frame = frame.f_back
    sys.stdout.flush()
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(INTERRUPT_EXIT)


def _started_as_script() -> bool:
    """Whether this process runs one of scripts/*.py (not, say, pytest importing this module)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is not None and Path(main_file).resolve().parent == Path(__file__).resolve().parent


if _started_as_script() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupt_while_loading)

import argparse  # noqa: E402  (the imports below take seconds: after the handler)
import math  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import NoReturn  # noqa: E402

from common.errors import PATH_CHARS, DataError, UserError, one_line, shorten  # noqa: E402
from graph.datasets import load_dataset  # noqa: E402
from graph.events import EventStream  # noqa: E402
from graph.loaders import parse_columns, shown_value  # noqa: E402
from _allocator import keep_freed_memory  # noqa: E402
from _threads import ThreadPlan, configure_threads  # noqa: E402

FAILURE_EXIT = 1
USER_ERROR_EXIT = 2
DEBUG_ENV = "MSPIPE_DEBUG"


def configure_process(threads: int | None) -> ThreadPlan:
    """The process settings every training entry point applies before its stage threads start: the
    allocator policy (scripts/_allocator.py), then torch's thread counts (`threads`, default: the
    available cores)."""
    keep_freed_memory()
    return configure_threads(threads)


def debug_enabled() -> bool:
    """Whether the user asked for full tracebacks (MSPIPE_DEBUG=1)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe_failure(err: BaseException) -> str:
    """One line naming the stage and batch that raised `err` (when the pipeline annotated it), the
    exception type and its message."""
    message = one_line(err)
    what = f"{type(err).__name__}: {message}" if message else type(err).__name__
    stage = getattr(err, "pipeline_stage", None)
    if stage is not None:
        what = f"stage {stage} failed at batch {getattr(err, 'pipeline_batch', '?')}: {what}"
    return what


def _exit_with(err: BaseException, message: str, code: int) -> NoReturn:
    if debug_enabled():
        traceback.print_exception(err)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_cli(main: Callable[[list[str] | None], int]) -> None:
    """Run `main` on the command line's arguments and exit with its return code."""
    try:
        code = main(None)
    except UserError as err:
        _exit_with(err, one_line(err), USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    except Exception as err:
        if not (hasattr(err, "pipeline_stage") or isinstance(err, OSError)):
            raise
        hint = "" if debug_enabled() else f" (set {DEBUG_ENV}=1 for the traceback)"
        _exit_with(err, describe_failure(err) + hint, FAILURE_EXIT)
    sys.exit(code)


# argparse `type=` functions: a bad value ends in argparse's usage line and `error: argument --x: ...`, exit 2
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {shown_value(text)}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (a count: epochs, jobs, repeats, threads)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {shown_value(text)}")
    return value


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds: integers from 0 to 2**53-1 (what a checkpoint stores), at least one."""
    seeds = [_integer(item.strip()) for item in text.split(",")]
    if not all(0 <= seed < 2**53 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be integers from 0 to 2**53-1, got {shown_value(text)}")
    return seeds


def ratio(text: str) -> float:
    """A share of the events: a finite number from 0 to below 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a number from 0 to below 1, got {shown_value(text)}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--data, --format and --columns: which event stream a script reads, and how."""
    parser.add_argument("--data", default=default, help="built-in dataset name (uci, wikipedia, enron) or a file path")
    parser.add_argument("--format", default=None, help="input format when --data is a file (tgl, dyglib, jodie, csv)")
    parser.add_argument("--columns", default=None,
                        help="columns of a csv or whitespace file, by 0-based position or header name: "
                             "src=0,dst=1,t=3 (plus feat=4+5 for edge features)")


def load_data(args: argparse.Namespace) -> EventStream:
    """The event stream --data, --format and --columns describe. Bad input is a one-line DataError (the
    loaders bound what one line may hold; see graph/loaders.py); a file too large for this machine's memory
    is one too, instead of a MemoryError traceback."""
    columns = None if args.columns is None else parse_columns(args.columns)
    try:
        return load_dataset(args.data, fmt=args.format, columns=columns)
    except MemoryError:
        raise DataError(f"{shorten(args.data, PATH_CHARS)}: not enough memory to load it (use a machine with more "
                        f"memory, or fewer events or feature columns)") from None
