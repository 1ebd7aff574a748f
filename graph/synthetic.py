"""A seeded synthetic event stream for unit tests: skewed activity and learnable repeated interactions."""
from __future__ import annotations

import dataclasses

import numpy as np

from graph.events import EventStream

ACTIVITY_EXPONENT = 1.2   # node activity ~ rank^-exponent (Zipf-like, as in real interaction networks)
PARTNERS_PER_NODE = 3     # each node's current favourite destinations
NUM_PHASES = 4            # the favourites are re-drawn this many times over the stream
MEAN_GAP = 10.0           # mean time between consecutive events (exponential gaps)


def synthetic_events(num_nodes: int = 100, num_events: int = 2000, dim_edge_feat: int = 0,
                     dim_node_feat: int = 0, seed: int = 0, repeat_prob: float = 0.8) -> EventStream:
    """A time-sorted stream where sources follow a power law and, with probability `repeat_prob`, an event
    goes to one of the source's current partners (which change a few times), so memory helps predict it.

    Features, when asked for, are standard normal noise.
    """
    if num_nodes < 2 or num_events < 1:
        raise ValueError(f"need num_nodes >= 2 and num_events >= 1, got {num_nodes} and {num_events}")
    rng = np.random.default_rng(seed)
    activity = _power_law_activity(num_nodes, rng)
    src = rng.choice(num_nodes, size=num_events, p=activity)
    partners = rng.choice(num_nodes, size=(NUM_PHASES, num_nodes, PARTNERS_PER_NODE), p=activity)
    phase = np.arange(num_events) * NUM_PHASES // num_events
    favourite = partners[phase, src, rng.integers(0, PARTNERS_PER_NODE, size=num_events)]
    anyone = rng.choice(num_nodes, size=num_events, p=activity)
    dst = np.where(rng.random(num_events) < repeat_prob, favourite, anyone)
    dst = np.where(dst == src, (dst + 1) % num_nodes, dst)
    return EventStream(
        name="synthetic",
        src=src.astype(np.int64),
        dst=dst.astype(np.int64),
        t=np.cumsum(rng.exponential(MEAN_GAP, size=num_events)),
        num_nodes=num_nodes,
        node_ids=np.arange(num_nodes, dtype=np.int64),
        edge_feat=_noise(rng, num_events, dim_edge_feat),
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
