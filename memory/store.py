"""The versioned node-memory store shared by the pipeline's stages (docs/method.md §3).

Host tables hold each node's memory vector, its timestamp, a mailbox of the latest mails, the number
of mails ever delivered and the batch index that last wrote the row. Updates commit in batch order,
so a fetch can wait until the updates it depends on are written; readers and the writer may be
different threads and a read always sees whole updates (a readers-writer lock guards the tables).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from common.errors import CheckpointError
from memory.batch import MemoryBatch, MemoryUpdate, as_host_nodes
from memory.rwlock import ReadWriteLock

TABLE_NAMES = ("mem", "mem_ts", "mail", "mail_ts", "mail_count", "version")
COMMITTED_KEY = "committed_version"


def last_occurrences(nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct nodes and, for each, the position of its last occurrence in `nodes`."""
    unique, inverse = torch.unique(nodes, return_inverse=True)
    positions = torch.arange(len(nodes))
    last = torch.zeros(len(unique), dtype=torch.int64)
    last.scatter_reduce_(0, inverse, positions, reduce="amax", include_self=False)
    return unique, last


class MemoryStore:
    """Node memory, mailboxes and per-row versions in host memory (pinned when feeding a GPU).

    `committed_version` is the highest batch index whose update is written (-1 after reset); updates
    must arrive in batch order. Within one update the last occurrence of a node wins, for memory rows
    and for mails alike: a node gets at most one mail per update, appended to its ring buffer of
    `mailbox_size` slots (slot `mail_count % mailbox_size`).
    """

    def __init__(self, num_nodes: int, dim_memory: int, dim_mail: int, mailbox_size: int = 1,
                 pin_memory: bool = False) -> None:
        self.num_nodes = num_nodes
        self.dim_memory = dim_memory
        self.dim_mail = dim_mail
        self.mailbox_size = mailbox_size
        self.pinned = pin_memory and torch.cuda.is_available()
        self.mem = self._allocate("mem", (num_nodes, dim_memory), torch.float32)
        self.mem_ts = self._allocate("mem_ts", (num_nodes,), torch.float64)
        self.mail = self._allocate("mail", (num_nodes, mailbox_size, dim_mail), torch.float32)
        self.mail_ts = self._allocate("mail_ts", (num_nodes, mailbox_size), torch.float64)
        self.mail_count = self._allocate("mail_count", (num_nodes,), torch.int64)
        self.version = self._allocate("version", (num_nodes,), torch.int64)
        self._committed = self._allocate(COMMITTED_KEY, (1,), torch.int64)
        self._lock = ReadWriteLock()
        self._commit = threading.Condition()
        self._initialise()

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zeroed table `name`; a subclass may place it elsewhere (e.g. in shared memory)."""
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pinned)

    def _initialise(self) -> None:
        """Mark every row never written and nothing committed (a new store's state)."""
        self.version.fill_(-1)
        self._committed.fill_(-1)

    @property
    def committed_version(self) -> int:
        """The highest batch index whose update is written; -1 when none is."""
        return int(self._committed[0])

    def fetch(self, nodes: torch.Tensor | np.ndarray, min_version: int | None = None,
              timeout: float | None = None) -> MemoryBatch:
        """Read the rows of `nodes`, first waiting until batch `min_version` is committed if given.

        Each distinct node is gathered once. Raises TimeoutError when `min_version` is not committed
        within `timeout` seconds.
        """
        if min_version is not None:
            self.wait_for_commit(min_version, timeout)
        unique, inverse = torch.unique(as_host_nodes(nodes), return_inverse=True)
        with self._lock.read():
            rows = {name: getattr(self, name).index_select(0, unique) for name in TABLE_NAMES}
            committed = self.committed_version
        expanded = {name: self._expand(row, inverse) for name, row in rows.items()}
        return MemoryBatch(nodes=self._expand(unique, inverse), row=inverse, committed=committed, **expanded)

    def wait_for_commit(self, min_version: int, timeout: float | None) -> None:
        """Block until batch `min_version` is committed; TimeoutError after `timeout` seconds."""
        with self._commit:
            if not self._commit.wait_for(lambda: self.committed_version >= min_version, timeout):
                raise self._commit_timeout(min_version, timeout)

    def _commit_timeout(self, min_version: int, timeout: float | None) -> TimeoutError:
        """The error of a wait for `min_version` that ran out of time."""
        return TimeoutError(f"memory version {min_version} not committed within {timeout} s "
                            f"(committed: {self.committed_version})")

    def _expand(self, rows: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(inverse), *rows.shape[1:]), dtype=rows.dtype, pin_memory=self.pinned)
        return torch.index_select(rows, 0, inverse, out=out)

    def update(self, version: int, update: MemoryUpdate) -> None:
        """Write batch `version`'s new memory and mails, then commit it and wake waiting fetches.

        Raises ValueError unless `version == committed_version + 1`. The update may live on any device
        and may require grad: the store keeps detached host copies.
        """
        update = update.to_host()
        mem_nodes, mem_rows = last_occurrences(update.nodes)
        mailed_nodes, mail_rows = last_occurrences(update.mail_nodes)
        new_mail, new_mail_ts = update.mail[mail_rows], update.mail_ts[mail_rows]
        with self._lock.write():
            self._check_next_version(version)
            self.mem.index_copy_(0, mem_nodes, update.mem[mem_rows])
            self.mem_ts.index_copy_(0, mem_nodes, update.mem_ts[mem_rows])
            self.version.index_fill_(0, mem_nodes, version)
            slots = self.mail_count[mailed_nodes] % self.mailbox_size
            self.mail[mailed_nodes, slots] = new_mail
            self.mail_ts[mailed_nodes, slots] = new_mail_ts
            self.mail_count.index_add_(0, mailed_nodes, torch.ones_like(mailed_nodes))
            self._set_committed(version)

    def _check_next_version(self, version: int) -> None:
        expected = self.committed_version + 1
        if version != expected:
            raise ValueError(
                f"memory update for batch {version} but committed version is {self.committed_version}: "
                f"updates must come in batch order (expected batch {expected})"
            )

    def _set_committed(self, version: int) -> None:
        with self._commit:
            self._committed[0] = version
            self._commit.notify_all()

    def snapshot(self) -> dict:
        """A deep copy of the whole store, e.g. to run evaluation without leaking it into training."""
        return self.state_dict()

    def restore(self, snap: dict) -> None:
        """Put back a state taken with `snapshot()`."""
        self.load_state_dict(snap)

    def reset(self) -> None:
        """Zero every table, mark every row never written and the committed version -1 (a new epoch)."""
        with self._lock.write():
            for name in TABLE_NAMES:
                getattr(self, name).zero_()
            self.version.fill_(-1)
            self._set_committed(-1)

    def state_dict(self) -> dict:
        """Deep copies of all tables plus the committed version, for checkpoints."""
        with self._lock.read():
            state = {name: getattr(self, name).clone() for name in TABLE_NAMES}
            state[COMMITTED_KEY] = self.committed_version
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy a saved state into the store; raises CheckpointError if it does not fit this store."""
        self._check_state(state)
        with self._lock.write():
            for name in TABLE_NAMES:
                getattr(self, name).copy_(state[name])
            self._set_committed(int(state[COMMITTED_KEY]))

    def _check_state(self, state: dict) -> None:
        for key in (*TABLE_NAMES, COMMITTED_KEY):
            if key not in state:
                raise CheckpointError(f"memory store state: missing key '{key}'")
        for name in TABLE_NAMES:
            saved, table = state[name], getattr(self, name)
            if describe_table(saved) != describe_table(table):
                raise CheckpointError(
                    f"memory store state: key '{name}' is {describe_table(saved)}, "
                    f"this store needs {describe_table(table)}"
                )


def describe_table(value: object) -> str:
    """Shape and dtype of a tensor (or the type of anything else), as a checkpoint error shows it."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__
