"""T-CSR and temporal sampler against a brute-force pure-Python reference on random graphs."""
import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from sampler import TCSR, TemporalSampler

SEEDS = range(6)
NUM_NODES = 30
ISOLATED_NODES = 4  # the last ids never occur in an event: roots without any history
NUM_TIMES = 40  # few distinct times, so ties are everywhere


def random_events(seed: int, num_events: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time-sorted random event stream with many equal timestamps and some self-loops."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, NUM_NODES - ISOLATED_NODES, num_events)
    dst = rng.integers(0, NUM_NODES - ISOLATED_NODES, num_events)
    t = np.sort(rng.integers(0, NUM_TIMES, num_events)).astype(np.float64)
    return src, dst, t


def random_roots(seed: int, src: np.ndarray, t: np.ndarray, size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Roots at random times, at event times (ties), at the first event, and on isolated nodes."""
    rng = np.random.default_rng(seed + 1000)
    nodes = rng.integers(0, NUM_NODES, size)
    times = np.where(rng.random(size) < 0.5, rng.choice(t, size), rng.uniform(-1, NUM_TIMES + 1, size))
    nodes[:3] = [src[0], NUM_NODES - 1, src[-1]]
    times[:3] = [t[0], NUM_TIMES + 1, NUM_TIMES + 1]
    return nodes, times


def reference_history(src, dst, t, add_reverse=True):
    """Per node, its edges as (time, edge id, neighbour), sorted by time then edge id, by plain Python."""
    history = defaultdict(list)
    for eid, (u, v, time) in enumerate(zip(src.tolist(), dst.tolist(), t.tolist())):
        history[u].append((time, eid, v))
        if add_reverse:
            history[v].append((time, eid, u))
    return {node: sorted(edges, key=lambda edge: edge[:2]) for node, edges in history.items()}


def eligible(history, node, time):
    """The reference's edges of `node` strictly before `time`, newest first."""
    return [edge for edge in history.get(node, []) if edge[0] < time][::-1]


def edges_by_root(block):
    """Per destination node, its in-edges as (time, edge id, neighbour) in edge-id order."""
    src, dst = (x.tolist() for x in block.edges(order="eid"))
    src_ts, src_id = block.srcdata["ts"].tolist(), block.srcdata["ID"].tolist()
    grouped = defaultdict(list)
    for u, v, eid in zip(src, dst, block.edata["ID"].tolist()):
        grouped[v].append((src_ts[u], eid, src_id[u]))
    return [grouped[root] for root in range(block.num_dst_nodes())]


def assert_block_layout(block, roots, root_ts):
    """The contract's block layout: fields, dtypes, source order, edge order and dt."""
    num_dst, num_edges = block.num_dst_nodes(), block.num_edges()
    src, dst = block.edges(order="eid")
    assert block.num_src_nodes() == num_dst + num_edges
    assert block.dstdata["ID"].dtype == block.srcdata["ID"].dtype == block.edata["ID"].dtype == torch.int64
    assert block.dstdata["ts"].dtype == block.srcdata["ts"].dtype == torch.float64
    assert block.edata["dt"].dtype == torch.float32
    assert block.dstdata["ID"].tolist() == list(roots) and block.dstdata["ts"].tolist() == list(root_ts)
    assert torch.equal(block.srcdata["ID"][:num_dst], block.dstdata["ID"])
    assert torch.equal(block.srcdata["ts"][:num_dst], block.dstdata["ts"])
    assert torch.equal(src, torch.arange(num_dst, num_dst + num_edges))
    assert torch.all(dst[1:] >= dst[:-1]), "edges grouped by root"
    expected_dt = (block.dstdata["ts"][dst] - block.srcdata["ts"][src]).to(torch.float32)
    assert torch.equal(block.edata["dt"], expected_dt)
    assert torch.all(block.edata["dt"] > 0), "no sampled edge at or after its root's time"


def assert_blocks_equal(first, second):
    """Same graph structure and same data in every field."""
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert (a.num_src_nodes(), a.num_dst_nodes()) == (b.num_src_nodes(), b.num_dst_nodes())
        assert all(torch.equal(x, y) for x, y in zip(a.edges(order="eid"), b.edges(order="eid")))
        for ours, theirs in ((a.srcdata, b.srcdata), (a.dstdata, b.dstdata), (a.edata, b.edata)):
            assert set(ours.keys()) == set(theirs.keys())
            assert all(torch.equal(ours[key], theirs[key]) for key in ours.keys())


@pytest.mark.parametrize("add_reverse", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_tcsr_segments_match_reference(seed, add_reverse):
    src, dst, t = random_events(seed)
    tcsr = TCSR.from_events(src, dst, t, NUM_NODES, add_reverse=add_reverse)
    history = reference_history(src, dst, t, add_reverse)
    assert tcsr.indptr.dtype == np.int64 and tcsr.ts.dtype == np.float64
    assert tcsr.nbr.dtype == tcsr.eid.dtype == np.int32  # compact: every id fits
    assert tcsr.num_nodes == NUM_NODES and tcsr.indptr[-1] == len(src) * (2 if add_reverse else 1)
    for node in range(NUM_NODES):
        segment = slice(tcsr.indptr[node], tcsr.indptr[node + 1])
        stored = list(zip(tcsr.ts[segment].tolist(), tcsr.eid[segment].tolist(), tcsr.nbr[segment].tolist()))
        assert stored == history.get(node, [])


def test_tcsr_orders_ties_by_edge_id_whatever_the_input_order():
    src, dst, t = random_events(seed=7)
    shuffled = np.random.default_rng(0).permutation(len(src))
    in_order = TCSR.from_events(src, dst, t, NUM_NODES)
    out_of_order = TCSR.from_events(src[shuffled], dst[shuffled], t[shuffled], NUM_NODES, eid=shuffled)
    for field in ("indptr", "nbr", "ts", "eid"):
        assert np.array_equal(getattr(in_order, field), getattr(out_of_order, field))


def test_tcsr_keeps_given_edge_ids():
    src, dst, t = random_events(seed=3)
    default_ids = TCSR.from_events(src, dst, t, NUM_NODES)
    offset_ids = TCSR.from_events(src, dst, t, NUM_NODES, eid=np.arange(len(src)) + 1000)
    assert np.array_equal(offset_ids.eid, default_ids.eid + 1000)
    assert np.array_equal(offset_ids.nbr, default_ids.nbr) and np.array_equal(offset_ids.ts, default_ids.ts)


@pytest.mark.parametrize(
    "events, message",
    [
        (([0, 1], [1], [0.0, 1.0]), "equal length"),
        (([0, 5], [1, 1], [0.0, 1.0]), r"src node ids must lie in \[0, 5\)"),
        (([0, 1], [-1, 1], [0.0, 1.0]), "dst node ids"),
        (([0, 1], [1, 1], [0.0, np.nan]), "finite"),
    ],
)
def test_tcsr_rejects_malformed_events(events, message):
    with pytest.raises(ValueError, match=message):
        TCSR.from_events(*events, num_nodes=5)


@pytest.mark.parametrize("seed", SEEDS)
def test_segments_before_are_the_edges_strictly_before(seed):
    src, dst, t = random_events(seed)
    tcsr = TCSR.from_events(src, dst, t, NUM_NODES)
    history = reference_history(src, dst, t)
    nodes, times = random_roots(seed, src, t)
    start, end = tcsr.segments_before(nodes, times)
    assert np.array_equal(start, tcsr.indptr[nodes])
    assert (end - start).tolist() == [len(eligible(history, v, time)) for v, time in zip(nodes, times)]


@pytest.mark.parametrize("add_reverse", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_recent_one_layer_matches_reference(seed, add_reverse):
    src, dst, t = random_events(seed)
    history = reference_history(src, dst, t, add_reverse)
    roots, root_ts = random_roots(seed, src, t)
    sampler = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES, add_reverse=add_reverse), [5])
    (block,) = sampler.sample(roots, root_ts)
    assert_block_layout(block, roots, root_ts)
    assert edges_by_root(block) == [eligible(history, v, time)[:5] for v, time in zip(roots, root_ts)]


def test_roots_without_history_have_no_edges():
    src, dst, t = random_events(seed=0)
    sampler = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [5])
    roots = np.array([src[0], dst[0], NUM_NODES - 1, NUM_NODES - 2])
    (block,) = sampler.sample(roots, np.array([t[0], t[0], NUM_TIMES + 1, 0.0]))
    assert block.num_edges() == 0 and block.num_src_nodes() == len(roots)


@pytest.mark.parametrize("strategy", ["recent", "uniform"])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_two_layers_chain_and_match_reference(seed, strategy):
    src, dst, t = random_events(seed)
    history = reference_history(src, dst, t)
    roots, root_ts = random_roots(seed, src, t)
    blocks = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [3, 4], strategy).sample(roots, root_ts)
    assert len(blocks) == 2
    assert blocks[0].num_dst_nodes() == blocks[1].num_src_nodes()
    assert torch.equal(blocks[0].dstdata["ID"], blocks[1].srcdata["ID"])
    assert torch.equal(blocks[0].dstdata["ts"], blocks[1].srcdata["ts"])
    layer_roots = (blocks[1].srcdata["ID"].numpy(), blocks[1].srcdata["ts"].numpy()), (roots, root_ts)
    for block, fanout, (nodes, times) in zip(blocks, [3, 4], layer_roots):
        assert_block_layout(block, nodes, times)
        for edges, v, time in zip(edges_by_root(block), nodes, times):
            allowed = eligible(history, v, time)
            if strategy == "recent":
                assert edges == allowed[:fanout]
            else:
                assert len(edges) == (fanout if allowed else 0) and set(edges) <= set(allowed)


