"""Time features: TGAT/TGN's learnable cosine encoding and float64-safe time differences."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TimeEncoding(nn.Module):
    """Encodes a time difference `dt` as `cos(w * dt + b)` in `dim` dimensions (TGAT, TGN).

    Frequencies start at `1 / 10 ** linspace(0, 9, dim)` as in TGL, so together they resolve gaps from
    seconds to decades, and are trained with the rest of the model. They are trained as `log w`: Adam moves
    every parameter by about `lr` per step, which on raw frequencies (as in TGL) overwrites the low ones
    (1e-9..1e-4 pushed to ~1e-3 within an epoch), so gaps longer than hours alias to noise. In log space
    each step changes a frequency by the same relative amount, whatever its scale.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.log_frequency = nn.Parameter(-math.log(10) * torch.linspace(0, 9, dim))
        self.phase = nn.Parameter(torch.zeros(dim))

    @property
    def frequency(self) -> Tensor:
        """The current frequencies `w` `(dim,)`."""
        return torch.exp(self.log_frequency)

    def forward(self, dt: Tensor) -> Tensor:
        """Encode float32 time differences of any shape `(...)` as `(..., dim)`."""
        return torch.cos(dt.unsqueeze(-1) * self.frequency + self.phase)


def elapsed(later: Tensor, earlier: Tensor) -> Tensor:
    """`later - earlier` as float32, subtracted in float64 (unix seconds do not fit float32's mantissa)."""
    return (later.double() - earlier.double()).float()
