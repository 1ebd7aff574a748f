"""The Gantt chart of stage events: one row per stage, one bar per event, placed at its time; PNG output."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.profiler import STAGES
from pipeline.engine.runner import StageEvent
from pipeline.run.timeline import timeline_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def staircase_events(num_batches: int = 3) -> list[StageEvent]:
    """A pipelined schedule: stage j of batch i runs during [(i + j) * 10, (i + j) * 10 + 8) ms."""
    return [StageEvent(i, stage, (i + j) * 0.010, (i + j) * 0.010 + 0.008)
            for i in range(num_batches) for j, stage in enumerate(STAGES)]


def test_one_row_per_stage_and_one_bar_per_event():
    events = staircase_events()
    figure = timeline_figure(events, title="three batches")
    (ax,) = figure.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == list(STAGES)
    assert ax.get_title() == "three batches"
    bars = ax.patches
    assert len(bars) == len(events)
    for bar, event in zip(bars, events):
        assert bar.get_y() + bar.get_height() / 2 == pytest.approx(STAGES.index(event.stage))
        assert bar.get_x() == pytest.approx(1000 * event.start)
        assert bar.get_width() == pytest.approx(1000 * (event.end - event.start))


def test_consecutive_batches_get_different_colours():
    bars = timeline_figure(staircase_events()).axes[0].patches
    first_stage = [bar.get_facecolor() for bar in bars[::len(STAGES)]]
    assert len(set(first_stage)) == 3


def test_saves_a_png(tmp_path):
    path = tmp_path / "timeline.png"
    figure = timeline_figure(staircase_events(), path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    again = tmp_path / "again.png"
    figure.savefig(again)
    assert again.read_bytes()[:8] == PNG_MAGIC


def test_an_empty_run_draws_an_empty_chart(tmp_path):
    figure = timeline_figure([], path=tmp_path / "empty.png")
    assert len(figure.axes[0].patches) == 0
    assert (tmp_path / "empty.png").stat().st_size > 0
    assert np.asarray(figure.canvas.buffer_rgba()).ndim == 3
