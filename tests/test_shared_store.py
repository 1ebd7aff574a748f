"""The shared-memory store (memory/shared.py): a store attached to another's tables sees its writes and
commits, across processes too; the tables leave no files behind; the file lock excludes readers while
a writer holds it; attaching to nothing is a clear error."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from memory.batch import MemoryUpdate
from memory.shared import FileReadWriteLock, SharedMemoryStore, shared_memory_root

DIMS = {"num_nodes": 6, "dim_memory": 2, "dim_mail": 3, "mailbox_size": 2}


@pytest.fixture
def store_path() -> Path:
    path = shared_memory_root() / f"mspipe-test-{uuid.uuid4().hex}"
    yield path
    assert not path.exists(), "the creator's close() removes the store's directory"


def write(store: SharedMemoryStore, batch: int, nodes: list[int], value: float) -> None:
    """Batch `batch` sets memory `value` and one mail `value + 100` at time `value` on `nodes`."""
    n = len(nodes)
    ids = torch.tensor(nodes)
    store.update(batch, MemoryUpdate(ids, torch.full((n, DIMS["dim_memory"]), value), torch.full((n,), value),
                                     ids, torch.full((n, DIMS["dim_mail"]), value + 100), torch.full((n,), value)))


def test_an_attached_store_sees_the_creators_writes_and_commits(store_path):
    creator = SharedMemoryStore(store_path, True, **DIMS)
    attached = SharedMemoryStore(store_path, False, **DIMS)
    try:
        creator.unlink_tables()
        assert sorted(p.name for p in store_path.iterdir()) == ["lock"]
        assert attached.committed_version == -1 and attached.fetch(torch.arange(6)).version.tolist() == [-1] * 6

        write(creator, 0, [1, 4], 7.0)
        write(attached, 1, [4], 9.0)
        rows = creator.fetch(torch.tensor([4, 1, 0]), min_version=1, timeout=1)
        assert rows.committed == 1 and attached.committed_version == 1
        assert rows.mem[:, 0].tolist() == [9.0, 7.0, 0.0]
        assert rows.version.tolist() == [1, 0, -1]
        assert rows.mail_count.tolist() == [2, 1, 0]
        with pytest.raises(TimeoutError, match="memory version 2 not committed within 0.05 s"):
            attached.fetch(torch.tensor([1]), min_version=2, timeout=0.05)

        creator.reset()
        assert attached.committed_version == -1 and attached.fetch(torch.tensor([4])).mem.abs().sum() == 0
        attached.close()
        assert store_path.exists(), "only the creator removes the directory"
    finally:
        creator.close()


def test_attaching_to_a_store_nobody_created_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="shared memory store .* does not exist"):
        SharedMemoryStore(tmp_path / "missing", False, **DIMS)


def attach_and_write(path: Path) -> None:
    """A second process: attach to the store at `path`, then commit batches 0 and 1 a little apart."""
    store = SharedMemoryStore(path, False, **DIMS)
    write(store, 0, [2], 3.0)
    time.sleep(0.2)
    write(store, 1, [3], 5.0)


def test_a_fetch_waits_for_a_version_another_process_commits(store_path):
    creator = SharedMemoryStore(store_path, True, **DIMS)
    try:
        child = mp.get_context("spawn").Process(target=attach_and_write, args=(store_path,))
        child.start()
        rows = creator.fetch(torch.tensor([2, 3]), min_version=1, timeout=60)
        child.join(60)
        assert child.exitcode == 0
        assert rows.committed == 1
        assert rows.mem[:, 0].tolist() == [3.0, 5.0] and rows.mem_ts.tolist() == [3.0, 5.0]
        assert rows.mail[:, 0, 0].tolist() == [103.0, 105.0]
    finally:
        creator.close()


def test_a_writer_holds_readers_out_in_other_threads(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    lock = FileReadWriteLock(path)
    events = []
    writing = threading.Event()

    def reader() -> None:
        writing.wait()
        with lock.read():
            events.append("read")

    thread = threading.Thread(target=reader)
    thread.start()
    with lock.write():
        writing.set()
        time.sleep(0.2)
        events.append("write done")
    thread.join(5)
    assert events == ["write done", "read"]
    with lock.read(), FileReadWriteLock(path).read():
        events.append("two readers at once")
    assert events[-1] == "two readers at once"