def test_fanout_zero_gives_edgeless_block_with_sources_equal_to_destinations():
    src, dst, t = random_events(seed=1)
    roots, root_ts = random_roots(1, src, t)
    for fanouts in ([0], [0, 0]):
        blocks = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), fanouts).sample(roots, root_ts)
        for block in blocks:
            assert_block_layout(block, roots, root_ts)
            assert block.num_edges() == 0 and block.num_src_nodes() == block.num_dst_nodes() == len(roots)


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_draws_only_eligible_edges_newest_first(seed):
    src, dst, t = random_events(seed)
    history = reference_history(src, dst, t)
    roots, root_ts = random_roots(seed, src, t)
    (block,) = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [6], "uniform").sample(roots, root_ts)
    assert_block_layout(block, roots, root_ts)
    for edges, v, time in zip(edges_by_root(block), roots, root_ts):
        allowed = eligible(history, v, time)
        assert len(edges) == (6 if allowed else 0)
        assert set(edges) <= set(allowed)
        assert edges == sorted(edges, key=allowed.index), "newest first, in the reference's order"


def test_uniform_is_deterministic_given_the_seed():
    src, dst, t = random_events(seed=2)
    roots, root_ts = random_roots(2, src, t)
    sampler = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [8, 8], "uniform", seed=5)
    assert_blocks_equal(sampler.sample(roots, root_ts, seed=11), sampler.sample(roots, root_ts, seed=11))
    assert_blocks_equal(sampler.sample(roots, root_ts), sampler.sample(roots, root_ts, seed=5))
    first, other = sampler.sample(roots, root_ts, seed=11), sampler.sample(roots, root_ts, seed=12)
    assert not torch.equal(first[-1].edata["ID"], other[-1].edata["ID"])


