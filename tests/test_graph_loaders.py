"""Loading event streams: the bundled real files, a round trip through every format, sorting, the TGL
converter script, and the synthetic generator."""
from __future__ import annotations

import gzip
import importlib.util
import lzma
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from graph import (
    BUILTIN_DATASETS,
    EventStream,
    chronological_split,
    detect_format,
    load_dataset,
    load_events,
    split_periods,
    synthetic_events,
)

REAL_DATASETS = [
    # fixture, events, nodes, unique timestamps, (smallest, largest) original id, detected format
    ("uci_events", 59_835, 1_899, 58_911, (2, 1900), "dyglib"),
    ("wikipedia_events", 157_474, 9_227, 152_757, (1, 9227), "jodie"),
    ("enron_events", 125_235, 184, 22_632, (1, 184), "dyglib"),
]


@pytest.mark.parametrize("fixture, num_events, num_nodes, unique_ts, id_range, fmt", REAL_DATASETS)
def test_real_dataset_matches_published_counts(request, fixture, num_events, num_nodes, unique_ts, id_range, fmt):
    events = request.getfixturevalue(fixture)
    assert (events.num_events, events.num_nodes, np.unique(events.t).size) == (num_events, num_nodes, unique_ts)
    assert events.src.dtype == events.dst.dtype == events.node_ids.dtype == np.int64
    assert events.t.dtype == np.float64 and np.all(np.diff(events.t) >= 0)
    assert np.array_equal(np.unique(np.concatenate([events.src, events.dst])), np.arange(num_nodes))
    assert (events.node_ids[0], events.node_ids[-1]) == id_range
    assert events.edge_feat is None and events.node_feat is None
    assert events.dim_edge_feat == events.dim_node_feat == 0
    assert detect_format(BUILTIN_DATASETS[events.name]) == fmt


def test_real_dataset_keeps_file_order_and_ids(uci_events):
    first = pd.read_csv(BUILTIN_DATASETS["uci"], nrows=5)
    assert np.array_equal(uci_events.node_ids[uci_events.src[:5]], first["u"].to_numpy())
    assert np.array_equal(uci_events.node_ids[uci_events.dst[:5]], first["i"].to_numpy())
    assert np.array_equal(uci_events.t[:5], first["ts"].to_numpy())


# --- writers of each on-disk format, from a stream whose ids are the original ids ---------------------

def _write_tgl(events: EventStream, directory: Path) -> Path:
    ext_roll = split_periods(events)
    table = pd.DataFrame({"src": events.src, "dst": events.dst, "time": events.t, "ext_roll": ext_roll,
                          "int_roll": np.zeros_like(ext_roll)})
    table.to_csv(directory / "edges.csv")
    torch.save(torch.from_numpy(events.edge_feat), directory / "edge_features.pt")
    torch.save(torch.from_numpy(events.node_feat), directory / "node_features.pt")
    return directory / "edges.csv"


def _write_dyglib(events: EventStream, directory: Path) -> Path:
    """DyGLib layout: 1-based ids and .npy features with an all-zero padding row 0."""
    table = pd.DataFrame({"u": events.src + 1, "i": events.dst + 1, "ts": events.t,
                          "label": 0.0, "idx": np.arange(1, events.num_events + 1)})
    table.to_csv(directory / "ml_toy.csv")
    np.save(directory / "ml_toy.npy", np.vstack([np.zeros((1, events.dim_edge_feat)), events.edge_feat]))
    np.save(directory / "ml_toy_node.npy", np.vstack([np.zeros((1, events.dim_node_feat)), events.node_feat]))
    return directory / "ml_toy.csv"


def _positional_table(events: EventStream) -> pd.DataFrame:
    columns = {"src": events.src, "dst": events.dst, "t": events.t}
    columns.update({f"f{j}": events.edge_feat[:, j] for j in range(events.dim_edge_feat)})
    return pd.DataFrame(columns)


def _write_jodie(events: EventStream, directory: Path) -> Path:
    _positional_table(events).to_csv(directory / "ml_toy.txt", sep=" ", header=False, index=False)
    return directory / "ml_toy.txt"


def _write_csv_with_header(events: EventStream, directory: Path) -> Path:
    _positional_table(events).to_csv(directory / "toy.csv", index=False)
    return directory / "toy.csv"


