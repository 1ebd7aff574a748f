"""Link scoring from root embeddings (TGL's EdgePredictor), and `PREDICTORS`, the registry
`predictor.module` selects from.

A predictor is built from a `PredictorSpec` and is an `nn.Module` whose `forward(h, num_pos, num_neg)`
returns the logits `(B,)` of the positives and `(B * num_neg,)` of the negatives, with `h`'s rows laid out
as `[src (B), dst (B), negative dst (B * num_neg)]`. A predictor with `reads_neighbourhoods = True` also
receives the roots' sampled neighbourhoods in the same row order, `forward(h, num_pos, num_neg,
neighbourhoods)` (see `models/common_neighbours.py`); one with `reads_histories = True` then also the roots'
pair histories, `forward(h, num_pos, num_neg, neighbourhoods, histories)` (see `models/pair_history.py`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.registry import Registry


@dataclass(frozen=True)
class PredictorSpec:
    """What a predictor is built from: the root-embedding size `dim`, the node-state size `dim_state`
    (memory, or node features without memory), `fanout`, the neighbours sampled per root in the
    output layer (`sampler.fanouts[-1]`), and the config's `predictor.history_dim` and `predictor.half_lives`
    (read by a predictor of pair history, `models/pair_history.py`)."""

    dim: int
    dim_state: int = 0
    fanout: int = 0
    history_dim: int = 0
    half_lives: tuple[float, ...] = ()


PREDICTORS: Registry[Callable[[PredictorSpec], nn.Module]] = Registry("edge predictor", "predictor.module")


def pair_rows(num_pos: int, num_neg: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Row indices of the source and the destination of every scored pair in the layout
    `[src (B), dst (B), negative dst (B * num_neg)]`: the B positives, then negative `k * B + j` with source `j`."""
    sources = torch.arange(num_pos, device=device)
    src = torch.cat([sources, sources.repeat(num_neg)])
    dst = torch.arange(num_pos, 2 * num_pos + num_pos * num_neg, device=device)
    return src, dst


class EdgePredictor(nn.Module):
    """Scores an edge `(u, v)` as `out(relu(src_fc(h_u) + dst_fc(h_v)))`, a logit."""

    reads_neighbourhoods = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.src_fc = nn.Linear(dim, dim)
        self.dst_fc = nn.Linear(dim, dim)
        self.out_fc = nn.Linear(dim, 1)

    def forward(self, h: Tensor, num_pos: int, num_neg: int) -> tuple[Tensor, Tensor]:
        """Logits `(B,)` of the positives and `(B * num_neg,)` of the negatives.

        `h` rows are `[src (B), dst (B), negative dst (B * num_neg)]`; negative `k * B + j` pairs with source `j`.
        """
        h_src = self.src_fc(h[:num_pos])
        h_dst = self.dst_fc(h[num_pos:2 * num_pos])
        h_neg = self.dst_fc(h[2 * num_pos:2 * num_pos + num_pos * num_neg])
        pos = self.out_fc(F.relu(h_src + h_dst)).squeeze(1)
        neg = self.out_fc(F.relu(h_src.repeat(num_neg, 1) + h_neg)).squeeze(1)
        return pos, neg


@PREDICTORS.register("mlp")
def edge_predictor(spec: PredictorSpec) -> EdgePredictor:
    """TGL's edge predictor over the root embeddings alone."""
    return EdgePredictor(spec.dim)