def test_uniform_draws_are_spread_evenly_over_eligible_edges():
    src, dst, t = np.zeros(5, dtype=np.int64), np.arange(1, 6), np.arange(5, dtype=np.float64)
    sampler = TemporalSampler(TCSR.from_events(src, dst, t, num_nodes=6), [4000], "uniform")
    (block,) = sampler.sample(np.array([0]), np.array([4.0]))
    counts = Counter(block.edata["ID"].tolist())
    assert set(counts) == {0, 1, 2, 3} and all(abs(n - 1000) < 150 for n in counts.values())


@pytest.mark.parametrize("strategy", ["recent", "uniform"])
def test_batches_sampled_out_of_order_give_the_same_blocks(strategy):
    src, dst, t = random_events(seed=4)
    sampler = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [4, 3], strategy)
    rows = [slice(begin, begin + 50) for begin in (0, 100, 200)]
    batches = [(np.concatenate([src[r], dst[r]]), np.tile(t[r], 2)) for r in rows]
    in_order = [sampler.sample(roots, times, seed=i) for i, (roots, times) in enumerate(batches)]
    for i in (2, 0, 1):
        assert_blocks_equal(sampler.sample(*batches[i], seed=i), in_order[i])


def test_dt_is_exact_for_unix_timestamps():
    base = 1.6e9  # float32 cannot tell base from base + 0.5
    tcsr = TCSR.from_events([0, 0], [1, 2], [base, base + 0.25], num_nodes=3)
    (block,) = TemporalSampler(tcsr, [2]).sample(np.array([0]), np.array([base + 0.5]))
    assert block.edata["dt"].tolist() == [0.25, 0.5]
    assert block.srcdata["ts"].tolist() == [base + 0.5, base + 0.25, base]


