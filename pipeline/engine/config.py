"""The engine's settings as typed, frozen records: which scheduler runs the stages and its parameters (their
defaults are written here only)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AutoConfig:
    """`pipeline.auto`: the modes `auto` tries on the running job, batches per trial, trials per mode, how
    many batches the chosen mode runs before the trials run again, by how much (a fraction of its time per
    batch) another mode must beat the first candidate to be chosen over it (the first is the one without
    staleness, and a gain within the machine's noise is not worth staleness), and how much slower than the
    fastest a mode may be after a round and still run the next (a clear loser's trials only cost time)."""

    candidates: tuple[str, ...] = ("sequential", "presample", "mspipe")
    trial_batches: int = 8
    rounds: int = 2
    recheck_every: int = 1000
    margin: float = 0.03
    drop: float = 0.1


@dataclass(frozen=True)
class PipelineConfig:
    """`pipeline`: the scheduler that runs the stages (`mode`, one of `SCHEDULERS`) and its parameters:
    fixed-k's bound `k`; MSPipe's cap `k_max`, its sequential `warmup_batches` and `delayed_fetch`; how
    `auto` chooses among modes."""

    mode: str = "auto"
    k: int = 2
    k_max: int = 8
    warmup_batches: int = 5
    delayed_fetch: bool = True
    auto: AutoConfig = field(default_factory=AutoConfig)
