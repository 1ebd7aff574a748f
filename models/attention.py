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

    def embed_over_times(self, h_root: Tensor, h_nbr: Tensor, edge_nbr: Tensor, t_nbr: Tensor, valid: Tensor,
                         times: Tensor) -> Tensor:
        """`forward`'s embeddings `(T, R, dim_out)` of `R` roots, each over a neighbourhood that stays the same,
        queried at each of `times` `(T,)` (float64): root `r` at time `times[k]` attends over its neighbours
        `f` where `valid[r, f]`, with states `h_nbr[r, f]`, edge features `edge_nbr[r, f]` and edge times
        `t_nbr[r, f]` (float64), and gets the gaps `times[k] - t_nbr[r, f]`. The result is a root-major
        view: `.transpose(0, 1)` of it is contiguous.

        Nothing is computed per (time, root, neighbour) but the attention's weights. The query
        `w_q([h_root || time_enc(0)])` does not depend on the time, and the time encoding splits as
        `cos(w (t - t_j) + b) = cos(w t + b) cos(w t_j) + sin(w t + b) sin(w t_j)`, so with `a = W_t^T q` a
        logit's time part is `[cos(w t + b), sin(w t + b)] . [a cos(w t_j), a sin(w t_j)]`, one matrix product
        of the times' and the neighbours' vectors, and the values' time part is `W_t (cos(w t + b) * sum_j
        alpha_j cos(w t_j) + sin(w t + b) * sum_j alpha_j sin(w t_j))`. Both value parts go through `w_out`
        as one map per head, so the per-head messages are never laid out. The angles are computed in float64;
        `forward` rounds the gap to float32 and multiplies in float32, so the two agree to float rounding
        (closer where `w * gap` is small).
        """
        roots, width = valid.shape
        steps = len(times)
        dim_node, dim_edge, dim_time = h_root.shape[1], edge_nbr.shape[-1], self.time_encoding.dim
        heads, head_dim = self.heads, self.head_dim
        dim_out = heads * head_dim
        weight = torch.cat([self.w_k.weight, self.w_v.weight])
        weight_node, weight_edge, weight_time = weight.split([dim_node, dim_edge, dim_time], dim=1)
        fixed = F.linear(h_nbr, weight_node, torch.cat([self.w_k.bias, self.w_v.bias]))
        if dim_edge > 0:
            fixed = fixed + F.linear(edge_nbr, weight_edge)
        key, value = (x.reshape(roots, width, heads, head_dim) for x in fixed.chunk(2, dim=-1))
        key_time, value_time = (w.reshape(heads, head_dim, dim_time) for w in weight_time.chunk(2, dim=0))
        query = self._query(h_root).view(roots, heads, head_dim)
        frequency, phase = self.time_encoding.frequency.double(), self.time_encoding.phase.double()
        nbr_angle = t_nbr.unsqueeze(-1) * frequency
        nbr_trig = torch.cat([nbr_angle.cos(), nbr_angle.sin()], -1).to(h_root.dtype)  # (R, F, 2D)
        time_angle = times.unsqueeze(-1) * frequency + phase  # (T, D)
        time_cos, time_sin = time_angle.cos().to(h_root.dtype), time_angle.sin().to(h_root.dtype)
        fixed_logit = torch.einsum("rhe,rfhe->rfh", query, key)
        a = torch.einsum("rhe,hed->rhd", query, key_time)  # W_t^T q per root and head
        per_neighbour = a.unsqueeze(1).repeat(1, 1, 1, 2) * nbr_trig.unsqueeze(2)  # (R, F, H, 2D)
        per_time = torch.cat([time_cos, time_sin], dim=1)  # (T, 2D)
        logits = torch.addmm(fixed_logit.reshape(-1, 1), per_neighbour.view(-1, 2 * dim_time), per_time.t())
        logits = F.leaky_relu(logits.view(roots, width, heads, steps), 0.2)
        logits = logits.masked_fill_(~valid.view(roots, width, 1, 1), float("-inf"))
        attention = torch.softmax(logits, dim=1).nan_to_num_(0.0)  # (R, F, H, T); no neighbours: no message
        attention = self.att_dropout(attention)
        weight_message, weight_own = self.w_out.weight.split([dim_out, dim_node], dim=1)
        weight_message = weight_message.view(dim_out, heads, head_dim)
        value_out = torch.einsum("rfhe,ohe->rfho", value, weight_message)  # each neighbour's value through w_out
        time_out = torch.einsum("hed,ohe->hdo", value_time, weight_message)  # W_t's value part through w_out
        own = F.linear(h_root, weight_own, self.w_out.bias)
        out = torch.baddbmm(own.unsqueeze(1), attention.view(roots, width * heads, steps).transpose(1, 2),
                            value_out.reshape(roots, width * heads, dim_out))  # (R, T, dim_out)
        by_time = attention.transpose(2, 3).contiguous().view(roots, width, steps * heads)
        sums = torch.bmm(by_time.transpose(1, 2), nbr_trig).view(roots, steps, heads, 2 * dim_time)
        mixed = sums[..., :dim_time].mul_(time_cos.unsqueeze(1)).addcmul_(sums[..., dim_time:], time_sin.unsqueeze(1))
        out = out.view(-1, dim_out)
        for head in range(heads):
            out.addmm_(mixed[:, :, head].reshape(-1, dim_time), time_out[head])
        out = self.layer_norm(F.relu(self.dropout(out.view(roots, steps, dim_out))))
        return out.transpose(0, 1)

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
