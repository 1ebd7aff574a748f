"""Gantt chart of a run's stage events: one row per stage, one bar per (batch, stage) event.

Bars are coloured by batch (a repeating palette), so a pipelined run shows the stages of consecutive
batches overlapping while each row stays strictly serial. The figure is drawn with matplotlib's Agg
canvas directly, without pyplot, so no global backend or figure registry is touched.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.errors import OutputError
from common.files import replacing
from graph.loaders import shown_value
from pipeline.engine.profiler import STAGES
from pipeline.engine.runner import StageEvent

PALETTE = "tab10"


def timeline_figure(events: Sequence[StageEvent], title: str | None = None,
                    path: str | Path | None = None) -> Figure:
    """A Gantt chart of `events` (time in ms since the run started); also saved to `path` if given (`save_figure`).
    An event of a stage not in STAGES is a ValueError naming it (there is no row to draw it in)."""
    rows = {stage: row for row, stage in enumerate(STAGES)}
    unknown = next((e.stage for e in events if e.stage not in rows), None)
    if unknown is not None:
        raise ValueError(f"unknown pipeline stage {shown_value(unknown)} (stages: {', '.join(STAGES)})")
    figure = Figure(figsize=(10, 3))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    y = np.array([rows[e.stage] for e in events], dtype=float)
    start_ms = np.array([1000 * e.start for e in events])
    width_ms = np.array([1000 * (e.end - e.start) for e in events])
    colours = matplotlib.colormaps[PALETTE](np.array([e.batch for e in events], dtype=int) % 10)
    ax.barh(y, width_ms, left=start_ms, height=0.8, color=colours, edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(STAGES)), labels=list(STAGES))
    ax.set_ylim(len(STAGES) - 0.5, -0.5)
    ax.set_xlabel("time since run start (ms)")
    if title:
        ax.set_title(title)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, Path(path))
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` to `path` in the format its suffix names (PNG, SVG, PDF, ...), atomically and never
    through a symbolic link (`common.files.replacing`); an unknown format is an `OutputError` naming it."""
    fmt = path.suffix.lstrip(".").lower()
    supported = figure.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise OutputError(f"{path}: unknown image format {shown_value(fmt)} (known: {', '.join(sorted(supported))})")
    with replacing(path) as handle:
        figure.savefig(handle, format=fmt, dpi=120, bbox_inches="tight")
