"""The `sampler` config section as a typed, frozen record (its defaults are written here only)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerConfig:
    """`sampler`: the neighbour-finding strategy (`STRATEGIES`), the fanout of each layer (input layer
    first, DGL's order) and whether each event is also stored from its destination's side."""

    strategy: str = "recent"
    fanouts: tuple[int, ...] = (10,)
    add_reverse: bool = True
