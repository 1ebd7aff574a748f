"""Link scoring from root embeddings (TGL's EdgePredictor), and `PREDICTORS`, the registry
`predictor.module` selects from.

A predictor is built from the embedding size alone and is an `nn.Module` whose `forward(h, num_pos,
num_neg)` returns the logits `(B,)` of the positives and `(B * num_neg,)` of the negatives, with `h`'s rows
laid out as `[src (B), dst (B), negative dst (B * num_neg)]`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from common.registry import Registry

PREDICTORS: Registry[Callable[[int], nn.Module]] = Registry("edge predictor", "predictor.module")


@PREDICTORS.register("mlp")
class EdgePredictor(nn.Module):
    """Scores an edge `(u, v)` as `out(relu(src_fc(h_u) + dst_fc(h_v)))`, a logit."""

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
