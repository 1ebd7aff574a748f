"""Seeded synthetic event streams for unit tests: skewed activity and learnable repeated interactions, or
directed pairs that reciprocate instead of repeating."""
from __future__ import annotations

import dataclasses

import numpy as np

from graph.events import EventStream

ACTIVITY_EXPONENT = 1.2   # node activity ~ rank^-exponent (Zipf-like, as in real interaction networks)
PARTNERS_PER_NODE = 3     # each node's current favourite destinations
NUM_PHASES = 4            # the favourites are re-drawn this many times over the stream
MEAN_GAP = 10.0           # mean time between consecutive events (exponential gaps)
MEAN_REPLY_GAP = 50 * MEAN_GAP  # mean time from an event u -> v to its reply v -> u (many events later)
PAIR_DRAWS = 8            # candidate pairs drawn per pair needed (the distinct ones are kept, in order)


def synthetic_events(num_nodes: int = 100, num_events: int = 2000, dim_edge_feat: int = 0,
                     dim_node_feat: int = 0, seed: int = 0, repeat_prob: float = 0.8,
                     reciprocate_prob: float | None = None) -> EventStream:
    """A time-sorted stream where sources follow a power law and, with probability `repeat_prob`, an event
    goes to one of the source's current partners (which change a few times), so memory helps predict it.

    With `reciprocate_prob`, instead, no directed pair ever repeats: each event `u -> v` starts a pair of
    its own and is followed, with that probability, by one reply `v -> u` some time later
    (`reciprocating_pairs`), so only a model that reads the direction of a pair's past predicts the reply.
    Features, when asked for, are standard normal noise.
    """
    if num_nodes < 2 or num_events < 1:
        raise ValueError(f"need num_nodes >= 2 and num_events >= 1, got {num_nodes} and {num_events}")
    rng = np.random.default_rng(seed)
    activity = _power_law_activity(num_nodes, rng)
    if reciprocate_prob is not None:
        src, dst, t = reciprocating_pairs(activity, num_events, reciprocate_prob, rng)
        return _stream(src, dst, t, num_nodes, dim_edge_feat, dim_node_feat, rng)
    src = rng.choice(num_nodes, size=num_events, p=activity)
    partners = rng.choice(num_nodes, size=(NUM_PHASES, num_nodes, PARTNERS_PER_NODE), p=activity)
    phase = np.arange(num_events) * NUM_PHASES // num_events
    favourite = partners[phase, src, rng.integers(0, PARTNERS_PER_NODE, size=num_events)]
    anyone = rng.choice(num_nodes, size=num_events, p=activity)
    dst = np.where(rng.random(num_events) < repeat_prob, favourite, anyone)
    dst = np.where(dst == src, (dst + 1) % num_nodes, dst)
    return _stream(src, dst, np.cumsum(rng.exponential(MEAN_GAP, size=num_events)), num_nodes, dim_edge_feat,
                   dim_node_feat, rng)


def reciprocating_pairs(activity: np.ndarray, num_events: int, reciprocate_prob: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(src, dst, t)` of `num_events` time-sorted events over nodes of the given `activity`: distinct
    unordered pairs `{u, v}`, each met once as `u -> v` and, with probability `reciprocate_prob`, once more
    as `v -> u` about `MEAN_REPLY_GAP` later, so no directed pair repeats. Raises ValueError when the nodes
    are too few (or too skewed) to give that many distinct pairs."""
    if not 0 <= reciprocate_prob <= 1:
        raise ValueError(f"reciprocate_prob must be within [0, 1], got {reciprocate_prob}")
    num_nodes, draws = len(activity), PAIR_DRAWS * num_events
    u, v = rng.choice(num_nodes, size=draws, p=activity), rng.choice(num_nodes, size=draws, p=activity)
    distinct = u != v
    u, v = u[distinct], v[distinct]
    _, first = np.unique(np.minimum(u, v) * num_nodes + np.maximum(u, v), return_index=True)
    order = np.sort(first)
    replies = rng.random(len(order)) < reciprocate_prob
    pairs = np.searchsorted(np.cumsum(1 + replies), num_events) + 1  # the pairs that reach num_events events
    if pairs > len(order):
        raise ValueError(f"{num_nodes} nodes give {len(order)} distinct pairs in {draws} draws, too few for "
                         f"{num_events} events that never repeat a pair")
    u, v, replies = u[order[:pairs]], v[order[:pairs]], replies[:pairs]
    replies[-1] &= int(np.sum(1 + replies)) <= num_events  # the last pair's reply only if it fits
    start = np.cumsum(rng.exponential(MEAN_GAP, size=pairs))
    reply = start[replies] + rng.exponential(MEAN_REPLY_GAP, size=int(replies.sum()))
    src, dst, t = np.concatenate([u, v[replies]]), np.concatenate([v, u[replies]]), np.concatenate([start, reply])
    chronological = np.argsort(t, kind="stable")
    return src[chronological], dst[chronological], t[chronological]


def _stream(src: np.ndarray, dst: np.ndarray, t: np.ndarray, num_nodes: int, dim_edge_feat: int, dim_node_feat: int,
            rng: np.random.Generator) -> EventStream:
    """The synthetic stream of these time-sorted events, with noise features when asked for."""
    return EventStream(
        name="synthetic",
        src=src.astype(np.int64),
        dst=dst.astype(np.int64),
        t=t,
        num_nodes=num_nodes,
        node_ids=np.arange(num_nodes, dtype=np.int64),
        edge_feat=_noise(rng, len(t), dim_edge_feat),
        node_feat=_noise(rng, num_nodes, dim_node_feat),
    )


def _power_law_activity(num_nodes: int, rng: np.random.Generator) -> np.ndarray:
    """Probability of each node being active, a power law of a random ranking of the nodes."""
    weights = np.arange(1, num_nodes + 1, dtype=np.float64) ** -ACTIVITY_EXPONENT
    return rng.permutation(weights / weights.sum())


def _noise(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray | None:
    return rng.standard_normal((rows, dim)).astype(np.float32) if dim > 0 else None


def with_random_edge_features(events: EventStream, dim: int, seed: int = 0) -> EventStream:
    """`events` with standard-normal edge features of width `dim` (e.g. 172, the size of TGL's Wikipedia
    features), so that benchmarks move a realistic amount of feature data through the fetch stages."""
    return dataclasses.replace(events, edge_feat=_noise(np.random.default_rng(seed), events.num_events, dim))
