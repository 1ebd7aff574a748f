"""Chunked reading (`iter_event_chunks`): for every format, the chunks of any size put together are the
columns `load_events` reads, an error in a later chunk names the same line and data row as a whole read,
and edge feature files are mapped and taken row by row, never read whole."""
from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import DataError
from graph import load_events, loaders, synthetic_events
from graph.events import EventStream
from graph.loaders import EventChunks, RawEvents, iter_event_chunks, parse_columns

NUM_EVENTS = 25
CHUNK_ROWS = (1, 3, 7, NUM_EVENTS + 10)
BAD_ROW = 9  # 1-based data row of the bad cell: chunks of 1, 4 and 8 rows start there, chunks of 3 end there


@pytest.fixture(scope="module")
def stream() -> EventStream:
    """Time-sorted events (a whole read keeps their file order) with edge and node features."""
    return synthetic_events(num_nodes=12, num_events=NUM_EVENTS, dim_edge_feat=3, dim_node_feat=2, seed=3)


def _rows(stream: EventStream, sep: str, id_offset: int = 0, features: bool = True) -> list[str]:
    return [sep.join([str(s + id_offset), str(d + id_offset), repr(float(t)),
                      *(repr(float(x)) for x in (feat if features else ()))])
            for s, d, t, feat in zip(stream.src, stream.dst, stream.t, stream.edge_feat)]


def write_csv(stream: EventStream, folder: Path, header: bool = True) -> Path:
    path = folder / "events.csv"
    head = ["src,dst,t,f0,f1,f2"] if header else []
    path.write_text("\n".join(head + _rows(stream, ",")) + "\n")
    return path


def write_jodie(stream: EventStream, folder: Path) -> Path:
    path = folder / "events.txt"
    path.write_text("\n".join(_rows(stream, " ")) + "\n")
    return path


def write_dyglib(stream: EventStream, folder: Path) -> Path:
    """DyGLib's layout: 1-based ids, an `idx` column, .npy features with a padding row 0."""
    path = folder / "ml_toy.csv"
    rows = [f"{i},{row},0,{i + 1}" for i, row in enumerate(_rows(stream, ",", id_offset=1, features=False))]
    path.write_text("\n".join([",u,i,ts,label,idx", *rows]) + "\n")
    np.save(folder / "ml_toy.npy", np.vstack([np.zeros((1, 3)), stream.edge_feat]))
    np.save(folder / "ml_toy_node.npy", np.vstack([np.zeros((1, 2)), stream.node_feat]))
    return path


def write_tgl(stream: EventStream, folder: Path, zip_format: bool = True) -> Path:
    rows = [f"{i},{row},{i % 3},0" for i, row in enumerate(_rows(stream, ",", features=False))]
    (folder / "edges.csv").write_text("\n".join([",src,dst,time,ext_roll,int_roll", *rows]) + "\n")
    torch.save(torch.from_numpy(stream.edge_feat), folder / "edge_features.pt",
               _use_new_zipfile_serialization=zip_format)
    torch.save(torch.from_numpy(stream.node_feat), folder / "node_features.pt")
    return folder


def write_xz(stream: EventStream, folder: Path) -> Path:
    path = folder / "events.csv.xz"
    path.write_bytes(lzma.compress(write_csv(stream, folder).read_bytes()))
    return path


def write_shuffled_columns(stream: EventStream, folder: Path) -> Path:
    """Columns in another order than src, dst, t, with one that is not used."""
    path = folder / "ratings.csv"
    rows = [f"{t},5,{d},{f[0]!r},{s}" for s, d, t, f in zip(stream.src, stream.dst, stream.t.tolist(),
                                                         stream.edge_feat.tolist())]
    path.write_text("\n".join(["time,rating,to,weight,from", *rows]) + "\n")
    return path


SHUFFLED = "src=from,dst=2,t=time,feat=weight"
LAYOUTS = [
    # writer, read with fmt, --columns, expected format
    (write_csv, None, None, "csv"),
    (lambda stream, folder: write_csv(stream, folder, header=False), None, None, "csv"),
    (write_jodie, "jodie", None, "jodie"),
    (write_dyglib, None, None, "dyglib"),
    (write_tgl, None, None, "tgl"),
    (lambda stream, folder: write_tgl(stream, folder, zip_format=False), None, None, "tgl"),
    (write_xz, None, None, "csv"),
    (write_shuffled_columns, None, SHUFFLED, "csv"),
]
LAYOUT_IDS = ["csv", "csv-headerless", "jodie", "dyglib", "tgl", "tgl-legacy-pt", "csv-xz", "columns"]


def read_chunks(path: Path, chunk_rows: int, **kwargs) -> tuple[EventChunks, list[RawEvents]]:
    with iter_event_chunks(path, chunk_rows=chunk_rows, **kwargs) as chunks:
        return chunks, list(chunks)


def joined(chunks: list[RawEvents], name: str) -> np.ndarray | None:
    parts = [getattr(chunk, name) for chunk in chunks]
    return None if parts[0] is None else np.concatenate(parts)


