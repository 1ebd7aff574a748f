"""Grouping of equal rows, so a batch computes each distinct thing once and gathers it for its duplicates.

A TGL-style block does not de-duplicate its sources: a batch of 200 UCI events has about 4,600 input slots
but only about 1,600 distinct (memory row, time) states and 400 distinct memory rows. Whatever depends
only on the stored row (a linear map of the memory or the mail) is computed once per row, whatever also
depends on the time once per state, and the result is gathered per slot: the same numbers as computing
every slot, for a fraction of the work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Groups:
    """Equal keys grouped: `keys[i] == keys[first[index[i]]]`; `first[g]` is the first position of group `g`."""

    index: Tensor
    first: Tensor

    def __len__(self) -> int:
        return len(self.first)


def group(keys: Tensor) -> Groups:
    """Groups of equal entries of a 1-D tensor (any dtype torch.unique sorts), ordered by key."""
    unique, index = torch.unique(keys, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(unique),), len(keys), dtype=torch.int64, device=keys.device)
    return Groups(index=index, first=first.scatter_reduce_(0, index, positions, reduce="amin"))


def group_pairs(rows: Tensor, times: Tensor) -> Groups:
    """Groups of equal `(rows[i], times[i])` pairs: integer ids with float times, compared exactly."""
    time_rank = torch.unique(times, return_inverse=True)[1]
    return group(rows * (int(time_rank.max()) + 1 if len(times) else 1) + time_rank)
