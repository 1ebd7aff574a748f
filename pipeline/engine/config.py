"""The engine's settings as typed, frozen records: which scheduler runs the stages and its parameters (their
defaults are written here only)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AutoConfig:
    """`pipeline.auto`: the modes `auto` tries on the running job and the train stage's thread counts it
    tries them at (empty: the run's count and half of it; `--threads N` fixes N), batches per trial, trials
    per setting, how many batches the chosen setting runs before the trials run again, by how much (a
    fraction of its time per batch) another setting must beat the first to be chosen over it (the first is
    the one without staleness, and a gain within the machine's noise is not worth staleness), how much
    slower than the fastest a setting may be after a round and still run the next (a clear loser's trials
    only cost time), how often (batches) and by how much (a fraction) a change of the chosen setting's speed
    is checked for, which starts the trials again, and the batches of the probe each setting gets before the
    trials (0: none), after which only those within `drop` of the fastest are tried."""

    candidates: tuple[str, ...] = ("sequential", "presample", "mspipe")
    threads: tuple[int, ...] = ()
    trial_batches: int = 8
    rounds: int = 2
    recheck_every: int = 1000
    margin: float = 0.03
    drop: float = 0.1
    watch_batches: int = 20
    slowdown: float = 0.5
    probe_batches: int = 3


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
