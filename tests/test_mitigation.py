"""Staleness mitigation: which roots are blended, the blend itself, and both similarity tables against
brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from memory import MemoryStore
from memory.batch import MemoryUpdate
from pipeline.stages.mitigation import SimilarityTable, mitigate


def store_with(mem: list[list[float]], mem_ts: list[float], never_written: int = 0) -> MemoryStore:
    """A store whose nodes 0..n-1 hold the given memory vectors and timestamps (batch 0), followed by
    `never_written` nodes without memory."""
    mem_tensor = torch.tensor(mem, dtype=torch.float32)
    ts = torch.tensor(mem_ts, dtype=torch.float64)
    nodes = torch.arange(len(mem))
    store = MemoryStore(len(mem) + never_written, mem_tensor.shape[1], 1)
    store.update(0, MemoryUpdate(nodes, mem_tensor, ts, nodes, torch.zeros(len(mem), 1), ts))
    return store


def cosine_table(store: MemoryStore, top_k: int) -> SimilarityTable:
    table = SimilarityTable(store.num_nodes, top_k, measure="cosine")
    table.refresh_from_memory(store.fetch(torch.arange(store.num_nodes)).mem)
    return table


def mitigate_roots(store: MemoryStore, table: SimilarityTable, roots: list[int], root_ts: list[float],
                   quantile: float):
    batch = store.fetch(torch.tensor(roots))
    positions = torch.arange(len(roots))
    result, count = mitigate(batch, positions, torch.tensor(root_ts, dtype=torch.float64), table, store,
                             quantile=quantile, gamma=0.9)
    return batch, result, count


# node 0 points along x; 1 and 2 are close to it, 3 points the other way
VECTORS = [[1.0, 0.0], [1.0, 0.1], [0.9, 0.2], [-1.0, 0.0]]


def test_blend_matches_hand_computation():
    store = store_with(VECTORS, [0.0, 5.0, 5.0, 5.0])
    table = cosine_table(store, top_k=2)
    batch, result, count = mitigate_roots(store, table, [0, 1, 2, 3], [10.0] * 4, quantile=0.5)
    expected = 0.9 * torch.tensor([1.0, 0.0]) + 0.1 * (torch.tensor([1.0, 0.1]) + torch.tensor([0.9, 0.2])) / 2
    assert count == 1
    torch.testing.assert_close(result.mem[0], expected)
    assert torch.equal(result.mem[1:], batch.mem[1:])


def test_only_similar_nodes_with_newer_memory_are_averaged():
    store = store_with(VECTORS, [3.0, 1.0, 4.0, 5.0])
    table = cosine_table(store, top_k=2)
    _, result, count = mitigate_roots(store, table, [0, 1, 2, 3], [100.0, 2.0, 5.0, 6.0], quantile=0.5)
    assert count == 1
    torch.testing.assert_close(result.mem[0], 0.9 * torch.tensor([1.0, 0.0]) + 0.1 * torch.tensor([0.9, 0.2]))


def test_stale_node_without_newer_similar_node_is_untouched():
    store = store_with(VECTORS, [3.0, 1.0, 1.0, 5.0])
    table = cosine_table(store, top_k=2)
    batch, result, count = mitigate_roots(store, table, [0, 1, 2, 3], [100.0, 2.0, 2.0, 6.0], quantile=0.5)
    assert count == 0
    assert torch.equal(result.mem, batch.mem)


def test_only_roots_above_the_quantile_change():
    generator = torch.Generator().manual_seed(1)
    num_nodes = 40
    mem = torch.rand(num_nodes, 6, generator=generator).tolist()
    mem_ts = (torch.arange(num_nodes, dtype=torch.float64) + 1).tolist()
    store = store_with(mem, mem_ts)
    table = cosine_table(store, top_k=num_nodes - 1)
    roots = list(range(num_nodes))
    batch, result, count = mitigate_roots(store, table, roots, [100.0] * num_nodes, quantile=0.9)
    dt = 100.0 - torch.tensor(mem_ts)
    stale = dt > torch.quantile(dt, 0.9)
    changed = (result.mem != batch.mem).any(dim=1)
    assert count == int(stale.sum()) == 4
    assert torch.equal(changed, stale)
    assert torch.equal(batch.mem, store.fetch(torch.arange(num_nodes)).mem), "input batch must stay untouched"


def test_nothing_is_mitigated_before_the_first_refresh():
    store = store_with(VECTORS, [0.0, 5.0, 5.0, 5.0])
    table = SimilarityTable(4, 2)
    batch, result, count = mitigate_roots(store, table, [0, 1, 2, 3], [10.0] * 4, quantile=0.5)
    assert count == 0 and torch.equal(result.mem, batch.mem)


def brute_force_top_k(similarity: np.ndarray, valid: np.ndarray, top_k: int) -> np.ndarray:
    """Per row: the other columns marked valid, by similarity descending, then by id."""
    result = np.full((len(similarity), top_k), -1)
    for v in range(len(similarity)):
        candidates = [u for u in range(len(similarity)) if u != v and valid[v, u]]
        ranked = sorted(candidates, key=lambda u: (-similarity[v, u], u))[:top_k]
        result[v, :len(ranked)] = ranked
    return result


def test_cosine_top_k_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors[13] = 0.0
    table = SimilarityTable(50, 5, measure="cosine", chunk_size=7)
    table.refresh_from_memory(torch.from_numpy(vectors))
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    unit = vectors / np.where(norms > 0, norms, 1)[:, None]
    valid = np.outer(norms > 0, norms > 0)
    expected = brute_force_top_k(unit @ unit.T, valid, 5)
    assert np.array_equal(table.neighbours(torch.arange(50)).numpy(), expected)
    assert (expected[13] == -1).all() and not (expected == 13).any()


def test_coneighbour_top_k_matches_brute_force():
    rng = np.random.default_rng(3)
    num_nodes, top_k = 35, 4
    src, dst = rng.integers(0, 30, 80), rng.integers(0, 30, 80)  # nodes 30..34 never interact
    table = SimilarityTable(num_nodes, top_k, measure="coneighbour", chunk_size=7)
    table.refresh_from_events(src, dst, num_nodes)
    neighbours = [set() for _ in range(num_nodes)]
    for s, d in zip(src, dst):
        neighbours[s].add(d)
        neighbours[d].add(s)
    jaccard = np.array([[len(a & b) / len(a | b) if a | b else 0.0 for b in neighbours] for a in neighbours])
    expected = brute_force_top_k(jaccard, jaccard > 0, top_k)
    assert np.array_equal(table.neighbours(np.arange(num_nodes)).numpy(), expected)
    assert (expected == -1).any() and (expected >= 0).any()


def test_refresh_by_the_other_measure_is_refused():
    with pytest.raises(ValueError, match="coneighbour"):
        SimilarityTable(4, 2, measure="coneighbour").refresh_from_memory(torch.ones(4, 2))
    with pytest.raises(ValueError, match="measure must be one of"):
        SimilarityTable(4, 2, measure="euclid")


def test_a_blended_root_no_longer_shares_its_row_with_other_reads_of_its_node():
    store = store_with(VECTORS, [0.0, 5.0, 5.0, 5.0])
    table = cosine_table(store, top_k=2)
    batch, result, count = mitigate_roots(store, table, [0, 1, 2, 3, 0], [10.0, 10.0, 10.0, 10.0, 1.0],
                                          quantile=0.7)
    assert count == 1 and batch.row[0] == batch.row[4]
    assert result.row[0] != result.row[4] and result.row[0] not in batch.row
    assert torch.equal(result.row[1:], batch.row[1:])


def test_never_written_roots_are_neither_stale_nor_blended():
    store = store_with(VECTORS, [0.0, 5.0, 5.0, 5.0], never_written=2)
    table = cosine_table(store, top_k=2)
    batch, result, count = mitigate_roots(store, table, [0, 1, 2, 3, 4, 5], [1.6e9] * 6, quantile=0.7)
    assert count == 1 and not torch.equal(result.mem[0], batch.mem[0])
    assert torch.equal(result.mem[1:], batch.mem[1:])