def test_duplicate_roots_are_kept_in_order():
    src, dst, t = random_events(seed=5)
    roots, root_ts = np.array([src[10], src[10], dst[10]]), np.full(3, t[-1] + 1)
    (block,) = TemporalSampler(TCSR.from_events(src, dst, t, NUM_NODES), [2]).sample(roots, root_ts)
    assert_block_layout(block, roots, root_ts)
    first, second, _ = edges_by_root(block)
    assert first == second and len(first) == 2


@pytest.mark.parametrize(
    "fanouts, strategy, message",
    [([10], "latest", "unknown sampling strategy"), ([], "recent", "fanouts"), ([10, -1], "recent", "fanouts")],
)
def test_sampler_rejects_bad_settings(fanouts, strategy, message):
    tcsr = TCSR.from_events([0], [1], [0.0], num_nodes=2)
    with pytest.raises(ValueError, match=message):
        TemporalSampler(tcsr, fanouts, strategy)


@pytest.mark.parametrize(
    "roots, root_ts, message",
    [
        ([0, 1], [1.0], "equal length"),
        ([0, 2], [1.0, 1.0], r"root ids must lie in \[0, 2\)"),
        ([-1], [1.0], "root ids"),
    ],
)
def test_sample_rejects_bad_roots(roots, root_ts, message):
    sampler = TemporalSampler(TCSR.from_events([0], [1], [0.0], num_nodes=2), [1])
    with pytest.raises(ValueError, match=message):
        sampler.sample(np.array(roots), np.array(root_ts))


def load_benchmark_script():
    """scripts/benchmark.py as a module (scripts/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_sampler_reports_every_case(tmp_path, capsys):
    src, dst, t = random_events(seed=0)
    data = tmp_path / "events.csv"
    data.write_text("src,dst,t\n" + "".join(f"{u},{v},{time}\n" for u, v, time in zip(src, dst, t)))
    out = tmp_path / "bench.json"
    args = ["sampler", "--data", str(data), "--batch", "50", "--repeat", "2", "--out", str(out)]
    assert load_benchmark_script().main(args) == 0
    results = json.loads(out.read_text())
    rows = {row["case"]: row for row in results["results"]}
    assert set(rows) == {"find recent 10", "find uniform 10", "sample recent 10", "sample recent 10x10",
                         "sample uniform 10"}
    assert all(row["roots"] == 3 * len(src) and row["roots_per_s"] > 0 for row in rows.values())
    assert rows["find recent 10"]["edges"] == rows["sample recent 10"]["edges"]
    assert rows["find uniform 10"]["edges"] == rows["sample uniform 10"]["edges"]
    assert "sample recent 10x10" in capsys.readouterr().out


def test_benchmark_reports_a_missing_data_file_as_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    code = load_benchmark_script().main(["sampler", "--data", str(missing), "--out", str(tmp_path / "b.json")])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and "missing.csv" in error and error.count("\n") == 1
