"""Feature tables the fetch stage gathers rows from: a host tensor in RAM, or a memory-mapped file on disk.

A prepared stream's features stay on disk (graph/prepared.py). Reading its rows one page fault at a time
from one thread leaves the disk mostly idle, so `MappedFeatures` splits each request (sorted, each row once)
into contiguous pieces that a pool of threads copies concurrently: numpy's `take` releases the GIL, and
the page faults it takes run in parallel. The fetch stage of a pipelined mode thereby keeps the disk busy
while the train stage computes; the scheduler sees the reads as part of the fetch stage's time.
"""
from __future__ import annotations

import weakref
from multiprocessing.pool import ThreadPool
from typing import Protocol

import numpy as np
import torch

from graph.prepared import advise_access
from pipeline.stages.device import host_tensor, pins_host_memory

MIN_ROWS_PER_READER = 64  # below this, a piece costs more to hand to a thread than to read


class FeatureTable(Protocol):
    """Rows of a feature matrix, gathered by id into host tensors."""

    def gather(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """The rows `ids[j]` for each j, in one request."""


class InMemoryFeatures:
    """A feature matrix held in RAM as a host tensor (pinned when it feeds a GPU)."""

    def __init__(self, table: np.ndarray, device: torch.device) -> None:
        self.table = host_tensor(table, device)

    def gather(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.table[rows] for rows in ids]


class MappedFeatures:
    """A feature matrix in a memory-mapped file, read by `readers` threads (pinned output for a GPU).

    The readers start here, in the thread that builds the run, so they keep its scheduling policy: started
    from a pipelined fetch stage's thread they would inherit SCHED_IDLE (pipeline/engine/host_threads.py)
    and, beside a train step that keeps every core busy, hardly ever get to issue their reads.
    """

    def __init__(self, table: np.ndarray, readers: int, pin: bool) -> None:
        self.table, self.readers, self.pin = table, readers, pin
        self._pool = ThreadPool(readers)
        weakref.finalize(self, self._pool.terminate)

    def gather(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        wanted = torch.cat(ids).numpy()
        rows, position = np.unique(wanted, return_inverse=True)  # sorted: neighbouring rows share pages
        read = torch.empty((len(rows), *self.table.shape[1:]), dtype=torch.float32, pin_memory=self.pin)
        self._read_rows(rows, read.numpy())
        gathered = read[torch.from_numpy(position)]
        return list(gathered.split([len(rows_of) for rows_of in ids]))

    def _read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        pieces = max(1, min(self.readers, len(rows) // MIN_ROWS_PER_READER))
        bounds = np.linspace(0, len(rows), pieces + 1).astype(np.int64)
        if pieces == 1:
            np.take(self.table, rows, axis=0, out=out)
            return
        reads = [self._pool.apply_async(np.take, (self.table, rows[start:stop], 0, out[start:stop]))
                 for start, stop in zip(bounds[:-1], bounds[1:])]
        for read in reads:
            read.get()


def feature_table(table: np.ndarray | None, device: torch.device, readers: int,
                  scattered: bool = False) -> FeatureTable | None:
    """The table the fetch stage reads `table` through: in RAM, or (a read-only memory-mapped array) from disk,
    read page by page when the rows a batch needs are `scattered` over the file, else with read-around."""
    if table is None:
        return None
    if isinstance(table, np.ndarray) and not table.flags.writeable and not table.flags.owndata:
        advise_access(table, random=scattered)
        return MappedFeatures(table, readers, pin=pins_host_memory(device))
    return InMemoryFeatures(table, device)
