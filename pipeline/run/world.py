"""How one process takes part in a run: the `World` protocol and the single process, `LocalWorld`.

A world decides what differs when several processes train together: which events of every batch this
process takes, the memory store, the module the train stage calls, the learning rate, how evaluation
scores are gathered and the stage times a scheduler decides from. `LocalWorld` is the single process;
`DistributedWorld` (pipeline/run/distributed.py) is one rank of a `torchrun` launch. They are siblings:
the trainer and `build_setup` see only the protocol.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from graph.split import chronological_batches
from memory.store import MemoryStore
from pipeline.engine.profiler import StageProfiler
from pipeline.engine.schedulers import Scheduler


class World(Protocol):
    """One process's part in a run (see the module docstring)."""

    @property
    def rank(self) -> int:
        """This process's rank (0 for a single process)."""

    @property
    def size(self) -> int:
        """How many processes train together."""

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on, given the one the user asked for."""

    def learning_rate(self, lr: float) -> float:
        """The learning rate this process's optimizer uses for the configured `lr`."""

    def global_batches(self, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """The batches every process walks through together, in time order."""

    def share(self, batch_len: int) -> np.ndarray:
        """Positions inside a global batch of `batch_len` events that this process takes, in order."""

    def memory_store(self, num_nodes: int, dim_memory: int, dim_mail: int, mailbox_size: int,
                     pin_memory: bool, history_dim: int = 0, history_rates: tuple[float, ...] = ()) -> MemoryStore:
        """The memory store the run's stages read and write (with a history table for models that keep one)."""

    def train_module(self, model: nn.Module) -> nn.Module:
        """The module the train stage calls (it steps the parameters of `model`)."""

    def split_scores(self, positions: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scores of a whole evaluation split in split order, from this process's scored rows."""

    def agreed_scheduler(self, scheduler: Scheduler, profiler: StageProfiler) -> Scheduler:
        """The scheduler of the next epoch, deciding from stage times every process agrees on."""

    def close(self) -> None:
        """Release what the run set up."""


def local_batches(world: World, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """This process's share of each global batch of `indices`."""
    return [batch[world.share(len(batch))] for batch in world.global_batches(indices, batch_size)]


def scatter_scores(positions: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores put back in split order: row `positions[j]` gets `pos[j]` and `neg[j]`."""
    ordered_pos = np.empty_like(pos)
    ordered_neg = np.empty_like(neg)
    ordered_pos[positions] = pos
    ordered_neg[positions] = neg
    return ordered_pos, ordered_neg


class LocalWorld:
    """A run in a single process: whole batches, one store, the plain model, local metrics."""

    rank = 0
    size = 1

    def place(self, device: torch.device) -> torch.device:
        return device

    def learning_rate(self, lr: float) -> float:
        return lr

    def global_batches(self, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
        return chronological_batches(indices, batch_size)

    def share(self, batch_len: int) -> np.ndarray:
        return np.arange(batch_len)

    def memory_store(self, num_nodes: int, dim_memory: int, dim_mail: int, mailbox_size: int,
                     pin_memory: bool, history_dim: int = 0, history_rates: tuple[float, ...] = ()) -> MemoryStore:
        return MemoryStore(num_nodes, dim_memory, dim_mail, mailbox_size, pin_memory=pin_memory,
                           history_dim=history_dim, history_rates=history_rates)

    def train_module(self, model: nn.Module) -> nn.Module:
        return model

    def split_scores(self, positions: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scatter_scores(positions, pos, neg)

    def agreed_scheduler(self, scheduler: Scheduler, profiler: StageProfiler) -> Scheduler:
        return scheduler

    def close(self) -> None:
        """Nothing to release for a single process."""
