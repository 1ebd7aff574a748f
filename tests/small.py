"""The small training config the tests share: dimensions and batches that train in seconds; and the small
synthetic CSV the command-line tests hand to the scripts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from graph.synthetic import synthetic_events
from pipeline.run.config import RunConfig, validate_config

SMALL = {
    "memory": {"dim": 16, "dim_time": 8},
    "embedding": {"dim_out": 16, "dim_time": 8, "heads": 2},
    "train": {"batch_size": 100, "epochs": 2, "lr": 0.002},
    "eval": {"batch_size": 100},
    "pipeline": {"warmup_batches": 2},
}


def small_sections(**sections: Any) -> dict[str, Any]:
    """`SMALL` with the given sections merged in (a mapping updates its section, anything else replaces it)."""
    given = {key: dict(value) for key, value in SMALL.items()}
    for key, value in sections.items():
        given[key] = {**given.get(key, {}), **value} if isinstance(value, dict) else value
    return given


def small_config(**sections: Any) -> RunConfig:
    """The validated `small_sections`."""
    return validate_config(small_sections(**sections))


def small_overrides(cfg: RunConfig, **sections: Any) -> dict[str, Any]:
    """Dotted overrides that shrink a shipped config to `small_sections` (its memory only if it has one)."""
    shrunk = small_sections(**sections)
    if cfg.memory is None:
        del shrunk["memory"]
    return {f"{section}.{key}": value for section, values in shrunk.items() for key, value in values.items()}


def write_events_csv(path: Path, seed: int) -> Path:
    """A small synthetic stream as a `src,dst,t` CSV, as a user would hand it to scripts/train.py."""
    events = synthetic_events(num_nodes=60, num_events=3000, seed=seed)
    rows = "\n".join(f"{s},{d},{t!r}" for s, d, t in zip(events.src, events.dst, events.t))
    path.write_text("src,dst,t\n" + rows + "\n")
    return path