@pytest.mark.parametrize("chunk_rows", CHUNK_ROWS)
@pytest.mark.parametrize("writer, fmt, spec, expected_format", LAYOUTS, ids=LAYOUT_IDS)
def test_chunks_put_together_are_the_whole_read(tmp_path, stream, writer, fmt, spec, expected_format, chunk_rows):
    path = writer(stream, tmp_path)
    columns = parse_columns(spec) if spec else None
    whole = load_events(path, fmt=fmt, columns=columns)
    file_ids = whole.node_ids  # the stream is sorted, so the whole read keeps the file's order
    reader, chunks = read_chunks(path, chunk_rows, fmt=fmt, columns=columns)

    assert (reader.format, reader.name) == (expected_format, whole.name)
    assert [len(chunk.t) for chunk in chunks] == [min(chunk_rows, NUM_EVENTS - start)
                                                  for start in range(0, NUM_EVENTS, chunk_rows)]
    assert all(chunk.node_feat is None for chunk in chunks)
    src, dst, t = joined(chunks, "src"), joined(chunks, "dst"), joined(chunks, "t")
    assert src.dtype == dst.dtype == np.int64 and t.dtype == np.float64
    np.testing.assert_array_equal(src, file_ids[whole.src])
    np.testing.assert_array_equal(dst, file_ids[whole.dst])
    np.testing.assert_array_equal(t, whole.t)
    edge_feat = joined(chunks, "edge_feat")
    assert edge_feat.dtype == np.float32 and edge_feat.ndim == 2
    np.testing.assert_array_equal(edge_feat, whole.edge_feat)
    ext_roll = joined(chunks, "ext_roll")
    if whole.ext_roll is None:
        assert ext_roll is None
    else:
        assert ext_roll.dtype == np.int8
        np.testing.assert_array_equal(ext_roll, whole.ext_roll)
    if whole.node_feat is None:
        assert reader.node_feat is None
    else:
        np.testing.assert_array_equal(reader.node_feat[file_ids], whole.node_feat)


def test_edge_feature_files_are_mapped_not_read_whole(tmp_path, stream, monkeypatch):
    tgl, dyglib = tmp_path / "tgl", tmp_path / "dyglib"
    tgl.mkdir()
    dyglib.mkdir()
    paths = [write_tgl(stream, tgl), write_dyglib(stream, dyglib)]
    read_whole: list[Path] = []
    real_read = loaders._read_matrix

    def recording_read(path: Path) -> np.ndarray | None:
        read_whole.append(path)
        return real_read(path)

    monkeypatch.setattr(loaders, "_read_matrix", recording_read)
    for path in paths:
        read_chunks(path, chunk_rows=4)
    assert read_whole == [tgl / "node_features.pt", dyglib / "ml_toy_node.npy"]


def test_the_file_is_read_as_chunks_are_taken(tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    path.write_text("src,dst,t\n" + "".join(f"{i % 97},{i % 89},{i}.0\n" for i in range(400_000)))
    handles = []
    real_open = loaders.open_regular_file

    def recording_open(target):
        handles.append(real_open(target))
        return handles[-1]

    monkeypatch.setattr(loaders, "open_regular_file", recording_open)
    with iter_event_chunks(path, chunk_rows=1000) as chunks:
        first = next(iter(chunks))
        assert len(first.t) == 1000 and handles[0].tell() < path.stat().st_size / 2


# --- errors -----------------------------------------------------------------------------------------------

def whole_error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_events(path, **kwargs)
    return str(err.value)


def chunked_error(path: Path, chunk_rows: int, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        read_chunks(path, chunk_rows, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path.parent if path.is_file() else path)), message
    return message


def with_bad_cell(path: Path, cell: int, value: str, sep: str = ",") -> Path:
    """`path` with the `cell`-th field of data row BAD_ROW replaced by `value`."""
    lines = path.read_text().splitlines()
    row = BAD_ROW - (1 if lines[0][0].isdigit() else 0)  # index of the line, after a header line
    fields = lines[row].split(sep)
    fields[cell] = value
    lines[row] = sep.join(fields)
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_CELLS = [
    # name, writer, field, value, separator, expected fragments (the line is one more with a header)
    ("NaN time", lambda s, f: write_csv(s, f, header=False), 2, "nan", ",",
     [f"line {BAD_ROW} (data row {BAD_ROW}), column 3: timestamp is not a finite number"]),
    ("negative id", write_jodie, 1, "-4", " ", [f"line {BAD_ROW} (data row {BAD_ROW}), column 2", "negative"]),
    ("non-numeric id", write_dyglib, 1, "bob", ",",
     [f"line {BAD_ROW + 1} (data row {BAD_ROW}), column 2 ('u')", "'bob'"]),
    ("bad ext_roll", write_tgl, 4, "7", ",",
     [f"line {BAD_ROW + 1} (data row {BAD_ROW}), column 5 ('ext_roll')", "0, 1 or 2"]),
    ("feature too large", write_csv, 4, "1e300", ",",
     [f"line {BAD_ROW + 1} (data row {BAD_ROW}), column 5 ('f1')", "does not fit a float32"]),
]


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 8])
@pytest.mark.parametrize("case, writer, cell, value, sep, fragments", BAD_CELLS, ids=[c[0] for c in BAD_CELLS])
def test_a_bad_cell_in_a_later_chunk_names_its_line_and_data_row(tmp_path, stream, case, writer, cell, value, sep,
                                                                 fragments, chunk_rows):
    path = writer(stream, tmp_path)
    with_bad_cell(path / "edges.csv" if path.is_dir() else path, cell, value, sep)
    message = whole_error(path)
    for fragment in fragments:
        assert fragment in message, message
    assert chunked_error(path, chunk_rows) == message


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 8])
@pytest.mark.parametrize("writer, feature_file, file_row", [
    (write_tgl, "edge_features.pt", BAD_ROW - 1),
    (write_dyglib, "ml_toy.npy", BAD_ROW),  # the matrix's row: after DyGLib's padding row 0
], ids=["tgl", "dyglib"])
def test_a_bad_side_file_feature_names_its_row_in_the_file(tmp_path, stream, writer, feature_file, file_row,
                                                           chunk_rows):
    path = writer(stream, tmp_path)
    feature_path = tmp_path / feature_file
    if feature_path.suffix == ".pt":
        matrix = torch.load(feature_path)
        matrix[file_row, 1] = float("inf")
        torch.save(matrix, feature_path)
    else:
        matrix = np.load(feature_path)
        matrix[file_row, 1] = np.nan
        np.save(feature_path, matrix)
    message = whole_error(path)
    assert f"{feature_path}: row {file_row}, column 1: feature is not a finite float32" in message
    assert chunked_error(path, chunk_rows) == message


