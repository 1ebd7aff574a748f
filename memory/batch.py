"""The memory package's own record types: what a read of the store returns (`MemoryBatch`) and what a
batch writes into it (`MemoryUpdate`). Models read the one and return the other."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch


@dataclass
class MemoryBatch:
    """Memory rows of the requested nodes, in request order (duplicates kept), as one consistent read.

    `row` numbers the distinct rows: requests with equal `row` hold equal memory, mails and version, so a
    model may compute what depends on them once per distinct row. `history` is (n, rates, history_dim),
    decayed to `history_ts` (zero-width for models without history).
    """

    nodes: torch.Tensor
    row: torch.Tensor
    mem: torch.Tensor
    mem_ts: torch.Tensor
    mail: torch.Tensor
    mail_ts: torch.Tensor
    mail_count: torch.Tensor
    version: torch.Tensor
    history: torch.Tensor
    history_ts: torch.Tensor
    committed: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MemoryBatch:
        """The same rows on `device` (non-blocking copies overlap compute when the rows are pinned)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self) if f.name != "committed"
        }
        return replace(self, **moved)


def as_host_nodes(nodes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Node ids as an int64 CPU tensor, whatever device or array type they came in."""
    return torch.as_tensor(nodes).to("cpu", torch.int64)


def as_host_rows(values: torch.Tensor | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Values as a CPU tensor of `dtype`, cut from any autograd graph (the store takes no gradient)."""
    return torch.as_tensor(values).detach().to("cpu", dtype)


@dataclass
class MemoryUpdate:
    """A batch's detached write-back, laid out for `MemoryStore.update` (the last occurrence of a node wins).

    `nodes` are the positive roots in event order `[src_0, dst_0, src_1, dst_1, ...]` with their new memory
    and `mem_ts` = event time; `mail_nodes` receive `mail` stamped `mail_ts`, in chronological order.
    Row m of `history` (M, history_dim) is a contribution to `history_nodes[m]`'s history at time
    `history_ts[m]`, in any order (contributions add up); None for models without history.
    """

    nodes: torch.Tensor
    mem: torch.Tensor
    mem_ts: torch.Tensor
    mail_nodes: torch.Tensor
    mail: torch.Tensor
    mail_ts: torch.Tensor
    history_nodes: torch.Tensor | None = None
    history: torch.Tensor | None = None
    history_ts: torch.Tensor | None = None

    def to_host(self) -> MemoryUpdate:
        """A detached CPU copy in the store's dtypes (int64 ids, float32 rows, float64 times); no history
        becomes empty history."""
        return MemoryUpdate(
            nodes=as_host_nodes(self.nodes), mem=as_host_rows(self.mem, torch.float32),
            mem_ts=as_host_rows(self.mem_ts, torch.float64), mail_nodes=as_host_nodes(self.mail_nodes),
            mail=as_host_rows(self.mail, torch.float32), mail_ts=as_host_rows(self.mail_ts, torch.float64),
            history_nodes=as_host_nodes(empty_if_none(self.history_nodes, (0,))),
            history=as_host_rows(empty_if_none(self.history, (0, 0)), torch.float32),
            history_ts=as_host_rows(empty_if_none(self.history_ts, (0,)), torch.float64),
        )


def empty_if_none(values: torch.Tensor | np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor | np.ndarray:
    """`values`, or an empty tensor of `shape` when there are none."""
    return torch.zeros(shape) if values is None else values
