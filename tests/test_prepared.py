"""Streams on disk: the linear-time T-CSR against the sorted reference, the prepared layout against the same
stream in RAM (columns, index, batches, features, test AP), the threaded feature reader, and prepared
directories that are incomplete or damaged."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import DataError
from graph.datasets import load_dataset
from graph.events import EventStream, event_stream_from_raw
from graph.prepared import PreparedWriter, advise_access, load_prepared
from graph.synthetic import synthetic_events
from graph.temporal_index import build_index
from pipeline.run.setup import build_setup, training_stages
from pipeline.run.trainer import train
from pipeline.stages.features import InMemoryFeatures, MappedFeatures
from sampler import TCSR
from small import small_config


def sorted_reference(src, dst, t, num_nodes, eid, add_reverse):
    """The T-CSR as a whole-stream lexsort by (owner, time, edge id) builds it."""
    if add_reverse:
        owner, nbr = np.stack([src, dst], 1).ravel(), np.stack([dst, src], 1).ravel()
        t, eid = np.repeat(t, 2), np.repeat(eid, 2)
    else:
        owner, nbr = src, dst
    order = np.lexsort((eid, t, owner))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=num_nodes))])
    return indptr, nbr[order], t[order], eid[order]


def random_stream(seed, num_events=400, num_nodes=25):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 30, num_events)).astype(np.float64)  # many ties
    return rng.integers(0, num_nodes, num_events), rng.integers(0, num_nodes, num_events), t, num_nodes


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("add_reverse", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_linear_index_equals_sorted_reference(seed, add_reverse, chunk):
    src, dst, t, num_nodes = random_stream(seed)
    eid = np.arange(len(src)) * 3 + 5  # ascending, not the row index
    index = build_index(src, dst, t, num_nodes, eid=eid, add_reverse=add_reverse, chunk=chunk)
    for ours, reference in zip((index.indptr, index.nbr, index.ts, index.eid),
                               sorted_reference(src, dst, t, num_nodes, eid, add_reverse)):
        assert np.array_equal(ours, reference)


def test_linear_index_refuses_a_stream_out_of_time_order():
    src, dst, t, num_nodes = random_stream(0)
    with pytest.raises(ValueError, match="time, edge id"):
        build_index(src, dst, t[::-1].copy(), num_nodes)


def write_prepared(out: Path, events: EventStream, chunk: int, order: np.ndarray | None = None) -> None:
    """`events` written through the writer in chunks of `chunk` rows (in `order`, default time order),
    with the ids the file had (`node_ids`)."""
    order = np.arange(events.num_events) if order is None else order
    node_feat = None
    if events.node_feat is not None:
        node_feat = np.zeros((int(events.node_ids.max()) + 1, events.dim_node_feat), np.float32)
        node_feat[events.node_ids] = events.node_feat
    with PreparedWriter(out, events.name) as writer:
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]
            writer.append(events.node_ids[events.src[rows]], events.node_ids[events.dst[rows]], events.t[rows],
                          None if events.edge_feat is None else events.edge_feat[rows])
        writer.finish(node_feat)


@pytest.fixture(scope="module")
def featured():
    """A stream with edge and node features and file ids that are not 0..N-1."""
    events = synthetic_events(num_nodes=40, num_events=1500, dim_edge_feat=6, dim_node_feat=3, seed=2)
    return event_stream_from_raw("featured", events.src * 7 + 3, events.dst * 7 + 3, np.round(events.t / 40),
                                 "featured", edge_feat=events.edge_feat,
                                 raw_node_feat=np.repeat(events.node_feat, 7, axis=0)[:7 * 40 + 3 + 1])


def assert_same_stream(prepared: EventStream, events: EventStream) -> None:
    for field in ("src", "dst", "t", "node_ids", "edge_feat", "node_feat"):
        assert np.array_equal(getattr(prepared, field), getattr(events, field)), field
    assert prepared.num_nodes == events.num_nodes and prepared.src.dtype == np.int32
    reference = TCSR.from_events(events.src, events.dst, events.t, events.num_nodes)
    for field in ("indptr", "nbr", "ts", "eid"):
        assert np.array_equal(getattr(prepared.index, field), getattr(reference, field)), field


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_prepared_stream_equals_the_stream_in_ram(featured, tmp_path, chunk):
    write_prepared(tmp_path / "stream", featured, chunk)
    assert_same_stream(load_dataset(str(tmp_path / "stream")), featured)
    assert not [path for path in tmp_path.iterdir() if path.name != "stream"], "temporary files left behind"


def test_unsorted_input_is_sorted_stably_like_the_loader(featured, tmp_path):
    shuffled = np.random.default_rng(0).permutation(featured.num_events)
    write_prepared(tmp_path / "stream", featured, chunk=100, order=shuffled)
    raw = featured.node_ids
    with pytest.warns(UserWarning, match="not sorted"):
        in_ram = event_stream_from_raw("featured", raw[featured.src[shuffled]], raw[featured.dst[shuffled]],
                                       featured.t[shuffled], "x", edge_feat=featured.edge_feat[shuffled])
    prepared = load_prepared(tmp_path / "stream")
    for field in ("src", "dst", "t", "edge_feat"):
        assert np.array_equal(getattr(prepared, field), getattr(in_ram, field)), field


def test_interrupted_preparation_leaves_nothing(featured, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with PreparedWriter(tmp_path / "stream", "x") as writer:
            writer.append(featured.src[:10], featured.dst[:10], featured.t[:10])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_overwrite(featured, tmp_path):
    write_prepared(tmp_path / "stream", featured, chunk=500)
    with pytest.raises(DataError, match="already exists"):
        write_prepared(tmp_path / "stream", featured, chunk=500)
    assert load_prepared(tmp_path / "stream").num_events == featured.num_events


def damage(directory: Path, how: str) -> None:
    if how == "no meta":
        (directory / "meta.json").unlink()
    elif how == "truncated":
        path = directory / "edge_feat.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "missing array":
        (directory / "index_ts.npy").unlink()
    elif how == "shape":
        meta = json.loads((directory / "meta.json").read_text())
        meta["arrays"]["t"]["shape"] = [5]
        (directory / "meta.json").write_text(json.dumps(meta))
    elif how == "not json":
        (directory / "meta.json").write_text("{")


@pytest.mark.parametrize("how, message", [
    ("no meta", "incomplete prepared stream"), ("truncated", "truncated"), ("missing array", "missing"),
    ("shape", "says"), ("not json", "cannot read"),
])
def test_damaged_prepared_directory_is_refused_in_one_line(featured, tmp_path, how, message):
    write_prepared(tmp_path / "stream", featured, chunk=500)
    damage(tmp_path / "stream", how)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(tmp_path / "stream"))
    assert "\n" not in str(error.value) and "stream" in str(error.value)


def test_temporary_directory_of_a_preparation_is_refused(featured, tmp_path):
    partial = tmp_path / ".stream.partial-123"
    partial.mkdir()
    (partial / "t.npy").write_bytes(b"")
    with pytest.raises(DataError, match="incomplete prepared stream"):
        load_dataset(str(partial))


def test_mapped_features_gather_like_rows_in_ram(tmp_path):
    table = np.random.default_rng(0).standard_normal((5000, 7)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    mapped = MappedFeatures(np.load(tmp_path / "table.npy", mmap_mode="r"), readers=4, pin=False)
    in_ram = InMemoryFeatures(table, torch.device("cpu"))
    rng = np.random.default_rng(1)
    ids = [torch.from_numpy(rng.integers(0, 5000, size)) for size in (0, 1, 3000, 700)]  # repeats, any order
    for ours, reference in zip(mapped.gather(ids), in_ram.gather(ids)):
        assert torch.equal(ours, reference)


def train_in(out: Path, cfg, events: EventStream) -> dict:
    out.mkdir()
    return train(cfg, events, out, torch.device("cpu"), seed=0, show_progress=False)


@pytest.mark.parametrize("mode", ["sequential", "presample"])
def test_prepared_stream_trains_batch_for_batch_like_ram(featured, tmp_path, mode):
    write_prepared(tmp_path / "stream", featured, chunk=256)
    prepared = load_prepared(tmp_path / "stream")
    cfg = small_config(pipeline={"mode": mode}, train={"epochs": 1})
    contexts = []
    for events in (featured, prepared):
        stages = training_stages(build_setup(cfg, events, torch.device("cpu"), seed=0), epoch=0)
        batch = []
        for i in (0, len(stages.batches) // 2, len(stages.batches) - 1):
            ctx = stages.sample(i)
            stages.fetch_features(i, ctx)
            batch.append((ctx.roots, [b.edata["ID"] for b in ctx.blocks], ctx.edge_feat, ctx.node_feat,
                          ctx.root_edge_feat))
        contexts.append(batch)
    for ours, reference in zip(*contexts):
        assert np.array_equal(ours[0], reference[0])
        for a, b in zip(ours[1] + ours[2] + [ours[3], ours[4]], reference[1] + reference[2] + [reference[3], reference[4]]):
            assert torch.equal(a, b)
    results = [train_in(tmp_path / f"run{k}", cfg, events) for k, events in enumerate((featured, prepared))]
    assert results[0]["test_ap"] == results[1]["test_ap"]


def test_uci_prepared_keeps_test_ap(uci_events, tmp_path):
    write_prepared(tmp_path / "uci", uci_events, chunk=20_000)
    cfg = small_config(pipeline={"mode": "sequential"}, train={"epochs": 1, "batch_size": 600},
                       eval={"batch_size": 600})
    results = [train_in(tmp_path / f"run{k}", cfg, events)
               for k, events in enumerate((uci_events, load_prepared(tmp_path / "uci")))]
    assert results[0]["test_ap"] == results[1]["test_ap"]


def test_prepare_data_stops_at_a_bad_row_of_a_later_chunk_and_leaves_nothing(tmp_path, scripts_dir):
    lines = [f"{i % 5},{(i + 1) % 5},{i}" for i in range(50)]
    lines[37] = "1,2,oops"
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, str(scripts_dir / "prepare_data.py"), "--data", str(tmp_path / "events.csv"),
                             "--out", str(tmp_path / "out"), "--chunk-rows", "10", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "events.csv: line 38 (data row 38)" in result.stderr and "Traceback" not in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["events.csv"]


def mapping_flags(path: Path) -> list[str]:
    """The VmFlags of this process's mappings of `path` (Linux /proc/self/smaps)."""
    flags, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.startswith("VmFlags:") and ":" not in line.split()[0]:
            current = line.split()[-1] if len(line.split()) >= 6 else None
        elif line.startswith("VmFlags:") and current == str(path):
            flags.append(line)
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_feature_file_is_read_page_by_page_only_when_rows_are_scattered(featured, tmp_path):
    write_prepared(tmp_path / "stream", featured, chunk=500)
    prepared = load_prepared(tmp_path / "stream")
    path = (tmp_path / "stream" / "edge_feat.npy").resolve()
    advise_access(prepared.edge_feat, random=True)
    assert mapping_flags(path) and all(" rr" in flags for flags in mapping_flags(path))
    advise_access(prepared.edge_feat, random=False)
    assert not any(" rr" in flags for flags in mapping_flags(path))
