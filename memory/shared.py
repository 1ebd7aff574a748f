"""The memory store in shared memory, one per machine (docs/method.md §8): every process of a run on the machine
maps the same tables, so the node memory exists once however many ranks train there.

One process creates the tables (files in `/dev/shm`, mapped with `torch.from_file(shared=True)`); the
others attach to them. Once all have attached, the creator unlinks the files: the memory lives as long
as a process maps it and nothing is left behind, even after a crash. A lock file that stays until
`close()` serialises writers against readers across processes (`flock`, many readers or one writer),
and the committed version is a shared counter, so a fetch in any process can wait for any version.
Who writes, and when, is the caller's business (pipeline/run/distributed.py: one writer per machine).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from memory.store import MemoryStore

LOCK_NAME = "lock"
POLL_MIN_S = 0.0001
POLL_MAX_S = 0.005


def shared_memory_root() -> Path:
    """Where shared tables go: `/dev/shm` (RAM-backed) when the system has it, else the temp directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class FileReadWriteLock:
    """Shared (read) / exclusive (write) lock across processes and threads: `flock` on a file.

    Every acquisition opens the file anew, so two threads of one process hold independent locks just
    like two processes do. Not writer-preferring: readers here hold it only for one gather.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _held(self, operation: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)

    def read(self) -> Iterator[None]:
        """Hold the lock shared: other readers may enter, a writer waits."""
        return self._held(fcntl.LOCK_SH)

    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        return self._held(fcntl.LOCK_EX)


class SharedMemoryStore(MemoryStore):
    """A `MemoryStore` whose tables live in the directory `path`, shared by every process that opens it.

    The tables are memory-mapped files, which CUDA cannot pin; with `pin_memory` the rows a fetch
    returns are pinned instead, which is what the non-blocking copy to the GPU reads.

    `create=True` makes the directory and zeroed tables (one process per store); `create=False`
    attaches to tables another process created and leaves their contents alone. After every process
    has attached, the creator calls `unlink_tables()`; the creator's `close()` removes the directory.
    Waiting for a version polls the shared counter, since another process may commit it.
    """

    def __init__(self, path: Path, create: bool, num_nodes: int, dim_memory: int, dim_mail: int,
                 mailbox_size: int = 1, pin_memory: bool = False, history_dim: int = 0,
                 history_rates: tuple[float, ...] = ()) -> None:
        self.path = Path(path)
        self.creator = create
        if create:
            self.path.mkdir(parents=True)
            (self.path / LOCK_NAME).touch()
        elif not (self.path / LOCK_NAME).exists():
            raise FileNotFoundError(f"shared memory store {self.path} does not exist (not created yet?)")
        super().__init__(num_nodes, dim_memory, dim_mail, mailbox_size, pin_memory, history_dim, history_rates)
        self._lock = FileReadWriteLock(self.path / LOCK_NAME)

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Table `name` mapped from its file (created zero-filled by the creator); an empty table (e.g. a
        zero-width history) has no file and nothing to share."""
        numel = int(torch.Size(shape).numel())
        if numel == 0:
            return torch.zeros(shape, dtype=dtype)
        file = self.path / name
        if not self.creator and not file.exists():
            raise FileNotFoundError(f"shared memory store {self.path}: table '{name}' is missing")
        return torch.from_file(str(file), shared=True, size=numel, dtype=dtype).view(shape)

    def _initialise(self) -> None:
        if self.creator:
            super()._initialise()

    def unlink_tables(self) -> None:
        """Remove the table files; every process that attached keeps its mapping (creator only)."""
        for table in self.path.iterdir():
            if table.name != LOCK_NAME:
                table.unlink()

    def close(self) -> None:
        """Remove the store's directory (creator only; the tables stay mapped until the process ends)."""
        if self.creator and self.path.exists():
            self.unlink_tables()
            (self.path / LOCK_NAME).unlink()
            self.path.rmdir()

    def wait_for_commit(self, min_version: int, timeout: float | None) -> None:
        """Poll the shared counter until batch `min_version` is committed; TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_MIN_S
        while self.committed_version < min_version:
            if deadline is not None and time.monotonic() >= deadline:
                raise self._commit_timeout(min_version, timeout)
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX_S)
