"""Direction-aware pair history over the whole past, after TPNet (Lu et al. 2024), registered as the edge
predictor "pair_history".

The common-neighbour predictor reads only each root's most recent sampled edges, so a pair that met long
ago reads as "never met", and it cannot tell `u -> v` from `v -> u`. Here every node `n` keeps, per decay
rate, time-decayed sums of fixed random vectors over all of its past events, in the memory store beside its
memory: an event `u -> v` at `t` adds `[r_v | 0]` to `u` (its "out" half) and `[0 | r_u]` to `v` (its "in"
half), where `r_n` is a Rademacher vector of the node id (`node_signs`). Since `r_u . r_u = 1` and
`r_u . r_v` is about 0, dot products of these sums estimate the pair's decayed walk counts: `out_a . r_c`
the decayed number of `a -> c` events, `out_a . in_c` of paths `a -> x -> c`, and so on (`pair_features`).
The store adds the contributions (`history_contributions`), so nothing is lost under staleness, and the
model decays a root's sums to its query time (`RootHistories`).

"pair_walks" adds TPNet's relative encodings: each root's sampled neighbours `w` are encoded by the pair
features of `w` with both endpoints, which reach paths one step longer (`u -> w`, then `w`'s walks to `v`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memory.batch import MemoryBatch
from models.common_neighbours import CommonNeighbourPredictor, RootNeighbourhoods
from models.predictor import PREDICTORS, PredictorSpec, pair_rows

FEATURES_PER_RATE = 12  # 4 direct-link, 2 two-step-path, 2 shared-neighbour and 4 activity estimates

# splitmix64's constants (Steele et al. 2014) as signed int64; torch's int64 arithmetic wraps like uint64
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 `x` (torch's `>>` is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def node_signs(ids: Tensor, dim: int) -> Tensor:
    """A fixed pseudo-random vector of `dim` entries `+-1/sqrt(dim)` per node id, `ids.shape + (dim,)` float32.

    Entry `k` of node `n` is the sign of splitmix64 of `n * dim + k`, so the vectors need no table (ids of any
    size work) and are the same on every process and device; `r_n . r_n = 1` and `r_u . r_v ~ N(0, 1/dim)`.
    On the CPU each distinct id is hashed once: a batch's sampled neighbourhoods name a few hundred nodes in
    thousands of slots (UCI: 294 in 6,000). Elsewhere every id is hashed where it stands, which needs neither a
    sort nor a wait for the number of distinct ids.
    """
    if ids.device.type == "cpu" and ids.numel() > 1:
        distinct, where = torch.unique(ids, return_inverse=True)
        return _hashed_signs(distinct, dim)[where]
    return _hashed_signs(ids, dim)


def _hashed_signs(ids: Tensor, dim: int) -> Tensor:
    k = torch.arange(1, dim + 1, dtype=torch.int64, device=ids.device)
    z = (ids.to(torch.int64).unsqueeze(-1) * dim + k) * _GAMMA
    z ^= _shift_right(z, 30)
    z *= _MIX1
    z ^= _shift_right(z, 27)
    z *= _MIX2
    # splitmix64's last step, z ^ (z >>> 31), keeps the sign bit, the only one used: -1 | 1 = -1, 0 | 1 = 1
    return ((z >> 63) | 1).to(torch.float32) / math.sqrt(dim)


def decay_rates(half_lives: tuple[float, ...]) -> tuple[float, ...]:
    """The rate `ln 2 / half_life` of each half-life (0 for an infinite one: it never decays)."""
    return tuple(math.log(2) / half_life for half_life in half_lives)


def history_contributions(src: Tensor, dst: Tensor, t: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """What the events `src[i] -> dst[i]` at `t[i]` add to the store's history: `(nodes, rows, times)`, where
    `src[i]` gets `[r_dst | 0]` and `dst[i]` gets `[0 | r_src]` (rows `2 * dim` wide)."""
    to_dst, from_src = node_signs(dst, dim), node_signs(src, dim)
    zeros = torch.zeros_like(to_dst)
    rows = torch.cat([torch.cat([to_dst, zeros], 1), torch.cat([zeros, from_src], 1)])
    return torch.cat([src, dst]), rows, torch.cat([t, t])


def decay(history_ts: Tensor, ts: Tensor, rates: tuple[float, ...]) -> Tensor:
    """`exp(-rate * (ts - history_ts))` per rate, `ts.shape + (rates,)` float32: what brings a history row
    written at `history_ts` to the time `ts` (the gap in float64, where times of a long stream are exact)."""
    rate = torch.tensor(rates, dtype=torch.float64, device=ts.device)
    return torch.exp(-rate * (ts.to(torch.float64) - history_ts).unsqueeze(-1)).to(torch.float32)


@dataclass(frozen=True)
class RootHistories:
    """Each root's history decayed to its query time: `state[r, k]` is `[out | in]` at rate `k` of root `r`
    (node `node[r]`), zero for a node that never took part in an event."""

    node: Tensor  # (R,) int64
    state: Tensor  # (R, rates, 2 * dim) float32

    @classmethod
    def at(cls, memory: MemoryBatch, node: Tensor, ts: Tensor, rates: tuple[float, ...],
           rows: Tensor | None = None) -> RootHistories:
        """The histories of `memory`'s rows `rows` (by default its first `len(node)`), nodes `node` queried at
        times `ts`."""
        if rows is None:
            return cls.of(node, memory.history[:len(node)], memory.history_ts[:len(node)], ts, rates)
        return cls.of(node, memory.history.index_select(0, rows), memory.history_ts.index_select(0, rows), ts, rates)

    @classmethod
    def of(cls, node: Tensor, history: Tensor, history_ts: Tensor, ts: Tensor,
           rates: tuple[float, ...]) -> RootHistories:
        """The histories of nodes `node` at times `ts` from their stored rows `history` written at `history_ts`:
        each sum `history * exp(-rate * (ts - history_ts))`."""
        return cls(node=node, state=history * decay(history_ts, ts, rates).unsqueeze(2))

    def select(self, rows: Tensor) -> RootHistories:
        """The histories of roots `rows`, in that order."""
        return RootHistories(self.node[rows], self.state[rows])


def signed_log(x: Tensor) -> Tensor:
    """`sign(x) * log1p(|x|)`: counts of any size on one scale, the sign kept."""
    return torch.sign(x) * torch.log1p(x.abs())


def pair_features(histories: RootHistories, a: Tensor, c: Tensor) -> Tensor:
    """`(P, rates * FEATURES_PER_RATE)` estimates of each pair `(a[p] -> c[p])` of root rows, per rate: the
    decayed count of `a -> c` twice (`out_a . r_c`, `in_c . r_a`) and of `c -> a` twice (`in_a . r_c`,
    `out_c . r_a`), of paths `a -> x -> c` (`out_a . in_c`) and `c -> x -> a` (`in_a . out_c`), of common
    targets (`out_a . out_c`) and sources (`in_a . in_c`), and the activity `|out_a|^2, |in_a|^2, |out_c|^2,
    |in_c|^2`, each through `signed_log`."""
    vectors, active = history_vectors(histories.node, histories.state), activity(histories.state)
    gram = vectors[a] @ vectors[c].mT  # [i, j] = a_i . c_j over i, j in (out, in, r)
    return signed_log(features_of(gram, active[a], active[c])).flatten(1)


def history_vectors(node: Tensor, state: Tensor) -> Tensor:
    """`[out, in, r]` of nodes `node` (any shape `S`) with histories `state` `S + (rates, 2 * dim)`, stacked as
    `S + (rates, 3, dim)` (`r`, the node's own random vector, is the same at every rate)."""
    out, into = state.chunk(2, -1)
    own = node_signs(node, out.shape[-1]).unsqueeze(-2).expand_as(out)
    return torch.stack([out, into, own], -2)


def activity(state: Tensor) -> Tensor:
    """`|out|^2, |in|^2`, `S + (rates, 2)`, of histories `state` `S + (rates, 2 * dim)`."""
    return state.unflatten(-1, (2, state.shape[-1] // 2)).square().sum(-1)


def features_of(gram: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """`pair_features` before `signed_log`, `S + (rates, FEATURES_PER_RATE)`, from the pairs' Gram matrices
    `S + (rates, 3, 3)` of `history_vectors` and the `activity` of their first and second nodes (leading shapes
    broadcast)."""
    shape = torch.broadcast_shapes(gram.shape[:-2], first.shape[:-1], second.shape[:-1])
    return torch.cat([gram[..., [0, 2, 1, 2, 0, 1, 0, 1], [2, 1, 2, 0, 1, 0, 0, 1]].expand(*shape, 8),
                      first.expand(*shape, 2), second.expand(*shape, 2)], -1)


def pair_features_against(sources: RootHistories, times: Tensor, candidates: Tensor, history: Tensor,
                          history_ts: Tensor, rates: tuple[float, ...]) -> Tensor:
    """`pair_features` of every (candidate `k`, event `j`) pair, `(len(candidates) * B, features)` with row
    `k * B + j` for `candidates[k]` as the destination of event `j`, whose source's history at the event's time
    `times[j]` is `sources` row `j`; the candidates' stored rows are `history` written at `history_ts`.

    The same numbers as `pair_features` up to float rounding, as matrix products: a candidate's history at an
    event's time is its stored row times a scalar per rate, which multiplies the dot products instead."""
    out_a, in_a = sources.state.chunk(2, -1)  # (B, R, d)
    out_c, in_c = history.chunk(2, -1)  # (N, R, d)
    dim = out_a.shape[-1]
    r_a, r_c = node_signs(sources.node, dim), node_signs(candidates, dim)
    scale = decay(history_ts.unsqueeze(0), times.unsqueeze(1), rates)  # (B, N, R): candidate rows to event times
    stored = torch.stack([torch.einsum("nrd,bd->bnr", in_c, r_a), torch.einsum("nrd,bd->bnr", out_c, r_a),
                          torch.einsum("brd,nrd->bnr", out_a, in_c), torch.einsum("brd,nrd->bnr", in_a, out_c),
                          torch.einsum("brd,nrd->bnr", out_a, out_c), torch.einsum("brd,nrd->bnr", in_a, in_c)], -1)
    stored = stored * scale.unsqueeze(-1)  # every feature above reads one decayed candidate row
    signs = torch.stack([torch.einsum("brd,nd->bnr", out_a, r_c), torch.einsum("brd,nd->bnr", in_a, r_c)], -1)
    own = torch.stack([(out_a * out_a).sum(-1), (in_a * in_a).sum(-1)], -1).unsqueeze(1).expand(-1, len(candidates),
                                                                                                 -1, -1)
    theirs = torch.stack([(out_c * out_c).sum(-1), (in_c * in_c).sum(-1)], -1).unsqueeze(0) * (scale * scale).unsqueeze(-1)
    order = (signs[..., 0], stored[..., 0], signs[..., 1], stored[..., 1], *stored[..., 2:].unbind(-1),
             *own.unbind(-1), *theirs.unbind(-1))  # the order of `pair_features`
    features = torch.stack(order, -1)  # (B, N, R, FEATURES_PER_RATE)
    return signed_log(features.transpose(0, 1).flatten(2).flatten(0, 1))


class PairHistoryPredictor(CommonNeighbourPredictor):
    """The common-neighbour predictor with `history_fc(pair_features)` added into its hidden sum.

    `history_dim` (the store's row width, `2 *` the config's per-direction size) and `history_rates` say
    what the memory store keeps for it."""

    reads_histories = True

    def __init__(self, spec: PredictorSpec) -> None:
        super().__init__(spec)
        self.history_dim = 2 * spec.history_dim
        self.history_rates = decay_rates(spec.half_lives)
        self.history_fc = nn.Linear(FEATURES_PER_RATE * len(self.history_rates), spec.dim)

    def forward(self, h: Tensor, num_pos: int, num_neg: int, neighbourhoods: RootNeighbourhoods,
                histories: RootHistories) -> tuple[Tensor, Tensor]:
        """Logits `(B,)` of the positives and `(B * num_neg,)` of the negatives; `h`, `neighbourhoods` and
        `histories` rows are `[src (B), dst (B), negative dst (B * num_neg)]`."""
        u, v = pair_rows(num_pos, num_neg, h.device)
        return self.scores_with(h, num_pos, num_neg, neighbourhoods, pair_features(histories, u, v))

    def scores_with(self, h: Tensor, num_pos: int, num_neg: int, neighbourhoods: RootNeighbourhoods,
                    features: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` given the pair features of every scored pair (`pair_features` rows, in `pair_rows`
        order), however they were computed (`pair_features_against` for one-vs-all ranking)."""
        return self.logits(self.hidden(h, num_pos, num_neg, neighbourhoods) + self.history_fc(features), num_pos)


PREDICTORS.register("pair_history")(PairHistoryPredictor)


def neighbour_histories(nb: RootNeighbourhoods, memory: MemoryBatch, root_ts: Tensor,
                        rates: tuple[float, ...]) -> RootHistories:
    """The histories of each root's sampled neighbours at the root's time `root_ts`, from `memory`'s rows of
    their input slots: node `(R, W)`, state `(R, W, rates, 2 * dim)`, zero where the neighbourhood is padded."""
    slots = nb.slot.flatten()
    scale = decay(memory.history_ts.index_select(0, slots), root_ts.repeat_interleave(nb.ids.shape[1]), rates)
    scale = scale.masked_fill((nb.ids < 0).flatten().unsqueeze(1), 0)  # (R * W, rates)
    state = memory.history.index_select(0, slots) * scale.unsqueeze(2)
    return RootHistories(node=nb.ids.clamp(min=0), state=state.view(*nb.ids.shape, *state.shape[1:]))


@dataclass(frozen=True)
class NeighbourPairs:
    """What the relative encodings of a batch's pairs share, computed once per root rather than per pair: the
    roots' and their neighbours' histories, random vectors and activity."""

    ends: RootHistories  # the roots' histories, state (R, rates, 2 * dim)
    end_signs: Tensor  # (R, dim): the roots' `node_signs`
    neighbours: RootHistories  # their sampled neighbours' histories, state (R, W, rates, 2 * dim)
    signs: Tensor  # (R, W, dim): the neighbours' `node_signs`
    activity: Tensor  # (R, W, rates, 2): the neighbours' `|out|^2, |in|^2`
    valid: Tensor  # (R, W) float: 1 where the neighbour has a history (padding and new nodes have none)

    @classmethod
    def of(cls, histories: RootHistories, nbr: RootHistories) -> NeighbourPairs:
        """From the roots' `histories` and their `neighbour_histories` `nbr`."""
        dim = histories.state.shape[-1] // 2
        end_signs, signs = node_signs(histories.node, dim), node_signs(nbr.node, dim)
        nbr_activity = activity(nbr.state)
        valid = (nbr_activity.sum((2, 3)) > 0).to(nbr.state.dtype)
        return cls(histories, end_signs, nbr, signs, nbr_activity, valid)

    def against(self, rows: slice, partners: Tensor) -> Tensor:
        """`(n, m, W, rates * FEATURES_PER_RATE)`: `pair_features(w, partners[i, j])` of each neighbour `w` of
        root row `rows` `i`, for `partners` `(n, m)` root rows."""
        return _against(self.neighbours.state[rows], self.signs[rows], self.activity[rows], self.ends.state[partners],
                        self.end_signs[partners])


def _against(state: Tensor, signs: Tensor, nbr_activity: Tensor, end_state: Tensor, end_signs: Tensor) -> Tensor:
    """`pair_features` `(n, m, W, features)` of each neighbour of a root (history `state` `(n, W, rates, 2 * dim)`,
    random vector `signs` `(n, W, dim)`, `activity` `(n, W, rates, 2)`) with each of the root's `m` partners
    (`end_state` `(n, m, rates, 2 * dim)`, `end_signs` `(n, m, dim)`): the Gram matrices of `history_vectors`
    from two matrix products per root, which read its neighbours' histories once, in place."""
    rows, width, rates = state.shape[:3]
    partners, dim = end_state.shape[1], signs.shape[-1]
    halves = end_state.reshape(rows, partners, 2 * rates, dim)  # (out, in) per rate
    ends = torch.cat([halves, end_signs.unsqueeze(2)], 2).view(rows, -1, dim)
    products = (state.view(rows, width * rates * 2, dim) @ ends.mT).view(rows, width, rates, 2, partners, -1)
    products = products.movedim(4, 1)  # (n, m, W, rates, 2, 2 * rates + 1): every rate against every rate, then r_c
    same_rate = products[..., :2 * rates].unflatten(-1, (rates, 2)).diagonal(dim1=3, dim2=5).movedim(-1, 3)
    from_sign = (signs @ halves.reshape(rows, -1, dim).mT).view(rows, width, partners, rates, 1, 2).movedim(2, 1)
    gram = torch.cat([torch.cat([same_rate, products[..., 2 * rates:]], -1),
                      torch.cat([from_sign, torch.zeros_like(from_sign[..., :1])], -1)], -2)
    end_activity = activity(end_state).unsqueeze(2)
    return signed_log(features_of(gram, nbr_activity.unsqueeze(1), end_activity)).flatten(-2)


class NeighbourPairHistoryPredictor(PairHistoryPredictor):
    """The pair-history predictor plus TPNet's relative encodings (Lu et al. 2024): each sampled neighbour `w`
    of `u` is encoded by `mlp([pair_features(w, u) || pair_features(w, v)])`, averaged over `u`'s neighbours,
    and the same, with an MLP of its own, for `v`'s neighbours; both add into the hidden sum. One-vs-all
    ranking scores it on the chunked path."""

    reads_neighbour_histories = True

    def __init__(self, spec: PredictorSpec) -> None:
        super().__init__(spec)
        width = 2 * FEATURES_PER_RATE * len(self.history_rates)
        self.relative_src = nn.Sequential(nn.Linear(width, spec.dim), nn.ReLU(), nn.Linear(spec.dim, spec.dim))
        self.relative_dst = nn.Sequential(nn.Linear(width, spec.dim), nn.ReLU(), nn.Linear(spec.dim, spec.dim))

    def forward(self, h: Tensor, num_pos: int, num_neg: int, neighbourhoods: RootNeighbourhoods,
                histories: RootHistories, nbr: RootHistories) -> tuple[Tensor, Tensor]:
        """Logits `(B,)` of the positives and `(B * num_neg,)` of the negatives; every argument's rows are
        `[src (B), dst (B), negative dst (B * num_neg)]`, `nbr` the roots' `neighbour_histories`."""
        u, v = pair_rows(num_pos, num_neg, h.device)
        pairs = NeighbourPairs.of(histories, nbr)
        hidden = self.hidden(h, num_pos, num_neg, neighbourhoods) + self.history_fc(pair_features(histories, u, v))
        # source j's pairs are (j, v[k * B + j]) for k = 0 (its destination), 1, ... (its negatives); the
        # destination rows v are all distinct, each paired with its source u
        hidden = hidden + self.relative(self.relative_src, pairs, slice(0, num_pos), v.view(-1, num_pos).T)
        hidden = hidden + self.relative(self.relative_dst, pairs, slice(num_pos, num_pos + len(v)), u.unsqueeze(1))
        return self.logits(hidden, num_pos)

    @staticmethod
    def relative(mlp: nn.Sequential, pairs: NeighbourPairs, rows: slice, partners: Tensor) -> Tensor:
        """`(m * n, dim)`: for each pair `(a, c)` of a root row `a` of `rows` (`n` of them) and one of its
        `partners` `(n, m)` root rows, the mean of `mlp([features(w, a) || features(w, c)])` over the neighbours
        `w` of `a` with a history (0 where none has one), pair `(rows[i], partners[i, j])` at row `j * n + i`.

        A root's neighbours are read once, against the root itself and its partners together. `mlp` is
        `Linear, ReLU, Linear`: its first layer runs as one product per input block, the `a` block once per
        root, and its second after the mean, which it commutes with, once per pair."""
        first, _, second = mlp
        itself = torch.arange(rows.start, rows.stop, device=partners.device).unsqueeze(1)
        features = pairs.against(rows, torch.cat([itself, partners], 1))  # (n, 1 + m, W, features)
        width = features.shape[-1]
        own = nn.functional.linear(features[:, :1], first.weight[:, :width], first.bias)
        hidden = torch.relu(own + nn.functional.linear(features[:, 1:], first.weight[:, width:]))
        valid = pairs.valid[rows][:, None, :, None]  # (n, 1, W, 1)
        count = valid.sum(2)
        mean = (hidden * valid).sum(2) / count.clamp(min=1)  # (n, m, dim)
        return (second(mean) * (count > 0).to(mean.dtype)).transpose(0, 1).flatten(0, 1)


PREDICTORS.register("pair_walks")(NeighbourPairHistoryPredictor)
