"""Shared entry point of the scripts: user errors become one `error: ...` line and exit code 2, Ctrl-C exits
130, neither with a traceback. Scripts import it as `from _cli import run_cli` (scripts/ is on sys.path)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

os.environ.setdefault("DGLBACKEND", "pytorch")

from graph.errors import UserError, one_line  # noqa: E402  (after DGLBACKEND, before anything imports dgl)

USER_ERROR_EXIT = 2
INTERRUPT_EXIT = 130


def run_cli(main: Callable[[list[str] | None], int]) -> None:
    """Run `main` on the command line's arguments and exit with its return code."""
    try:
        code = main(None)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    sys.exit(code)
