"""Root embeddings from node states: JODIE's time projection, APAN's identity (as in TGL), and the choice
among them and temporal attention."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.attention import TemporalAttention
from models.interface import ModelInputs
from models.time_encoding import elapsed

EMBEDDINGS = ("attention", "jodie", "identity")


class IdentityEmbedding(nn.Module):
    """The roots' state, layer-normalised (TGL's IdentityNormLayer, used by APAN)."""

    uses_neighbours = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim_out = dim
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, inputs: ModelInputs) -> Tensor:
        """Root embeddings `(num_roots, dim)`."""
        return self.norm(h[:inputs.num_roots])


class JodieProjection(nn.Module):
    """JODIE's projection of a root's state to its query time: `norm(h) * (1 + linear(dt / scale))`.

    `dt = t_root - mem_ts`, and 0 for nodes whose memory was never written. TGL divides by `t_root + 1`,
    which vanishes for unix timestamps; we divide by `scale`, a running mean of `dt` tracked in training
    (like batch norm's statistics; saved with the model, frozen in eval), so the projection behaves the same
    whatever the clock's unit or origin.
    """

    uses_neighbours = False

    def __init__(self, dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.dim_out = dim
        self.momentum = momentum
        self.norm = nn.LayerNorm(dim)
        self.time_linear = nn.Linear(1, dim)
        nn.init.normal_(self.time_linear.weight, 0.0, 1.0)
        nn.init.normal_(self.time_linear.bias, 0.0, 1.0)
        self.register_buffer("dt_scale", torch.zeros(()))

    def forward(self, h: Tensor, inputs: ModelInputs) -> Tensor:
        """Root embeddings `(num_roots, dim)`; in training, also updates the running `dt` scale."""
        roots = inputs.num_roots
        written = inputs.memory.version[:roots] >= 0
        dt = elapsed(inputs.blocks[-1].dstdata["ts"], inputs.memory.mem_ts[:roots])
        dt = torch.where(written, dt, torch.zeros_like(dt))
        if self.training:
            self._track_scale(dt, written)
        scale = torch.where(self.dt_scale > 0, self.dt_scale, torch.ones_like(self.dt_scale))
        return self.norm(h[:roots]) * (1 + self.time_linear((dt / scale).unsqueeze(1)))

    @torch.no_grad()
    def _track_scale(self, dt: Tensor, written: Tensor) -> None:
        batch_mean = dt.sum() / written.sum().clamp(min=1)
        blended = torch.where(self.dt_scale > 0,
                              (1 - self.momentum) * self.dt_scale + self.momentum * batch_mean, batch_mean)
        self.dt_scale.copy_(torch.where(batch_mean > 0, blended, self.dt_scale))


def build_embedding(module: str, dim_in: int, dim_edge: int, cfg: dict) -> nn.Module:
    """The embedding named `module` (one of EMBEDDINGS) over node states of `dim_in`.

    `cfg` is the config's `embedding` section (layers, heads, dim_out, dim_time, dropout); the projection
    and identity embeddings keep `dim_in` as their output size.
    """
    if module == "attention":
        return TemporalAttention(cfg["layers"], dim_in, dim_edge, cfg["dim_time"], cfg["dim_out"], cfg["heads"],
                                 cfg["dropout"])
    if module == "jodie":
        return JodieProjection(dim_in)
    if module == "identity":
        return IdentityEmbedding(dim_in)
    raise ValueError(f"unknown embedding module {module!r}, expected one of {EMBEDDINGS}")
