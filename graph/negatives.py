"""Seeded negative destinations for link prediction: reproducible per training batch, fixed per evaluation split.

Seeds are derived with numpy's SeedSequence (a stable hash), so a batch draws the same negatives whichever
thread or process samples it and in whatever order, and two runs with the same seed are comparable.
"""
from __future__ import annotations

import zlib

import numpy as np


def _stable_seed(*keys: int) -> int:
    """A 63-bit seed hashed from non-negative integer keys, identical in every process."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def batch_seed(base_seed: int, epoch: int, batch_index: int) -> int:
    """The seed of one batch of one epoch for any of its random draws (negatives; neighbour sampling with a
    different `base_seed`), so they do not depend on which thread draws them or when."""
    return _stable_seed(base_seed, epoch, batch_index)


def sample_negatives(candidates: np.ndarray, size: int | tuple[int, ...], seed: int) -> np.ndarray:
    """Draw `size` destinations uniformly (with replacement) from `candidates`; same seed, same draws."""
    if len(candidates) == 0:
        raise ValueError("cannot sample negatives from an empty candidate set")
    positions = np.random.default_rng(seed).integers(0, len(candidates), size=size)
    return np.asarray(candidates, dtype=np.int64)[positions]


def named_seed(seed: int, *names: str) -> int:
    """A seed derived from `seed` and names (a split, a strategy), identical in every process."""
    return _stable_seed(seed, *(zlib.crc32(name.encode("utf-8")) for name in names))


def eval_negatives(candidates: np.ndarray, num: int, k: int, split_name: str, seed: int) -> np.ndarray:
    """`k` negatives for each of `num` positives of an evaluation split, shape (num, k), fixed by
    (`seed`, `split_name`) so every model and run ranks against the same negatives."""
    return sample_negatives(candidates, (num, k), named_seed(seed, split_name))


NEGATIVE_STRATEGIES = ("random", "historical", "inductive")


def edge_negatives(strategy: str, src: np.ndarray, dst: np.ndarray, t: np.ndarray, batches: list[np.ndarray],
                   observed_until: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Negative `(src, dst)` pairs for every event of `batches` (ascending indices into the stream), one per
    event, by DyGLib's `historical` or `inductive` strategy (Poursafaei et al., NeurIPS 2022; DyGLib's
    NegativeEdgeSampler).

    For a batch spanning times `[t_first, t_last]`, the candidates are the distinct pairs of the stream seen
    at or before `t_first`, minus the pairs seen within the batch's span; `inductive` also removes the pairs
    seen up to `observed_until` (the last training event). A batch draws its negatives from the candidates
    without replacement; when there are fewer candidates than events, it takes them all plus pairs drawn
    uniformly from (any source) x (any destination) that are not one of the batch's own events. A batch whose
    events are every such pair has no negative to draw (`batch_without_negatives`; runs refuse that stream
    first, in pipeline/run/evaluation.require_negative_pairs).
    """
    if strategy not in ("historical", "inductive"):
        raise ValueError(f"unknown negative strategy {strategy!r}: expected historical or inductive")
    num_nodes = int(max(src.max(), dst.max())) + 1
    keys = src.astype(np.int64) * num_nodes + dst
    order = np.argsort(t, kind="stable")
    sorted_t = t[order]
    sources, destinations = np.unique(src), np.unique(dst)
    observed = np.unique(keys[t <= observed_until]) if strategy == "inductive" else np.empty(0, np.int64)
    rng = np.random.default_rng(seed)
    drawn = []
    for batch in batches:
        start, end = t[batch[0]], t[batch[-1]]
        history = np.unique(keys[order[:np.searchsorted(sorted_t, start, side="right")]])
        in_span = keys[order[np.searchsorted(sorted_t, start, side="left"):np.searchsorted(sorted_t, end, side="right")]]
        candidates = np.setdiff1d(np.setdiff1d(history, in_span), observed, assume_unique=True)
        if len(candidates) >= len(batch):
            drawn.append(rng.choice(candidates, size=len(batch), replace=False))
        else:
            filler = _random_pairs(len(batch) - len(candidates), sources, destinations, num_nodes, keys[batch], rng)
            drawn.append(np.concatenate([filler, candidates]))
    negatives = np.concatenate(drawn) if drawn else np.empty(0, np.int64)
    return negatives // num_nodes, negatives % num_nodes


def batch_without_negatives(src: np.ndarray, dst: np.ndarray, num_nodes: int, batches: list[np.ndarray]) -> int | None:
    """The index of the first of `batches` (indices into the stream) whose own events are every pair of
    (any source) x (any destination) of the stream, None when there is none. For such a batch `edge_negatives`
    (and DyGLib's sampler, which asserts there is a pair to draw) has no negative to offer: its historical and
    inductive candidates all lie within the batch's span, and every random pair is one of its events. That
    takes a stream of very few nodes: one node, or one source and one destination, makes a single pair.
    Linear in the stream (distinct nodes are counted, not sorted); `src`, `dst` are ids below `num_nodes`."""
    longest = max((len(batch) for batch in batches), default=0)
    pairs = distinct_count(src, num_nodes)
    if pairs > longest:
        return None
    pairs *= distinct_count(dst, num_nodes)
    for i, batch in enumerate(batches):
        if pairs <= len(batch) and len(np.unique(src[batch].astype(np.int64) * num_nodes + dst[batch])) == pairs:
            return i
    return None


def distinct_count(ids: np.ndarray, num_nodes: int) -> int:
    """How many distinct node ids (below `num_nodes`) `ids` holds."""
    return int(np.count_nonzero(np.bincount(ids, minlength=num_nodes))) if len(ids) else 0


def _random_pairs(size: int, sources: np.ndarray, destinations: np.ndarray, num_nodes: int,
                  excluded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`size` pair keys drawn uniformly from sources x destinations minus `excluded`, without replacement
    while enough pairs exist (DyGLib's collision-checked random fill)."""
    excluded = np.unique(excluded)
    if len(sources) * len(destinations) <= 4 * (size + len(excluded)):
        pairs = np.setdiff1d((sources[:, None] * num_nodes + destinations[None, :]).ravel(), excluded)
        return rng.choice(pairs, size=size, replace=len(pairs) < size)
    picked = np.empty(0, np.int64)
    while len(picked) < size:
        keys = rng.choice(sources, 2 * size) * num_nodes + rng.choice(destinations, 2 * size)
        unique, first = np.unique(keys[~np.isin(keys, excluded)], return_index=True)
        fresh = ~np.isin(unique, picked)
        picked = np.concatenate([picked, unique[fresh][np.argsort(first[fresh])]])
    return picked[:size]