def _write_csv_without_header(events: EventStream, directory: Path) -> Path:
    _positional_table(events).to_csv(directory / "toy.csv", header=False, index=False)
    return directory / "toy.csv"


FORMAT_WRITERS = [
    # writer, detected format, offset of written ids, node features written
    (_write_tgl, "tgl", 0, True),
    (_write_dyglib, "dyglib", 1, True),
    (_write_jodie, "jodie", 0, False),
    (_write_csv_with_header, "csv", 0, False),
    (_write_csv_without_header, "csv", 0, False),
]


@pytest.fixture(scope="module")
def toy_events() -> EventStream:
    return synthetic_events(num_nodes=40, num_events=300, dim_edge_feat=3, dim_node_feat=2, seed=7)


def _assert_same_stream(loaded: EventStream, original: EventStream, id_offset: int, with_node_feat: bool) -> None:
    original_ids = loaded.node_ids - id_offset
    assert np.array_equal(original_ids[loaded.src], original.src)
    assert np.array_equal(original_ids[loaded.dst], original.dst)
    assert np.array_equal(loaded.t, original.t)
    np.testing.assert_allclose(loaded.edge_feat, original.edge_feat, rtol=1e-6)
    if with_node_feat:
        np.testing.assert_array_equal(loaded.node_feat, original.node_feat[original_ids])
    else:
        assert loaded.node_feat is None


@pytest.mark.parametrize("writer, fmt, id_offset, with_node_feat", FORMAT_WRITERS)
def test_each_format_round_trips_with_features(tmp_path, toy_events, writer, fmt, id_offset, with_node_feat):
    path = writer(toy_events, tmp_path)
    assert detect_format(path) == fmt
    loaded = load_events(path)
    _assert_same_stream(loaded, toy_events, id_offset, with_node_feat)
    _assert_same_stream(load_events(path, fmt=fmt), toy_events, id_offset, with_node_feat)


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".xz", lzma.compress)])
def test_compressed_files_read_like_plain_ones(tmp_path, toy_events, suffix, compress):
    plain = _write_dyglib(toy_events, tmp_path)
    packed = plain.with_name(plain.name + suffix)
    packed.write_bytes(compress(plain.read_bytes()))
    assert detect_format(packed) == "dyglib"
    _assert_same_stream(load_events(packed), toy_events, id_offset=1, with_node_feat=True)


def test_tgl_directory_loads_its_edges_and_ext_roll(tmp_path, toy_events):
    _write_tgl(toy_events, tmp_path)
    loaded = load_events(tmp_path)
    assert loaded.name == tmp_path.name
    assert np.array_equal(loaded.ext_roll, split_periods(toy_events))
    assert loaded.ext_roll.dtype == np.int8


def test_dyglib_edge_features_without_padding_row(tmp_path, toy_events):
    path = _write_dyglib(toy_events, tmp_path)
    np.save(tmp_path / "ml_toy.npy", toy_events.edge_feat)
    np.testing.assert_array_equal(load_events(path).edge_feat, toy_events.edge_feat)


def test_dataset_name_comes_from_file_name_unless_given(tmp_path, toy_events):
    path = _write_dyglib(toy_events, tmp_path)
    assert load_events(path).name == "toy"
    assert load_events(path, name="mine").name == "mine"
    assert load_dataset(str(path)).name == "toy"


def test_unsorted_input_is_sorted_stably_with_a_warning(tmp_path):
    times = [5.0, 1.0, 3.0, 1.0, 3.0, 0.5]
    rows = [f"{row},{row + 10},{t},{row}" for row, t in enumerate(times)]
    path = tmp_path / "unsorted.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="unsorted.csv"):
        loaded = load_events(path)
    file_row = loaded.edge_feat[:, 0].astype(int)
    assert list(file_row) == [5, 1, 3, 2, 4, 0]
    assert list(loaded.t) == sorted(times)
    assert np.array_equal(loaded.node_ids[loaded.src], file_row)
    assert np.array_equal(loaded.node_ids[loaded.dst], file_row + 10)


def test_sorted_input_loads_without_warning(tmp_path, toy_events, recwarn):
    load_events(_write_csv_without_header(toy_events, tmp_path))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# --- scripts/prepare_data.py ---------------------------------------------------------------------------

