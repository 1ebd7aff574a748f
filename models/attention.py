"""Temporal graph attention (TGAT/TGN, as in TGL) over the sampler's blocks, with DGL message passing."""
from __future__ import annotations

import dgl
import torch
import torch.nn.functional as F
from dgl.nn.functional import edge_softmax
from torch import Tensor, nn

from models.interface import ModelInputs
from models.time_encoding import TimeEncoding


class TemporalAttentionLayer(nn.Module):
    """One layer: each destination node attends over its sampled temporal neighbours.

    Query: `[h_dst || time_enc(0)]`; keys and values: `[h_src || edge features || time_enc(dt)]`. The
    attended message is merged with the node's own `h` by a linear layer, so a node without neighbours
    still gets an embedding from its own state.
    """

    def __init__(self, dim_node: int, dim_edge: int, dim_time: int, dim_out: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"attention output dim {dim_out} must be divisible by the number of heads {heads}")
        self.heads, self.head_dim = heads, dim_out // heads
        self.time_encoding = TimeEncoding(dim_time)
        self.w_q = nn.Linear(dim_node + dim_time, dim_out)
        self.w_k = nn.Linear(dim_node + dim_edge + dim_time, dim_out)
        self.w_v = nn.Linear(dim_node + dim_edge + dim_time, dim_out)
        self.w_out = nn.Linear(dim_out + dim_node, dim_out)
        self.layer_norm = nn.LayerNorm(dim_out)
        self.dropout = nn.Dropout(dropout)
        self.att_dropout = nn.Dropout(dropout)

    def forward(self, block: dgl.DGLBlock, h_src: Tensor, edge_feat: Tensor) -> Tensor:
        """Embeddings `(num_dst, dim_out)` of the block's destinations from source states `h_src`."""
        src, _ = block.edges()
        h_dst = h_src[:block.num_dst_nodes()]
        zero_dt = torch.zeros(block.num_dst_nodes(), device=h_src.device)
        query = self.w_q(torch.cat([h_dst, self.time_encoding(zero_dt)], dim=1))
        edge_in = torch.cat([h_src[src.long()], edge_feat, self.time_encoding(block.edata["dt"])], dim=1)
        query, key, value = (x.view(len(x), self.heads, self.head_dim)
                             for x in (query, self.w_k(edge_in), self.w_v(edge_in)))
        scores = F.leaky_relu(dgl.ops.e_dot_v(block, key, query), 0.2)
        attention = self.att_dropout(edge_softmax(block, scores))
        message = dgl.ops.copy_e_sum(block, attention * value).flatten(1)
        out = self.w_out(torch.cat([message, h_dst], dim=1))
        return self.layer_norm(F.relu(self.dropout(out)))


class TemporalAttention(nn.Module):
    """Multi-layer temporal graph attention: layer `l` runs on `blocks[l]`; the output rows are the roots."""

    uses_neighbours = True

    def __init__(self, layers: int, dim_in: int, dim_edge: int, dim_time: int, dim_out: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.layers = nn.ModuleList(
            TemporalAttentionLayer(dim_in if i == 0 else dim_out, dim_edge, dim_time, dim_out, heads, dropout)
            for i in range(layers)
        )

    def forward(self, h: Tensor, inputs: ModelInputs) -> Tensor:
        """Root embeddings `(num_roots, dim_out)` from the states `h` of all input nodes."""
        if len(inputs.blocks) != len(self.layers):
            raise ValueError(f"{len(self.layers)} attention layers need as many blocks, got {len(inputs.blocks)}")
        for layer, (block, module) in enumerate(zip(inputs.blocks, self.layers)):
            h = module(block, h, inputs.block_edge_feat(layer))
        return h
