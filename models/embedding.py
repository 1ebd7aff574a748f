"""Root embeddings from node states: JODIE's time projection, APAN's identity (as in TGL), and `EMBEDDINGS`,
the registry `embedding.module` selects from (these two and temporal attention).

An embedding is an `nn.Module` with `dim_out` (its output size), `uses_neighbours` (False: it reads only
the roots' states, so the model updates only the roots' memory) and `forward(h, inputs)` returning the
`(inputs.num_roots, dim_out)` root embeddings from the node states `h`. A factory whose embedding runs one
layer per sampled block (`embedding.layers` of them, output size `embedding.dim_out`) sets `layered = True`
on itself, so a config is checked to give one `sampler.fanouts` entry per layer before anything is built.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.registry import Registry
from models.attention import TemporalAttention
from models.config import EmbeddingConfig
from models.interface import ModelInputs
from models.time_encoding import elapsed


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an embedding is built from: the node-state size `dim_in` (memory, or node features without
    memory), the edge-feature size and the config's `embedding` section."""

    dim_in: int
    dim_edge: int
    layers: int
    heads: int
    dim_out: int
    dim_time: int
    dropout: float


EMBEDDINGS: Registry[Callable[[EmbeddingSpec], nn.Module]] = Registry("embedding module", "embedding.module")


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
    """JODIE's projection of a root's state to its query time: `norm(h) * (1 + linear(log1p(dt / scale)))`,
    followed by dropout (the config's `embedding.dropout`, as in DyGLib).

    `dt = t_root - mem_ts`, and 0 for nodes whose memory was never written. TGL divides by `t_root + 1`,
    which vanishes for unix timestamps; we divide by `scale`, a running mean of `dt` tracked in training
    (like batch norm's statistics; saved with the model, frozen in eval), so the projection behaves the same
    whatever the clock's unit or origin. The gap is read on a log scale: later periods of a stream often
    have far longer gaps than training saw (UCI's test gaps average 13x its training gaps), and a projection
    linear in `dt` scales those embeddings by hundreds, so test AP drifts down while validation AP holds.
    """

    uses_neighbours = False

    def __init__(self, dim: int, dropout: float = 0.0, momentum: float = 0.1) -> None:
        super().__init__()
        self.dim_out = dim
        # Sums a batch's statistics over the processes that train on shares of it, so every process tracks
        # the scale of the whole batch; identity for one process (data-parallel runs set an all-reduce).
        self.sum_across_processes: Callable[[Tensor], Tensor] = this_process_only
        self.momentum = momentum
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
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
        projected = self.norm(h[:roots]) * (1 + self.time_linear(torch.log1p(dt.clamp(min=0) / scale).unsqueeze(1)))
        return self.dropout(projected)

    @torch.no_grad()
    def _track_scale(self, dt: Tensor, written: Tensor) -> None:
        dt_sum, count = self.sum_across_processes(torch.stack([dt.sum(), written.sum().to(dt.dtype)]))
        batch_mean = dt_sum / count.clamp(min=1)
        blended = torch.where(self.dt_scale > 0,
                              (1 - self.momentum) * self.dt_scale + self.momentum * batch_mean, batch_mean)
        self.dt_scale.copy_(torch.where(batch_mean > 0, blended, self.dt_scale))


def this_process_only(totals: Tensor) -> Tensor:
    """A batch statistic's totals when one process trains on the whole batch: unchanged."""
    return totals


@EMBEDDINGS.register("attention")
def attention_embedding(spec: EmbeddingSpec) -> nn.Module:
    """TGN's temporal graph attention over the sampled neighbours."""
    return TemporalAttention(spec.layers, spec.dim_in, spec.dim_edge, spec.dim_time, spec.dim_out, spec.heads,
                             spec.dropout)


attention_embedding.layered = True  # layer l runs on blocks[l]: one fanout per layer


@EMBEDDINGS.register("jodie")
def jodie_embedding(spec: EmbeddingSpec) -> nn.Module:
    """JODIE's time projection; keeps `dim_in` as its output size."""
    return JodieProjection(spec.dim_in, spec.dropout)


@EMBEDDINGS.register("identity")
def identity_embedding(spec: EmbeddingSpec) -> nn.Module:
    """APAN's normalised identity; keeps `dim_in` as its output size."""
    return IdentityEmbedding(spec.dim_in)


def build_embedding(cfg: EmbeddingConfig, dim_in: int, dim_edge: int) -> nn.Module:
    """The embedding registered as `cfg.module` over node states of `dim_in`."""
    spec = EmbeddingSpec(dim_in, dim_edge, cfg.layers, cfg.heads, cfg.dim_out, cfg.dim_time, cfg.dropout)
    return EMBEDDINGS.get(cfg.module)(spec)
