"""The versioned memory store: write semantics, version ordering, waiting, consistency under threads,
snapshots, checkpoints and the mailbox ring buffer."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from common.errors import CheckpointError, UserError
from memory import MemoryBatch, MemoryStore, MemoryUpdate

DIM_MEM, DIM_MAIL = 4, 3


def make_store(num_nodes: int = 10, mailbox_size: int = 1) -> MemoryStore:
    return MemoryStore(num_nodes, DIM_MEM, DIM_MAIL, mailbox_size=mailbox_size)


def write(store: MemoryStore, batch_index: int, nodes, values, mail_nodes=None, mail_values=None) -> None:
    """Update with memory rows and mails filled with the given per-row values (timestamps = values)."""
    nodes = torch.as_tensor(nodes)
    values = torch.as_tensor(values, dtype=torch.float64)
    mail_nodes = nodes if mail_nodes is None else torch.as_tensor(mail_nodes)
    mail_values = values if mail_values is None else torch.as_tensor(mail_values, dtype=torch.float64)
    store.update(batch_index, MemoryUpdate(
        nodes, values[:, None].expand(-1, DIM_MEM).float(), values,
        mail_nodes, mail_values[:, None].expand(-1, DIM_MAIL).float(), mail_values,
    ))


def test_fresh_store_is_zero_and_never_written():
    batch = make_store().fetch(torch.tensor([0, 3]))
    assert torch.equal(batch.mem, torch.zeros(2, DIM_MEM))
    assert torch.equal(batch.version, torch.tensor([-1, -1]))
    assert torch.equal(batch.mail_count, torch.tensor([0, 0]))
    assert batch.committed == -1
    assert batch.mem.dtype == torch.float32 and batch.mem_ts.dtype == torch.float64
    assert batch.mail.shape == (2, 1, DIM_MAIL) and batch.mail_ts.shape == (2, 1)


def test_last_occurrence_wins_for_duplicate_nodes():
    store = make_store()
    write(store, 0, [2, 5, 2, 7, 5], [1.0, 2.0, 3.0, 4.0, 5.0])
    batch = store.fetch(torch.tensor([2, 5, 7]))
    assert torch.equal(batch.mem[:, 0], torch.tensor([3.0, 5.0, 4.0]))
    assert torch.equal(batch.mem_ts, torch.tensor([3.0, 5.0, 4.0], dtype=torch.float64))
    assert torch.equal(batch.mail[:, 0, 0], torch.tensor([3.0, 5.0, 4.0]))
    assert torch.equal(batch.mail_count, torch.tensor([1, 1, 1]))
    assert torch.equal(batch.version, torch.tensor([0, 0, 0]))


def test_versions_commit_in_order_and_record_the_writer():
    store = make_store()
    write(store, 0, [1, 2], [1.0, 1.0])
    write(store, 1, [2, 3], [2.0, 2.0])
    assert store.committed_version == 1
    batch = store.fetch(np.array([1, 2, 3, 4]))
    assert torch.equal(batch.version, torch.tensor([0, 1, 1, -1]))
    assert batch.committed == 1


@pytest.mark.parametrize("batch_index", [0, 3])
def test_out_of_order_update_raises_naming_both_versions(batch_index):
    store = make_store()
    write(store, 0, [1], [1.0])
    write(store, 1, [1], [2.0])
    with pytest.raises(ValueError, match=rf"batch {batch_index}.*committed version is 1"):
        write(store, batch_index, [1], [9.0])
    assert store.fetch(torch.tensor([1])).mem_ts.item() == 2.0


def test_fetch_waits_for_min_version():
    store = make_store()
    results: list[MemoryBatch] = []
    reader = threading.Thread(target=lambda: results.append(store.fetch(torch.tensor([4]), min_version=2, timeout=10)))
    reader.start()
    for b in range(3):
        assert not results
        write(store, b, [4], [float(b)])
    reader.join(timeout=10)
    assert results[0].committed >= 2
    assert results[0].mem_ts.item() == 2.0


def test_fetch_times_out_when_version_never_commits():
    store = make_store()
    write(store, 0, [1], [1.0])
    with pytest.raises(TimeoutError, match="version 1"):
        store.fetch(torch.tensor([1]), min_version=1, timeout=0.05)


def test_concurrent_readers_never_see_a_torn_update():
    """The writer fills every row with value b in batch b; every read must be one whole batch."""
    num_nodes, dim, num_batches = 2000, 64, 60
    store = MemoryStore(num_nodes, dim, 2)
    nodes = torch.arange(num_nodes)
    errors: list[str] = []
    done = threading.Event()

    def writer() -> None:
        for b in range(num_batches):
            value = torch.full((num_nodes,), float(b), dtype=torch.float64)
            store.update(b, MemoryUpdate(nodes, value[:, None].expand(-1, dim).float(), value,
                                      nodes, torch.full((num_nodes, 2), float(b)), value))
        done.set()

    def reader() -> None:
        while not done.is_set():
            batch = store.fetch(nodes.flip(0))
            expected = float(batch.committed) if batch.committed >= 0 else 0.0
            if not (torch.all(batch.mem == expected) and torch.all(batch.mem_ts == expected)
                    and torch.all(batch.mail == expected)):
                errors.append(f"torn read at committed {batch.committed}")

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert store.committed_version == num_batches - 1
    assert errors == []


def test_snapshot_restore_round_trip():
    store = make_store(mailbox_size=2)
    write(store, 0, [1, 2], [1.0, 2.0])
    snap = store.snapshot()
    before = store.fetch(torch.arange(10))
    write(store, 1, [2, 3], [5.0, 6.0])
    store.restore(snap)
    after = store.fetch(torch.arange(10))
    assert store.committed_version == 0
    for name in ("mem", "mem_ts", "mail", "mail_ts", "mail_count", "version"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    write(store, 1, [2], [7.0])
    assert torch.equal(snap["mem_ts"][2], torch.tensor(2.0, dtype=torch.float64)), "snapshot must be a deep copy"


def test_reset_clears_everything():
    store = make_store()
    write(store, 0, [1, 2], [1.0, 2.0])
    store.reset()
    batch = store.fetch(torch.tensor([1, 2]))
    assert store.committed_version == -1
    assert not batch.mem.any() and not batch.mem_ts.any() and not batch.mail.any() and not batch.mail_count.any()
    assert torch.equal(batch.version, torch.tensor([-1, -1]))
    write(store, 0, [1], [3.0])
    assert store.committed_version == 0


def test_state_dict_round_trip_into_a_new_store():
    store = make_store(mailbox_size=3)
    write(store, 0, [1, 2, 1], [1.0, 2.0, 3.0])
    write(store, 1, [4], [4.0])
    copy = make_store(mailbox_size=3)
    copy.load_state_dict(store.state_dict())
    assert copy.committed_version == 1
    original, loaded = store.fetch(torch.arange(10)), copy.fetch(torch.arange(10))
    for name in ("mem", "mem_ts", "mail", "mail_ts", "mail_count", "version"):
        assert torch.equal(getattr(original, name), getattr(loaded, name)), name


@pytest.mark.parametrize("other", [
    MemoryStore(11, DIM_MEM, DIM_MAIL), MemoryStore(10, DIM_MEM + 1, DIM_MAIL), MemoryStore(10, DIM_MEM, DIM_MAIL, 2),
])
def test_load_state_dict_refuses_mismatched_shapes(other):
    store = make_store()
    with pytest.raises(CheckpointError, match="key '(mem|mail|mail_ts|mem_ts)'") as raised:
        store.load_state_dict(other.state_dict())
    assert isinstance(raised.value, UserError)
    assert store.committed_version == -1


def test_load_state_dict_refuses_missing_key():
    state = make_store().state_dict()
    del state["mail_count"]
    with pytest.raises(CheckpointError, match="missing key 'mail_count'"):
        make_store().load_state_dict(state)


def test_ring_buffer_with_three_slots_wraps():
    store = make_store(mailbox_size=3)
    for b in range(5):
        write(store, b, [6], [float(b)], mail_nodes=[6], mail_values=[10.0 + b])
    batch = store.fetch(torch.tensor([6]))
    assert batch.mail_count.item() == 5
    # mails 10..14 in slots 0,1,2,0,1: slot 0 holds 13, slot 1 holds 14, slot 2 holds 12
    assert torch.equal(batch.mail[0, :, 0], torch.tensor([13.0, 14.0, 12.0]))
    assert torch.equal(batch.mail_ts[0], torch.tensor([13.0, 14.0, 12.0], dtype=torch.float64))


def test_duplicate_mail_nodes_deliver_only_the_last_mail():
    store = make_store(mailbox_size=3)
    write(store, 0, [1], [1.0], mail_nodes=[6, 6, 2], mail_values=[7.0, 8.0, 9.0])
    batch = store.fetch(torch.tensor([6, 2]))
    assert torch.equal(batch.mail_count, torch.tensor([1, 1]))
    assert torch.equal(batch.mail[:, 0, 0], torch.tensor([8.0, 9.0]))
    assert not batch.mail[:, 1:].any()


def test_single_slot_mailbox_keeps_the_latest_mail():
    store = make_store()
    for b in range(3):
        write(store, b, [5], [float(b)])
    batch = store.fetch(torch.tensor([5]))
    assert batch.mail[0, 0, 0].item() == 2.0 and batch.mail_count.item() == 3


def test_writing_a_tensor_that_requires_grad_stores_a_detached_copy():
    store = make_store()
    weights = torch.ones(2, DIM_MEM, requires_grad=True)
    mem = weights * 2
    store.update(0, MemoryUpdate(torch.tensor([0, 1]), mem, torch.tensor([1.0, 1.0], dtype=torch.float64),
                              torch.tensor([0]), torch.ones(1, DIM_MAIL, requires_grad=True), torch.tensor([1.0])))
    with torch.no_grad():
        mem.add_(5.0)
    batch = store.fetch(torch.tensor([0, 1]))
    assert not batch.mem.requires_grad and not batch.mail.requires_grad
    assert torch.equal(batch.mem, torch.full((2, DIM_MEM), 2.0))


def test_dedup_fetch_equals_a_naive_gather():
    generator = torch.Generator().manual_seed(0)
    store = make_store(num_nodes=50, mailbox_size=2)
    for b in range(4):
        nodes = torch.randint(0, 50, (30,), generator=generator)
        write(store, b, nodes, torch.rand(30, generator=generator, dtype=torch.float64))
    request = torch.randint(0, 50, (200,), generator=generator)
    batch = store.fetch(request)
    assert torch.equal(batch.nodes, request)
    for name in ("mem", "mem_ts", "mail", "mail_ts", "mail_count", "version"):
        assert torch.equal(getattr(batch, name), getattr(store, name)[request]), name


def test_memory_batch_to_keeps_rows_and_committed():
    store = make_store()
    write(store, 0, [3], [1.5])
    batch = store.fetch(torch.tensor([3, 3]))
    moved = batch.to("cpu", non_blocking=True)
    assert moved.committed == 0
    assert torch.equal(moved.mem_ts, batch.mem_ts) and torch.equal(moved.nodes, torch.tensor([3, 3]))
