"""The versioned node-memory store shared by the pipeline's stages (docs/method.md §3).

Host tables hold each node's memory vector, its timestamp, a mailbox of the latest mails, the number
of mails ever delivered, the batch index that last wrote the row and, for models that keep one, a
history: per decay rate, the exponentially time-decayed sum of every contribution the node was ever
given, with the time it is decayed to (`history`, `history_ts`; zero-width for other models). Memory
rows and mails are overwritten by each update; history is added to, so a contribution is never lost,
whichever version its writer read, and the rows of one update may come in any order. Updates commit
in batch order, so a fetch can wait until the updates it depends on are written; readers and the
writer may be different threads and a read always sees whole updates (a readers-writer lock guards
the tables).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from common.errors import CheckpointError
from memory.batch import MemoryBatch, MemoryUpdate, as_host_nodes
from memory.rwlock import ReadWriteLock

TABLE_NAMES = ("mem", "mem_ts", "mail", "mail_ts", "mail_count", "version", "history", "history_ts")
HISTORY_TABLES = ("history", "history_ts")
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

    History is additive instead: `history[n, r]` is the sum over every contribution `x` given to node n at
    time `t` (this and earlier updates) of `exp(-history_rates[r] * (history_ts[n] - t)) * x`, where
    `history_ts[n]` is n's latest contribution time (at least 0, the time of a row never added to).
    Reading it at another time is the caller's business. Rates are per time unit; 0 never decays.
    """

    def __init__(self, num_nodes: int, dim_memory: int, dim_mail: int, mailbox_size: int = 1,
                 pin_memory: bool = False, history_dim: int = 0, history_rates: tuple[float, ...] = ()) -> None:
        self.num_nodes = num_nodes
        self.dim_memory = dim_memory
        self.dim_mail = dim_mail
        self.mailbox_size = mailbox_size
        self.history_dim = history_dim
        self.history_rates = tuple(history_rates)
        self._rates = torch.tensor(self.history_rates, dtype=torch.float64)
        if not (torch.isfinite(self._rates).all() and (self._rates >= 0).all()):
            raise ValueError(f"history rates must be finite and >= 0, got {self.history_rates}")
        self.pinned = pin_memory and torch.cuda.is_available()
        self.mem = self._allocate("mem", (num_nodes, dim_memory), torch.float32)
        self.mem_ts = self._allocate("mem_ts", (num_nodes,), torch.float64)
        self.mail = self._allocate("mail", (num_nodes, mailbox_size, dim_mail), torch.float32)
        self.mail_ts = self._allocate("mail_ts", (num_nodes, mailbox_size), torch.float64)
        self.mail_count = self._allocate("mail_count", (num_nodes,), torch.int64)
        self.version = self._allocate("version", (num_nodes,), torch.int64)
        self.history = self._allocate("history", (num_nodes, len(self.history_rates), history_dim), torch.float32)
        self.history_ts = self._allocate("history_ts", (num_nodes,), torch.float64)
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
        """Write batch `version`'s memory, mails and history, then commit it and wake waiting fetches.

        Raises ValueError unless `version == committed_version + 1`, or if the history rows do not fit
        this store. The update may live on any device and may require grad: the store keeps detached
        host copies.
        """
        update = update.to_host()
        self._check_history(update)
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
            if len(update.history_nodes):
                self._add_history(update.history_nodes, update.history, update.history_ts)
            self._set_committed(version)

    def _check_history(self, update: MemoryUpdate) -> None:
        rows = len(update.history_nodes)
        if rows and (update.history.shape != (rows, self.history_dim) or update.history_ts.shape != (rows,)):
            raise ValueError(
                f"history update of {rows} nodes has rows {tuple(update.history.shape)} and times "
                f"{tuple(update.history_ts.shape)}; this store needs ({rows}, {self.history_dim}) and ({rows},)"
            )

    def _add_history(self, nodes: torch.Tensor, contributions: torch.Tensor, times: torch.Tensor) -> None:
        """Decay each touched row and its contributions to the node's latest time and add them (write lock held).

        The reference time never goes back (it is the max of the stored and the new times), so every
        decay factor lies in [0, 1]: a row never added to (zero, at time 0) stays harmless.
        """
        unique, inverse = torch.unique(nodes, return_inverse=True)
        latest = torch.zeros(len(unique), dtype=torch.float64)
        latest.scatter_reduce_(0, inverse, times, reduce="amax", include_self=False)
        stored_ts = self.history_ts.index_select(0, unique)
        reference = torch.maximum(stored_ts, latest)
        kept = torch.exp(-(reference - stored_ts)[:, None] * self._rates).float()
        added = torch.exp(-(reference[inverse] - times)[:, None] * self._rates).float()
        rows = self.history.index_select(0, unique).mul_(kept[:, :, None])
        rows.index_add_(0, inverse, added[:, :, None] * contributions[:, None, :])
        self.history.index_copy_(0, unique, rows)
        self.history_ts.index_copy_(0, unique, reference)

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
        """Copy a saved state into the store; raises CheckpointError if it does not fit this store.

        A state without history tables (saved before they existed) fits a store whose history is
        zero-width; its `history_ts` is then zeroed.
        """
        self._check_state(state)
        with self._lock.write():
            for name in TABLE_NAMES:
                if name in state:
                    getattr(self, name).copy_(state[name])
                else:
                    getattr(self, name).zero_()
            self._set_committed(int(state[COMMITTED_KEY]))

    def _check_state(self, state: dict) -> None:
        optional = HISTORY_TABLES if self.history.numel() == 0 else ()
        for key in (*TABLE_NAMES, COMMITTED_KEY):
            if key not in state and key not in optional:
                raise CheckpointError(f"memory store state: missing key '{key}'")
        for name in TABLE_NAMES:
            if name not in state:
                continue
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
