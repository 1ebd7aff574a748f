"""What a run leaves behind for its user: TensorBoard scalars, the per-batch pipeline log (stage start and
end, staleness bound and staleness seen), the timeline figure and `results.json`, each file written
atomically and never through a symbolic link (common/files.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from common.files import replacing, write_atomic
from pipeline.engine.runner import RunStats
from pipeline.run.checkpoint import CHECKPOINT_NAME as CHECKPOINT
from pipeline.run.timeline import save_figure, timeline_figure

PIPELINE_LOG = "pipeline_events.csv"
RESULTS = "results.json"
TIMELINE = "timeline.png"
RUN_FILES = (RESULTS, CHECKPOINT, PIPELINE_LOG, TIMELINE)  # what a run writes into its directory


def write_pipeline_log(path: Path, stats: RunStats) -> None:
    """One row per stage event: batch, stage, start, end (seconds), k and staleness of that batch."""
    with replacing(path, text=True) as handle:
        writer = csv.writer(handle)
        writer.writerow(["batch", "stage", "start_s", "end_s", "k", "staleness"])
        for event in stats.events:
            writer.writerow([event.batch, event.stage, f"{event.start:.6f}", f"{event.end:.6f}",
                             stats.k[event.batch], stats.staleness[event.batch]])


class RunLog:
    """TensorBoard writer plus the files of one run directory."""

    def __init__(self, out_dir: Path, purge_step: int | None = None) -> None:
        self.out_dir = out_dir
        self.writer = SummaryWriter(log_dir=str(out_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def epoch_pipeline(self, epoch: int, first_step: int, stats: RunStats) -> None:
        """Per-batch k and staleness, per-epoch stage times, the timeline figure and CSV of this epoch."""
        for i, (k, seen) in enumerate(zip(stats.k, stats.staleness)):
            self.writer.add_scalar("pipeline/k", k, first_step + i)
            self.writer.add_scalar("pipeline/staleness_seen", seen, first_step + i)
        for stage, seconds in stats.stage_mean_s.items():
            self.writer.add_scalar(f"stage_ms/{stage}", 1000 * seconds, epoch)
        self.writer.add_scalar("pipeline/train_busy_fraction", stats.train_busy_fraction, epoch)
        write_pipeline_log(self.out_dir / PIPELINE_LOG, stats)
        figure = timeline_figure(stats.events, title=f"pipeline timeline, epoch {epoch}")
        save_figure(figure, self.out_dir / TIMELINE)
        self.writer.add_figure("pipeline/timeline", figure, epoch)

    def results(self, payload: dict[str, Any]) -> None:
        write_atomic(self.out_dir / RESULTS, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
