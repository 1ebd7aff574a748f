"""Temporal graph attention (TGAT/TGN, as in TGL) over the sampler's blocks, with DGL message passing."""
from __future__ import annotations

import dgl
import torch
import torch.nn.functional as F
from dgl.nn.functional import edge_softmax
from torch import Tensor, nn

from models.distinct import Groups, group
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

    def forward(self, block: dgl.DGLBlock, h_src: Tensor, edge_feat: Tensor, states: Groups | None = None) -> Tensor:
        """Embeddings `(num_dst, dim_out)` of the block's destinations from source states `h_src`.

        `states`, if given, groups the sources whose rows of `h_src` are equal; their projections are then
        computed once per group.
        """
        src = block.edges()[0].long()
        h_dst = h_src[:block.num_dst_nodes()]
        query = self._query(h_dst)
        key, value = self._keys_and_values(h_src, src, edge_feat, block, states).chunk(2, dim=1)
        query, key, value = (x.view(len(x), self.heads, self.head_dim) for x in (query, key, value))
        scores = F.leaky_relu(dgl.ops.e_dot_v(block, key, query), 0.2)
        attention = self.att_dropout(edge_softmax(block, scores))
        message = dgl.ops.copy_e_sum(block, attention * value).flatten(1)
        out = self.w_out(torch.cat([message, h_dst], dim=1))
        return self.layer_norm(F.relu(self.dropout(out)))

    def _query(self, h_dst: Tensor) -> Tensor:
        """`w_q([h_dst || time_enc(0)])`, with the constant time part computed once."""
        weight_node, weight_time = self.w_q.weight.split([h_dst.shape[1], self.time_encoding.dim], dim=1)
        zero = torch.zeros(1, device=h_dst.device)
        return F.linear(h_dst, weight_node) + F.linear(self.time_encoding(zero), weight_time, self.w_q.bias)

    def _keys_and_values(self, h_src: Tensor, src: Tensor, edge_feat: Tensor, block: dgl.DGLBlock,
                         states: Groups | None) -> Tensor:
        """`[w_k(x) || w_v(x)]` per edge, `x = [h_src[src] || edge features || time_enc(dt)]`.

        The map is split by the columns of `x`: the node part is computed per distinct source state and
        the edge part per distinct edge id, then gathered per edge; the time part is computed per edge and
        added in place (no copy of the gathered rows).
        """
        weight = torch.cat([self.w_k.weight, self.w_v.weight])
        bias = torch.cat([self.w_k.bias, self.w_v.bias])
        weight_node, weight_edge, weight_time = weight.split(
            [h_src.shape[1], edge_feat.shape[1], self.time_encoding.dim], dim=1)
        if states is None:
            node_part = F.linear(h_src, weight_node, bias).index_select(0, src)
        else:
            node_part = F.linear(h_src.index_select(0, states.first), weight_node, bias).index_select(
                0, states.index[src])
        out = node_part.addmm_(self.time_encoding(block.edata["dt"]), weight_time.t())
        if edge_feat.shape[1] > 0:
            edges = group(block.edata["ID"])
            out = out.add_(F.linear(edge_feat[edges.first], weight_edge).index_select(0, edges.index))
        return out


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
            h = module(block, h, inputs.block_edge_feat(layer), inputs.input_states if layer == 0 else None)
        return h