def test_a_bad_dyglib_padding_row_is_refused_like_a_whole_read(tmp_path, stream):
    path = write_dyglib(stream, tmp_path)
    matrix = np.load(tmp_path / "ml_toy.npy")
    matrix[0, 2] = np.inf
    np.save(tmp_path / "ml_toy.npy", matrix)
    assert chunked_error(path, 4) == whole_error(path)


@pytest.mark.parametrize("chunk_rows", [4, NUM_EVENTS + 10])
@pytest.mark.parametrize("extra_rows", [1, 2])
def test_an_edge_feature_file_with_rows_left_over_is_refused_like_a_whole_read(tmp_path, stream, extra_rows,
                                                                               chunk_rows):
    path = write_tgl(stream, tmp_path)
    torch.save(torch.zeros(NUM_EVENTS + extra_rows, 3), tmp_path / "edge_features.pt")
    message = chunked_error(path, chunk_rows)
    assert message == whole_error(path)
    assert f"has {NUM_EVENTS + extra_rows} rows, expected {NUM_EVENTS} " in message


@pytest.mark.parametrize("rows, fragments", [
    (NUM_EVENTS - 1, [f"has {NUM_EVENTS - 1} rows, too few for edges.csv", f"at least {NUM_EVENTS} events"]),
    (0, ["has 0 rows, too few for edges.csv"]),
])
def test_an_edge_feature_file_with_too_few_rows_is_refused(tmp_path, stream, rows, fragments):
    path = write_tgl(stream, tmp_path)
    torch.save(torch.zeros(rows, 3), tmp_path / "edge_features.pt")
    message = chunked_error(path, 4)
    for fragment in fragments:
        assert fragment in message, message


def test_dyglib_edge_features_need_their_padding_row_and_no_more(tmp_path, stream):
    """Chunks are handed out before the events are counted, so the padding row cannot be optional."""
    path = write_dyglib(stream, tmp_path)
    np.save(tmp_path / "ml_toy.npy", stream.edge_feat)
    assert "after a padding row 0" in chunked_error(path, 4)
    np.save(tmp_path / "ml_toy.npy", np.zeros((NUM_EVENTS + 2, 3)))
    assert chunked_error(path, 4) == whole_error(path)


def test_node_features_must_cover_every_node_id(tmp_path, stream):
    path = write_tgl(stream, tmp_path)
    torch.save(torch.zeros(2, 2), tmp_path / "node_features.pt")
    assert "node feature matrix has 2 rows, but node id" in chunked_error(path, 4)


@pytest.mark.parametrize("name, text", [
    ("ml_x.csv", ""), ("ml_x.csv", ",u,i,ts,label,idx\n"), ("events.csv", "src,dst,t\n"),
    ("events.csv", "\n\n"), ("edges.csv", ",src,dst,time\n0,0,1,nan\n"),
])
def test_files_without_events_are_refused_like_a_whole_read(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert chunked_error(path, 2) == whole_error(path)


def test_chunks_are_iterated_once_and_their_size_is_checked(tmp_path, stream):
    path = write_csv(stream, tmp_path)
    with iter_event_chunks(path, chunk_rows=10) as chunks:
        assert sum(len(chunk.t) for chunk in chunks) == NUM_EVENTS
        with pytest.raises(RuntimeError):
            iter(chunks)
    with pytest.raises(ValueError):
        iter_event_chunks(path, chunk_rows=0)