@pytest.fixture
def prepare_data(scripts_dir, monkeypatch):
    """The prepare_data script as a module, imported the way the script itself runs (scripts/ on sys.path)."""
    monkeypatch.syspath_prepend(str(scripts_dir))
    spec = importlib.util.spec_from_file_location("prepare_data", scripts_dir / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_converts_to_tgl_layout(tmp_path, toy_events, prepare_data, capsys):
    source = _write_dyglib(toy_events, tmp_path)
    out = tmp_path / "tgl"
    assert prepare_data.main(["--data", str(source), "--out", str(out), "--layout", "tgl"]) == 0
    assert "300 events" in capsys.readouterr().out
    assert (out / "edges.csv").read_text().splitlines()[0] == ",src,dst,time,ext_roll"
    converted = load_events(out)
    original = load_events(source)
    assert np.array_equal(converted.node_ids, np.arange(original.num_nodes))
    assert np.array_equal(converted.src, original.src) and np.array_equal(converted.dst, original.dst)
    assert np.array_equal(converted.t, original.t)
    np.testing.assert_array_equal(converted.edge_feat, original.edge_feat)
    np.testing.assert_array_equal(converted.node_feat, original.node_feat)
    assert np.array_equal(converted.ext_roll, split_periods(original))
    assert np.array_equal(chronological_split(converted).test, chronological_split(original).test)


def test_prepare_data_writes_a_memory_mapped_stream_read_like_the_file(tmp_path, toy_events, prepare_data, capsys):
    source = _write_dyglib(toy_events, tmp_path)
    out = tmp_path / "prepared"
    assert prepare_data.main(["--data", str(source), "--out", str(out), "--chunk-rows", "7", "--no-progress"]) == 0
    assert "300 events" in capsys.readouterr().out
    prepared, original = load_dataset(str(out)), load_events(source)
    for field in ("src", "dst", "t", "node_ids", "edge_feat", "node_feat"):
        assert np.array_equal(getattr(prepared, field), getattr(original, field)), field
    assert prepared.name == original.name and prepared.index is not None
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


# --- synthetic streams ---------------------------------------------------------------------------------

def _recent_partner_share(events: EventStream, window: int = 5) -> float:
    """Share of events whose destination is among the source's previous `window` destinations."""
    by_source = np.argsort(events.src, kind="stable")
    src, dst = events.src[by_source], events.dst[by_source]
    seen_recently = np.zeros(events.num_events, dtype=bool)
    for lag in range(1, window + 1):
        seen_recently[lag:] |= (src[lag:] == src[:-lag]) & (dst[lag:] == dst[:-lag])
    return float(seen_recently.mean())


def test_synthetic_stream_is_seeded_and_well_formed():
    events = synthetic_events(num_nodes=50, num_events=1000, dim_edge_feat=4, dim_node_feat=3, seed=3)
    again = synthetic_events(num_nodes=50, num_events=1000, dim_edge_feat=4, dim_node_feat=3, seed=3)
    other = synthetic_events(num_nodes=50, num_events=1000, dim_edge_feat=4, dim_node_feat=3, seed=4)
    assert np.array_equal(events.dst, again.dst) and np.array_equal(events.edge_feat, again.edge_feat)
    assert not np.array_equal(events.dst, other.dst)
    assert events.t.dtype == np.float64 and np.all(np.diff(events.t) >= 0)
    assert events.src.min() >= 0 and max(events.src.max(), events.dst.max()) < events.num_nodes == 50
    assert not np.any(events.src == events.dst)
    assert events.edge_feat.shape == (1000, 4) and events.node_feat.shape == (50, 3)
    assert events.edge_feat.dtype == events.node_feat.dtype == np.float32
    assert synthetic_events(num_events=10).edge_feat is None


def test_synthetic_activity_is_skewed_and_partners_repeat():
    events = synthetic_events(num_nodes=200, num_events=5000, seed=0)
    per_node = np.sort(np.bincount(events.src, minlength=events.num_nodes))[::-1]
    assert per_node[:20].sum() > 0.4 * events.num_events
    no_repeats = synthetic_events(num_nodes=200, num_events=5000, seed=0, repeat_prob=0.0)
    assert _recent_partner_share(events) > 0.5
    assert _recent_partner_share(events) > 2 * _recent_partner_share(no_repeats)
