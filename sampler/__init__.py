"""Temporal neighbour sampling: a T-CSR index and a sampler that returns DGL blocks."""
import common  # noqa: F401  (selects DGL's backend before dgl loads)

from sampler.tcsr import TCSR  # noqa: E402
from sampler.temporal import TemporalSampler  # noqa: E402

__all__ = ["TCSR", "TemporalSampler"]
