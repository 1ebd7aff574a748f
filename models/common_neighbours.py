"""Temporal common-neighbour link scoring, after TNCN (Zhang et al. 2024), registered as the edge
predictor "common_neighbours".

A memory model embeds each endpoint on its own, so it cannot tell whether a candidate is one the source
has just talked to, or shares the source's contacts: what a counting heuristic such as EdgeBank reads, and
what historical and inductive negatives test. This predictor reads the roots' sampled neighbourhoods
(the recent edges the sample stage already drew, `blocks[-1]`) and scores a pair `(u, v)` from the two
root embeddings plus
- the direct links (TNCN's 0-hop common neighbours): at which recency slots of `u`'s neighbours `v`
  appears, and at which of `v`'s neighbours `u` appears (slot 0 is the newest edge);
- the shared neighbours (1-hop): the nodes among both neighbourhoods, their count and their pooled
  node states (memory, the state the embedding reads).
Everything is a gather, a comparison or a scatter over the padded `(roots, fanout)` id table, so a batch
of a million candidate pairs (`eval.ranking: all`) is scored without a loop over pairs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dgl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from models.predictor import PREDICTORS, PredictorSpec, pair_rows
from models.time_encoding import TimeEncoding

LINK_TIME_DIM = 16  # size of the time encoding of the gap since the pair's last direct link


@dataclass(frozen=True)
class RootNeighbourhoods:
    """Each root's sampled neighbours, newest first, padded to `width` columns.

    `ids[r, f]` is the node id of root `r`'s `f`-th newest sampled neighbour (-1 past its last one),
    `dt[r, f]` how long before the root's time that edge happened, and `slot[r, f]` the input slot holding
    that neighbour's state in `states`; `node[r]` is root `r`'s own id.
    """

    node: Tensor  # (R,) int64
    ids: Tensor  # (R, width) int64, -1 where padded
    dt: Tensor  # (R, width) float32, 0 where padded
    slot: Tensor  # (R, width) int64, 0 where padded
    states: Tensor  # (input slots, dim_state)

    @classmethod
    def from_block(cls, block: dgl.DGLBlock, states: Tensor, width: int) -> "RootNeighbourhoods":
        """The neighbourhoods of `block`'s destinations, whose in-edges are grouped by destination and
        newest first in edge-id order (the sampler's contract); `states` are the input slots' node states."""
        num_roots = block.num_dst_nodes()
        src, dst = block.edges(order="eid")
        degrees = block.in_degrees()
        first = torch.cumsum(degrees, 0) - degrees
        position = torch.arange(len(dst), device=dst.device) - first[dst]
        kept = position < width
        src, dst, position = src[kept], dst[kept], position[kept]
        ids = torch.full((num_roots, width), -1, dtype=torch.int64, device=dst.device)
        slot = torch.zeros((num_roots, width), dtype=torch.int64, device=dst.device)
        dt = torch.zeros((num_roots, width), dtype=torch.float32, device=dst.device)
        ids[dst, position] = block.srcdata["ID"][src]
        slot[dst, position] = src
        dt[dst, position] = block.edata["dt"][kept]
        return cls(node=block.dstdata["ID"], ids=ids, dt=dt, slot=slot, states=states)

    def select(self, rows: Tensor) -> "RootNeighbourhoods":
        """The neighbourhoods of roots `rows`, in that order."""
        return RootNeighbourhoods(self.node[rows], self.ids[rows], self.dt[rows], self.slot[rows], self.states)


@dataclass(frozen=True)
class PairNeighbourhoods:
    """What the neighbourhoods of a list of pairs `(u, v)` share.

    `u_links[p, f]` is 1 where `u`'s `f`-th neighbour is `v`, `v_links[p, f]` where `v`'s is `u`;
    `last_link_dt[p]` is how long before the pair's time `u` last met `v` among its sampled edges (0 if it
    did not); `shared[p, f]` is True where `u`'s `f`-th neighbour is also among `v`'s neighbours (counted
    once per slot of `u`, so a neighbour `u` met twice counts twice); `shared_states[i]` is the node state of
    the `i`-th shared slot (mapped as `pair_neighbourhoods` was asked to), of pair `shared_pair[i]`.
    """

    u_links: Tensor  # (P, width) float
    v_links: Tensor  # (P, width) float
    last_link_dt: Tensor  # (P,) float
    shared: Tensor  # (P, width) bool
    shared_pair: Tensor  # (S,) int64
    shared_states: Tensor  # (S, dim_state), or the map's width

    @property
    def pooled(self) -> Tensor:
        """`(P, dim)`: each pair's shared slots' states, summed."""
        pooled = self.shared_states.new_zeros((len(self.shared), self.shared_states.shape[1]))
        return pooled.index_add_(0, self.shared_pair, self.shared_states)


def pair_neighbourhoods(nb: RootNeighbourhoods, u: Tensor, v: Tensor,
                        state_map: Callable[[Tensor], Tensor] | None = None) -> PairNeighbourhoods:
    """The direct links and shared neighbours of the pairs `(u[p], v[p])` of root rows, the shared slots' node
    states each through `state_map` if given (the few shared slots, rather than a sum per pair: one-vs-all
    ranking scores millions of pairs that share nothing)."""
    u_ids, v_ids = nb.ids[u], nb.ids[v]
    u_links = (u_ids == nb.node[v].unsqueeze(1)).float()
    v_links = (v_ids == nb.node[u].unsqueeze(1)).float()
    shared = ((u_ids.unsqueeze(2) == v_ids.unsqueeze(1)).any(2)) & (u_ids >= 0)
    pair, column = shared.nonzero(as_tuple=True)
    slots = nb.states[nb.slot[u][pair, column]]
    if state_map is not None:
        slots = state_map(slots)
    newest = u_links.argmax(1, keepdim=True)
    last_link_dt = nb.dt[u].gather(1, newest).squeeze(1) * u_links.gather(1, newest).squeeze(1)
    return PairNeighbourhoods(u_links=u_links, v_links=v_links, last_link_dt=last_link_dt, shared=shared,
                              shared_pair=pair, shared_states=slots)


class CommonNeighbourPredictor(nn.Module):
    """Scores `(u, v)` as `out(relu(src_fc(h_u) + dst_fc(h_v) + link_fc(links) + shared_fc(pooled)))`,
    where `links = [u_links, v_links, log1p(shared count), time_enc(last_link_dt) if u met v]`
    (`PairNeighbourhoods`)."""

    reads_neighbourhoods = True

    def __init__(self, spec: PredictorSpec) -> None:
        super().__init__()
        if spec.fanout < 1:
            raise UserError(f"predictor 'common_neighbours' reads the sampled neighbours of each root: the last of "
                            f"'sampler.fanouts' must be at least 1, got {spec.fanout}")
        self.width = spec.fanout
        self.src_fc = nn.Linear(spec.dim, spec.dim)
        self.dst_fc = nn.Linear(spec.dim, spec.dim)
        self.link_time = TimeEncoding(LINK_TIME_DIM)
        self.link_fc = nn.Linear(2 * spec.fanout + 1 + LINK_TIME_DIM, spec.dim)
        self.shared_fc = nn.Linear(spec.dim_state, spec.dim, bias=False) if spec.dim_state else None
        self.out_fc = nn.Linear(spec.dim, 1)

    def forward(self, h: Tensor, num_pos: int, num_neg: int,
                neighbourhoods: RootNeighbourhoods) -> tuple[Tensor, Tensor]:
        """Logits `(B,)` of the positives and `(B * num_neg,)` of the negatives; `h` and `neighbourhoods`
        rows are `[src (B), dst (B), negative dst (B * num_neg)]`, negative `k * B + j` paired with source `j`."""
        return self.logits(self.hidden(h, num_pos, num_neg, neighbourhoods), num_pos)

    def hidden(self, h: Tensor, num_pos: int, num_neg: int, neighbourhoods: RootNeighbourhoods) -> Tensor:
        """The sum inside `relu` of every scored pair `(P, dim)`, pairs in `pair_rows` order (a subclass adds
        terms of its own to it)."""
        u, v = pair_rows(num_pos, num_neg, h.device)
        pairs = pair_neighbourhoods(neighbourhoods, u, v, self.shared_fc)
        hidden = F.linear(h[num_pos:num_pos * (2 + num_neg)], self.dst_fc.weight)  # the rows v, in order
        sources = self.src_fc(h[:num_pos]) + self.dst_fc.bias + self.link_fc.bias
        hidden.view(1 + num_neg, num_pos, -1).add_(sources)
        # the link features are zero but where a pair met or shares a neighbour: a few rows of millions when
        # every destination is a candidate, so only those go through link_fc's weight
        linked = (pairs.u_links.any(1) | pairs.v_links.any(1) | pairs.shared.any(1)).nonzero().squeeze(1)
        count = pairs.shared[linked].sum(1, keepdim=True).to(h.dtype)
        met = pairs.u_links[linked].amax(1, keepdim=True)
        links = [pairs.u_links[linked], pairs.v_links[linked], torch.log1p(count),
                 met * self.link_time(pairs.last_link_dt[linked])]
        hidden.index_add_(0, linked, F.linear(torch.cat(links, 1), self.link_fc.weight))
        if self.shared_fc is not None:
            hidden.index_add_(0, pairs.shared_pair, pairs.shared_states)  # through shared_fc
        return hidden

    def logits(self, hidden: Tensor, num_pos: int) -> tuple[Tensor, Tensor]:
        """`out(relu(hidden))` of the pairs, split into the `num_pos` positives and the negatives."""
        logits = self.out_fc(F.relu(hidden)).squeeze(1)
        return logits[:num_pos], logits[num_pos:]


PREDICTORS.register("common_neighbours")(CommonNeighbourPredictor)
