"""Time features: TGAT/TGN's learnable cosine encoding and float64-safe time differences."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class TimeEncoding(nn.Module):
    """Encodes a time difference `dt` as `cos(w * dt + b)` in `dim` dimensions (TGAT, TGN).

    Frequencies start at `1 / 10 ** linspace(0, 9, dim)` as in TGL, so together they resolve gaps from
    seconds to decades, and are trained with the rest of the model.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        frequency = 1.0 / 10 ** torch.linspace(0, 9, dim, dtype=torch.float64)
        self.frequency = nn.Parameter(frequency.float())
        self.phase = nn.Parameter(torch.zeros(dim))

    def forward(self, dt: Tensor) -> Tensor:
        """Encode float32 time differences of any shape `(...)` as `(..., dim)`."""
        return torch.cos(dt.unsqueeze(-1) * self.frequency + self.phase)


def elapsed(later: Tensor, earlier: Tensor) -> Tensor:
    """`later - earlier` as float32, subtracted in float64 (unix seconds do not fit float32's mantissa)."""
    return (later.double() - earlier.double()).float()
