"""Draw the pipeline's Gantt chart (one row per stage, one bar per batch) from a run directory.

    python scripts/plot_timeline.py runs/demo [--out timeline.png] [--first 0 --last 40]

Reads `pipeline_events.csv` (written by scripts/train.py for the last epoch) so a user can see how the
five stages of consecutive batches overlap under the chosen mode. A log that is not one (a stage name it
does not know, a line that is not `batch,stage,start_s,end_s,...`, a FIFO or device) is one `error:` line
naming the file and line, exit 2. The image is written atomically and never through a symbolic link
(common/files.py): an --out that is a link, or in a folder that does not exist, is one line, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

from _cli import run_cli

from common.errors import UserError
from graph.loaders import open_regular_file, path_status, shown_value
from pipeline.engine.profiler import STAGES
from pipeline.engine.runner import StageEvent
from pipeline.run.reporting import PIPELINE_LOG, TIMELINE
from pipeline.run.timeline import save_figure, timeline_figure

LOG_COLUMNS = ("batch", "stage", "start_s", "end_s")
# A log line is about 50 characters (batch, stage, two times, k, staleness); a line this long means the
# file is something else, and reading it whole could take any amount of memory.
MAX_LOG_LINE = 4096
MAX_BATCH = 2**62  # batch numbers are drawn as int64; a larger one is not a batch


def _log_lines(handle: io.TextIOBase, path: Path) -> Iterator[str]:
    """The lines of an open log, each read with a bound; a longer one is an error naming it."""
    number = 0
    while line := handle.readline(MAX_LOG_LINE + 1):
        number += 1
        if len(line) > MAX_LOG_LINE:
            raise UserError(f"{path}: line {number:,} is longer than {MAX_LOG_LINE:,} characters "
                            f"(not a pipeline log?)")
        yield line


def _stage_event(row: list[str], index: dict[str, int], path: Path, line: int) -> StageEvent:
    """One log row as a StageEvent; a field that is missing, of the wrong type or out of range is an error."""
    if len(row) <= max(index.values()):
        raise UserError(f"{path}: line {line:,}: has {len(row)} fields, but the header puts "
                        f"{', '.join(index)} in fields {', '.join(str(at + 1) for at in index.values())}")
    fields = {name: row[at].strip() for name, at in index.items()}
    if fields["stage"] not in STAGES:
        raise UserError(f"{path}: line {line:,}: unknown stage {shown_value(fields['stage'])} "
                        f"(stages: {', '.join(STAGES)})")
    try:
        batch = int(fields["batch"])
        start, end = float(fields["start_s"]), float(fields["end_s"])
    except ValueError:
        raise UserError(f"{path}: line {line:,}: batch must be an integer and start_s, end_s numbers "
                        f"(found {shown_value(fields['batch'])}, {shown_value(fields['start_s'])}, "
                        f"{shown_value(fields['end_s'])})") from None
    if not 0 <= batch < MAX_BATCH:
        raise UserError(f"{path}: line {line:,}: batch {shown_value(fields['batch'])} is out of range (0 to 2**62)")
    if not (math.isfinite(start) and math.isfinite(end) and start <= end):
        raise UserError(f"{path}: line {line:,}: start_s and end_s must be finite with start_s <= end_s "
                        f"(found {start!r}, {end!r})")
    return StageEvent(batch, fields["stage"], start, end)


def read_events(path: Path, first: int, last: int | None) -> list[StageEvent]:
    """Stage events of batches first..last from a pipeline log CSV (read once, line by line, with a bound
    on a line's length; only the events in the range are kept)."""
    if path_status(path) is None:
        raise UserError(f"{path}: no pipeline log (run scripts/train.py with --out pointing here first)")
    events = []
    with open_regular_file(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        rows = csv.reader(_log_lines(handle, path))
        try:
            header = [name.strip() for name in next(rows, [])]
            missing = [name for name in LOG_COLUMNS if name not in header]
            if missing:
                raise UserError(f"{path}: malformed pipeline log: header lacks {', '.join(missing)} "
                                f"(expected {','.join(LOG_COLUMNS)},...)")
            index = {name: header.index(name) for name in LOG_COLUMNS}
            for row in rows:
                if not row:
                    continue
                event = _stage_event(row, index, path, rows.line_num)
                if event.batch >= first and (last is None or event.batch <= last):
                    events.append(event)
        except UnicodeDecodeError:
            raise UserError(f"{path}: malformed pipeline log: not UTF-8 text") from None
        except csv.Error as err:
            raise UserError(f"{path}: line {rows.line_num:,}: malformed pipeline log "
                            f"({shown_value(str(err))})") from None
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory written by scripts/train.py")
    parser.add_argument("--out", help="image path, PNG unless its suffix names another format "
                                      "(default: RUN/timeline.png)")
    parser.add_argument("--first", type=int, default=0, help="first batch to draw")
    parser.add_argument("--last", type=int, default=None, help="last batch to draw")
    args = parser.parse_args(argv)
    run = Path(args.run)
    events = read_events(run / PIPELINE_LOG, args.first, args.last)
    if not events:
        raise UserError(f"{run / PIPELINE_LOG}: no stage events in the chosen batch range")
    out = Path(args.out) if args.out else run / TIMELINE
    if not out.suffix:
        out = out.with_name(f"{out.name}.png")  # as matplotlib names it
    save_figure(timeline_figure(events, title=f"pipeline timeline: {run.name}"), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
