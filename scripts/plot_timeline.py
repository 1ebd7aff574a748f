"""Draw the pipeline's Gantt chart (one row per stage, one bar per batch) from a run directory.

    python scripts/plot_timeline.py runs/demo [--out timeline.png] [--first 0 --last 40]

Reads `pipeline_events.csv` (written by scripts/train.py for the last epoch) so a user can see how the
five stages of consecutive batches overlap under the chosen mode.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from _cli import run_cli

from common.errors import UserError
from pipeline.engine.runner import StageEvent
from pipeline.run.reporting import PIPELINE_LOG
from pipeline.run.timeline import timeline_figure


def read_events(path: Path, first: int, last: int | None) -> list[StageEvent]:
    """Stage events of batches first..last from a pipeline log CSV."""
    if not path.is_file():
        raise UserError(f"{path}: no pipeline log (run scripts/train.py with --out pointing here first)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        events = [StageEvent(int(r["batch"]), r["stage"], float(r["start_s"]), float(r["end_s"])) for r in rows]
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path}: malformed pipeline log ({err})") from None
    return [e for e in events if e.batch >= first and (last is None or e.batch <= last)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory written by scripts/train.py")
    parser.add_argument("--out", help="PNG path (default: RUN/timeline.png)")
    parser.add_argument("--first", type=int, default=0, help="first batch to draw")
    parser.add_argument("--last", type=int, default=None, help="last batch to draw")
    args = parser.parse_args(argv)
    run = Path(args.run)
    events = read_events(run / PIPELINE_LOG, args.first, args.last)
    if not events:
        raise UserError(f"{run / PIPELINE_LOG}: no stage events in the chosen batch range")
    out = Path(args.out) if args.out else run / "timeline.png"
    timeline_figure(events, title=f"pipeline timeline: {run.name}").savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
