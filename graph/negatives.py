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


def negative_seed(base_seed: int, epoch: int, batch_index: int) -> int:
    """The seed of one batch of one epoch, so its draws do not depend on which thread samples it or when."""
    return _stable_seed(base_seed, epoch, batch_index)


def sample_negatives(candidates: np.ndarray, size: int | tuple[int, ...], seed: int) -> np.ndarray:
    """Draw `size` destinations uniformly (with replacement) from `candidates`; same seed, same draws."""
    if len(candidates) == 0:
        raise ValueError("cannot sample negatives from an empty candidate set")
    positions = np.random.default_rng(seed).integers(0, len(candidates), size=size)
    return np.asarray(candidates, dtype=np.int64)[positions]


def eval_negatives(candidates: np.ndarray, num: int, k: int, split_name: str, seed: int) -> np.ndarray:
    """`k` negatives for each of `num` positives of an evaluation split, shape (num, k), fixed by
    (`seed`, `split_name`) so every model and run ranks against the same negatives."""
    split_seed = _stable_seed(seed, zlib.crc32(split_name.encode("utf-8")))
    return sample_negatives(candidates, (num, k), split_seed)
