"""The store's history tables (memory/store.py): additive, time-decayed sums of contributions against brute
force, independence of row order and of what the writer read, fetch, snapshots, checkpoints (old ones
without history too), reset, the data-parallel merge, the shared store, and mitigation leaving history alone."""
from __future__ import annotations

import uuid

import pytest
import torch

from common.errors import CheckpointError
from memory import MemoryStore, MemoryUpdate
from memory.shared import SharedMemoryStore, shared_memory_root
from pipeline.run.distributed import merge_updates
from pipeline.stages.mitigation import SimilarityTable, mitigate

NUM_NODES, DIM_MEM, DIM_MAIL, DIM_HISTORY = 8, 2, 3, 4
RATES = (0.0, 0.3)


def make_store(**kwargs) -> MemoryStore:
    return MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL, history_dim=DIM_HISTORY, history_rates=RATES, **kwargs)


def contributions(nodes, times, rows) -> MemoryUpdate:
    """An update writing memory and mails of nothing, contributing `rows` to `nodes` at `times`."""
    none = torch.zeros(0, dtype=torch.int64)
    return MemoryUpdate(none, torch.zeros(0, DIM_MEM), torch.zeros(0, dtype=torch.float64), none,
                        torch.zeros(0, DIM_MAIL), torch.zeros(0, dtype=torch.float64),
                        history_nodes=torch.as_tensor(nodes), history=torch.as_tensor(rows, dtype=torch.float32),
                        history_ts=torch.as_tensor(times, dtype=torch.float64))


def random_updates(num_updates: int, rows: int, seed: int) -> list[MemoryUpdate]:
    """Updates whose nodes repeat within a batch and whose times grow from batch to batch (not within one)."""
    generator = torch.Generator().manual_seed(seed)
    return [contributions(torch.randint(0, NUM_NODES - 1, (rows,), generator=generator),
                          b * 2.0 + 3 * torch.rand(rows, generator=generator, dtype=torch.float64),
                          torch.randn(rows, DIM_HISTORY, generator=generator))
            for b in range(num_updates)]


def brute_force(updates: list[MemoryUpdate]) -> tuple[torch.Tensor, torch.Tensor]:
    """History and its time per node, summed directly over every contribution in float64."""
    history = torch.zeros(NUM_NODES, len(RATES), DIM_HISTORY, dtype=torch.float64)
    history_ts = torch.zeros(NUM_NODES, dtype=torch.float64)
    for u in updates:
        for node, t in zip(u.history_nodes.tolist(), u.history_ts.tolist()):
            history_ts[node] = max(history_ts[node].item(), t)
    for u in updates:
        for node, t, x in zip(u.history_nodes.tolist(), u.history_ts.tolist(), u.history.double()):
            for r, rate in enumerate(RATES):
                history[node, r] += torch.exp(torch.tensor(-rate * (history_ts[node].item() - t))) * x
    return history, history_ts


def apply_all(store: MemoryStore, updates: list[MemoryUpdate]) -> None:
    for version, u in enumerate(updates):
        store.update(version, u)


def test_history_is_the_decayed_sum_of_every_contribution():
    updates = random_updates(num_updates=5, rows=12, seed=0)
    store = make_store()
    apply_all(store, updates)
    expected, expected_ts = brute_force(updates)
    rows = store.fetch(torch.arange(NUM_NODES))
    assert rows.history.dtype == torch.float32 and rows.history_ts.dtype == torch.float64
    assert torch.equal(rows.history_ts, expected_ts)
    torch.testing.assert_close(rows.history.double(), expected, rtol=1e-5, atol=1e-5)
    assert not rows.history[NUM_NODES - 1].any() and rows.history_ts[NUM_NODES - 1] == 0, "never contributed to"
    assert torch.equal(rows.version, torch.full((NUM_NODES,), -1)), "history leaves memory rows alone"


def test_row_order_within_an_update_does_not_matter():
    updates = random_updates(num_updates=3, rows=15, seed=1)
    generator = torch.Generator().manual_seed(2)
    shuffled = []
    for u in updates:
        order = torch.randperm(len(u.history_nodes), generator=generator)
        shuffled.append(contributions(u.history_nodes[order], u.history_ts[order], u.history[order]))
    first, second = make_store(), make_store()
    apply_all(first, updates)
    apply_all(second, shuffled)
    torch.testing.assert_close(first.history, second.history)
    assert torch.equal(first.history_ts, second.history_ts)


def test_a_writer_that_never_reads_loses_no_contribution():
    """Contributions computed without reading the store (as stale as can be) all add up."""
    store = make_store()
    for version in range(40):
        store.update(version, contributions([3, 5, 3], [float(version)] * 3, torch.ones(3, DIM_HISTORY)))
    rows = store.fetch(torch.tensor([3, 5]))
    assert rows.history_ts.tolist() == [39.0, 39.0]
    torch.testing.assert_close(rows.history[:, 0], torch.tensor([[80.0] * DIM_HISTORY, [40.0] * DIM_HISTORY]))
    geometric = sum(torch.exp(torch.tensor(-RATES[1] * k, dtype=torch.float64)) for k in range(40)).float()
    torch.testing.assert_close(rows.history[:, 1, 0], torch.stack([2 * geometric, geometric]))


def test_an_earlier_contribution_is_decayed_to_the_nodes_latest_time():
    store = make_store()
    store.update(0, contributions([1], [10.0], torch.ones(1, DIM_HISTORY)))
    store.update(1, contributions([1], [4.0], torch.ones(1, DIM_HISTORY)))
    rows = store.fetch(torch.tensor([1]))
    assert rows.history_ts.item() == 10.0
    torch.testing.assert_close(rows.history[0, :, 0], torch.tensor([2.0, 1.0 + float(torch.exp(torch.tensor(-1.8)))]))


def test_fetch_returns_history_in_request_order_with_duplicates():
    store = make_store()
    apply_all(store, random_updates(num_updates=2, rows=10, seed=3))
    request = torch.tensor([4, 0, 4, 7, 2, 0])
    rows = store.fetch(request)
    assert rows.history.shape == (6, len(RATES), DIM_HISTORY)
    assert torch.equal(rows.history, store.history[request])
    assert torch.equal(rows.history_ts, store.history_ts[request])


def test_a_store_without_history_works_as_before():
    store = MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL)
    nodes, ts = torch.tensor([1, 2]), torch.tensor([1.0, 2.0], dtype=torch.float64)
    store.update(0, MemoryUpdate(nodes, torch.ones(2, DIM_MEM), ts, nodes, torch.ones(2, DIM_MAIL), ts))
    rows = store.fetch(torch.tensor([2, 1, 2]))
    assert rows.history.shape == (3, 0, 0) and rows.history_ts.tolist() == [0.0] * 3
    assert rows.version.tolist() == [0, 0, 0]


@pytest.mark.parametrize("rates", [(-0.1,), (float("nan"),), (float("inf"), 0.0)])
def test_rates_must_be_finite_and_not_negative(rates):
    with pytest.raises(ValueError, match="history rates must be finite and >= 0"):
        MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL, history_dim=DIM_HISTORY, history_rates=rates)


def test_rows_of_the_wrong_width_are_refused_before_anything_is_written():
    store = make_store()
    with pytest.raises(ValueError, match=rf"this store needs \(1, {DIM_HISTORY}\)"):
        store.update(0, contributions([1], [1.0], torch.ones(1, DIM_HISTORY + 1)))
    assert store.committed_version == -1 and not store.history.any()


def test_snapshot_restore_and_state_dict_round_trip_history():
    store = make_store()
    updates = random_updates(num_updates=3, rows=8, seed=4)
    apply_all(store, updates[:2])
    snap = store.snapshot()
    before = store.fetch(torch.arange(NUM_NODES))
    store.update(2, updates[2])
    store.restore(snap)
    after = store.fetch(torch.arange(NUM_NODES))
    assert torch.equal(before.history, after.history) and torch.equal(before.history_ts, after.history_ts)
    copy = make_store()
    copy.load_state_dict(store.state_dict())
    assert torch.equal(copy.history, store.history) and torch.equal(copy.history_ts, store.history_ts)


def test_a_state_without_history_loads_only_into_a_store_without_history():
    plain = MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL)
    nodes, ts = torch.tensor([3]), torch.tensor([5.0], dtype=torch.float64)
    plain.update(0, MemoryUpdate(nodes, torch.ones(1, DIM_MEM), ts, nodes, torch.ones(1, DIM_MAIL), ts))
    old = {name: value for name, value in plain.state_dict().items() if not name.startswith("history")}
    loaded = MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL)
    loaded.load_state_dict(old)
    assert loaded.committed_version == 0 and torch.equal(loaded.mem, plain.mem)
    with pytest.raises(CheckpointError, match="missing key 'history'"):
        make_store().load_state_dict(old)
    with pytest.raises(CheckpointError, match=r"key 'history' is \(8, 0, 0\)"):
        make_store().load_state_dict(plain.state_dict())


def test_reset_zeroes_history():
    store = make_store()
    apply_all(store, random_updates(num_updates=2, rows=6, seed=5))
    store.reset()
    assert not store.history.any() and not store.history_ts.any()


def test_merged_rank_updates_equal_one_update_with_all_rows():
    rank0, rank1 = random_updates(num_updates=2, rows=9, seed=6)
    merged, single = make_store(), make_store()
    merged.update(0, merge_updates([rank0, rank1]))
    single.update(0, contributions(torch.cat([rank1.history_nodes, rank0.history_nodes]),
                                   torch.cat([rank1.history_ts, rank0.history_ts]),
                                   torch.cat([rank1.history, rank0.history])))
    torch.testing.assert_close(merged.history, single.history)
    assert torch.equal(merged.history_ts, single.history_ts)


def test_merging_updates_without_history_gives_none():
    nodes, ts = torch.tensor([1, 2]), torch.tensor([1.0, 1.0], dtype=torch.float64)
    plain = MemoryUpdate(nodes, torch.ones(2, DIM_MEM), ts, nodes, torch.ones(2, DIM_MAIL), ts)
    merged = merge_updates([plain, plain])
    assert len(merged.history_nodes) == 0 and len(merged.history) == 0 and len(merged.history_ts) == 0
    MemoryStore(NUM_NODES, DIM_MEM, DIM_MAIL).update(0, merged)


def test_a_shared_store_shares_history():
    path = shared_memory_root() / f"mspipe-test-{uuid.uuid4().hex}"
    dims = {"num_nodes": NUM_NODES, "dim_memory": DIM_MEM, "dim_mail": DIM_MAIL,
            "history_dim": DIM_HISTORY, "history_rates": RATES}
    creator = SharedMemoryStore(path, True, **dims)
    try:
        attached = SharedMemoryStore(path, False, **dims)
        creator.unlink_tables()
        updates = random_updates(num_updates=2, rows=7, seed=7)
        creator.update(0, updates[0])
        attached.update(1, updates[1])
        expected, expected_ts = brute_force(updates)
        rows = creator.fetch(torch.arange(NUM_NODES))
        torch.testing.assert_close(rows.history.double(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(attached.fetch(torch.arange(NUM_NODES)).history_ts, expected_ts)
        creator.reset()
        assert not attached.history.any()
    finally:
        creator.close()
    assert not path.exists()


def test_a_shared_store_without_history_has_no_history_file():
    path = shared_memory_root() / f"mspipe-test-{uuid.uuid4().hex}"
    creator = SharedMemoryStore(path, True, NUM_NODES, DIM_MEM, DIM_MAIL)
    try:
        attached = SharedMemoryStore(path, False, NUM_NODES, DIM_MEM, DIM_MAIL)
        assert "history" not in {p.name for p in path.iterdir()}
        assert attached.fetch(torch.tensor([0])).history.shape == (1, 0, 0)
    finally:
        creator.close()


def test_mitigation_leaves_history_alone():
    store = MemoryStore(4, 2, 1, history_dim=DIM_HISTORY, history_rates=RATES)
    nodes, ts = torch.arange(4), torch.tensor([0.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    mem = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.2], [-1.0, 0.0]])
    store.update(0, MemoryUpdate(nodes, mem, ts, nodes, torch.zeros(4, 1), ts, history_nodes=nodes,
                                 history=torch.randn(4, DIM_HISTORY), history_ts=ts))
    table = SimilarityTable(4, 2, measure="cosine")
    table.refresh_from_memory(store.fetch(nodes).mem)
    batch = store.fetch(nodes)
    result, count = mitigate(batch, torch.arange(4), torch.full((4,), 10.0, dtype=torch.float64), table, store,
                             quantile=0.5)
    assert count == 1 and not torch.equal(result.mem, batch.mem)
    assert result.history is batch.history and result.history_ts is batch.history_ts
