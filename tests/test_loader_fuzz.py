"""Property-based fuzzing of every loader format: whatever the file holds (random bytes, broken
compression, shuffled or duplicated columns, wrong types, huge ids, unsorted times, NaN/inf), loading it
either yields a well-formed `EventStream` or raises a one-line `DataError` naming the file, never any
other exception, so a wrong file is never trained on silently."""
from __future__ import annotations

import gzip
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.errors import DataError
from graph import EventStream, load_events

pytestmark = pytest.mark.faults

FUZZ = settings(max_examples=60, deadline=None)
FORMATS = [None, "tgl", "dyglib", "jodie", "csv"]  # None: auto-detect

# Per layout: file name (TGL is read from its directory), column names, separator.
LAYOUTS = {
    "tgl": ("edges.csv", ["", "src", "dst", "time", "ext_roll"], ","),
    "dyglib": ("ml_fuzz.csv", ["", "u", "i", "ts", "label", "idx"], ","),
    "jodie": ("fuzz.txt", ["src", "dst", "t"], " "),
    "csv": ("fuzz.csv", ["src", "dst", "t"], ","),
}

MAX_INT64 = np.iinfo(np.int64).max


@contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        yield Path(folder)


def load_or_data_error(path: Path, fmt: str | None) -> EventStream | None:
    """The stream `path` holds, or None after checking the DataError is one line that starts with the
    file it is about (the events file or a feature file beside it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unsorted input is sorted with a warning
            events = load_events(path, fmt=fmt)
    except DataError as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert message.startswith(str(path if path.is_dir() else path.parent)), message
        return None
    assert_well_formed(events)
    return events


def assert_well_formed(events: EventStream) -> None:
    """What every consumer of a stream relies on (docs/contracts.md)."""
    num_events = events.num_events
    assert num_events > 0
    assert events.src.dtype == events.dst.dtype == events.node_ids.dtype == np.int64
    assert events.src.shape == events.dst.shape == events.t.shape == (num_events,)
    assert events.t.dtype == np.float64 and np.all(np.isfinite(events.t)) and np.all(np.diff(events.t) >= 0)
    assert np.array_equal(np.unique(np.concatenate([events.src, events.dst])), np.arange(events.num_nodes))
    assert events.node_ids.shape == (events.num_nodes,)
    assert np.all(events.node_ids >= 0) and np.all(np.diff(events.node_ids) > 0)
    if events.edge_feat is not None:
        assert events.edge_feat.dtype == np.float32 and events.edge_feat.shape[0] == num_events
        assert np.all(np.isfinite(events.edge_feat))
    if events.ext_roll is not None:
        assert events.ext_roll.dtype == np.int8 and np.isin(events.ext_roll, [0, 1, 2]).all()


def write_events_file(folder: Path, layout: str, content: bytes) -> Path:
    """Write `content` under the layout's file name; return the path a user would pass (TGL: the folder)."""
    name = LAYOUTS[layout][0]
    (folder / name).write_bytes(content)
    return folder if layout == "tgl" else folder / name


# --- random bytes -----------------------------------------------------------------------------------------

def damaged_gzip(content: bytes, keep: float, flip: float) -> bytes:
    """`content` gzip-compressed, cut to the fraction `keep` of its bytes, with the byte at the fraction
    `flip` of the remaining ones inverted."""
    packed = gzip.compress(content)
    damaged = bytearray(packed[:max(1, round(keep * len(packed)))])
    damaged[min(int(flip * len(damaged)), len(damaged) - 1)] ^= 0xFF
    return bytes(damaged)


@FUZZ
@given(layout=st.sampled_from(list(LAYOUTS)), fmt=st.sampled_from(FORMATS), content=st.binary(max_size=600))
def test_random_bytes_load_or_raise_data_error(layout, fmt, content):
    with scratch_dir() as folder:
        load_or_data_error(write_events_file(folder, layout, content), fmt)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), content=st.binary(min_size=1, max_size=300),
       keep=st.floats(0.5, 1.0), flip=st.floats(0.0, 1.0))
@example(fmt=None, content=b"\x00\x00\x00\x01\x00", keep=1.0, flip=0.8)  # found: zlib.error escaped
def test_damaged_compressed_file_loads_or_raises_data_error(fmt, content, keep, flip):
    with scratch_dir() as folder:
        path = folder / "ml_fuzz.csv.gz"
        path.write_bytes(damaged_gzip(b",u,i,ts,label,idx\n" + content, keep, flip))
        load_or_data_error(path, fmt)


# --- tables with hostile cells --------------------------------------------------------------------------

HOSTILE_CELLS = st.one_of(
    st.integers(-3, 40).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e400", "1.5", "7.0", "1e300", "-3.5e38", "0x1f", "1_000", "true", "None",
                     "\u0663", " 4 ", "src", "ts"]),
    st.text(alphabet=st.characters(blacklist_characters=",\n\r\"' \t\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
            max_size=4),
)


@st.composite
def hostile_tables(draw) -> tuple[str, bytes, int]:
    """(layout, file content, data rows): a header that may be shuffled, duplicated or missing, and rows of
    mostly plausible, partly hostile cells."""
    layout = draw(st.sampled_from(list(LAYOUTS)))
    _, columns, sep = LAYOUTS[layout]
    header = draw(st.permutations(columns))
    if draw(st.booleans()):
        header = [*header, draw(st.sampled_from(columns))]  # a duplicated column name
    num_rows = draw(st.integers(1, 12))
    rows = [[draw(HOSTILE_CELLS if draw(st.integers(0, 5)) == 0 else st.integers(0, 30).map(str))
             for _ in header] for _ in range(num_rows)]
    lines = [header] * draw(st.sampled_from([0, 1, 1, 2])) + rows  # no, one or a repeated header line
    return layout, "\n".join(sep.join(line) for line in lines).encode() + b"\n", num_rows


@FUZZ
@given(table=hostile_tables(), fmt=st.sampled_from(FORMATS))
@example(table=("jodie", b"-9.223372036854778e+18 0 0\n", 1), fmt=None)  # found: id cast overflowed
@example(table=("csv", b"src,dst,t\n18446744073709551616,1,1.0\n", 1), fmt=None)  # found: wrapped to negative
@example(table=("csv", b"src,dst,t,f\n1,2,1.0,1e300\n", 1), fmt="csv")  # found: feature became inf
def test_hostile_tables_load_or_raise_data_error(table, fmt):
    layout, content, num_rows = table
    with scratch_dir() as folder:
        events = load_or_data_error(write_events_file(folder, layout, content), fmt)
    if events is not None:
        assert events.num_events <= num_rows + 2  # a header line may be read as data only by position


# --- valid tables in any column order: the exact events come back -----------------------------------

NODE_IDS = st.one_of(st.integers(0, 20), st.integers(0, MAX_INT64))
TIMES = st.one_of(st.integers(-(10**12), 10**12).map(float),
                  st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False))


@st.composite
def valid_tables(draw) -> tuple[str, list[str], list[tuple[int, int, float]]]:
    """(layout, column order, events): named layouts get their columns shuffled, times come unsorted."""
    layout = draw(st.sampled_from(list(LAYOUTS)))
    columns = LAYOUTS[layout][1]
    order = draw(st.permutations(columns)) if layout in ("tgl", "dyglib") else columns
    events = draw(st.lists(st.tuples(NODE_IDS, NODE_IDS, TIMES), min_size=1, max_size=15))
    return layout, order, events


def table_text(layout: str, order: list[str], events: list[tuple[int, int, float]]) -> bytes:
    """The events as the layout writes them, columns in `order` (TGL's and DyGLib's extra columns filled in)."""
    sep = LAYOUTS[layout][2]
    lines = [sep.join(order)] if layout != "jodie" else []
    for row, (src, dst, t) in enumerate(events):
        cells = {"src": src, "u": src, "dst": dst, "i": dst, "time": repr(t), "ts": repr(t), "t": repr(t),
                 "": row, "idx": row + 1, "ext_roll": 0, "label": 0}
        lines.append(sep.join(str(cells[column]) for column in order))
    return ("\n".join(lines) + "\n").encode()


@FUZZ
@given(table=valid_tables(), detect=st.booleans())
def test_valid_tables_in_any_column_order_load_exactly(table, detect):
    layout, order, rows = table
    with scratch_dir() as folder:
        path = write_events_file(folder, layout, table_text(layout, order, rows))
        events = load_or_data_error(path, None if detect else layout)
    assert events is not None, "a valid file must load"
    expected = sorted(rows, key=lambda row: row[2])  # stable: ties keep file order
    assert events.num_events == len(rows)
    assert events.t.tolist() == [t for _, _, t in expected]
    assert events.node_ids[events.src].tolist() == [src for src, _, _ in expected]
    assert events.node_ids[events.dst].tolist() == [dst for _, dst, _ in expected]


@FUZZ
@given(ids=st.lists(st.one_of(st.integers(0, 50), st.integers(0, 2**60)), min_size=2, max_size=12))
def test_ids_written_as_floats_load_exactly_or_are_refused(ids):
    rows = "".join(f"{node}.0,{node}.0,{row}\n" for row, node in enumerate(ids))
    with scratch_dir() as folder:
        path = folder / "fuzz.csv"
        path.write_text(rows)
        if max(ids) >= 2**53:  # float64 cannot tell such ids apart from their neighbours
            with pytest.raises(DataError, match="node id is out of range"):
                load_events(path, fmt="csv")
        else:
            events = load_events(path, fmt="csv")
            assert events.node_ids[events.src].tolist() == ids


FEATURES = st.one_of(st.floats(-1e6, 1e6), st.floats(allow_nan=True, allow_infinity=True))


@FUZZ
@given(features=st.lists(st.lists(FEATURES, min_size=2, max_size=2), min_size=3, max_size=3))
@example(features=[[0.0, 0.0], [0.0, np.nan], [0.0, 1e300]])  # found: NaN and inf features were accepted
def test_feature_matrices_load_as_finite_float32_or_are_refused(features):
    matrix = np.array(features, dtype=np.float64)
    with scratch_dir() as folder:
        path = write_events_file(folder, "dyglib", b",u,i,ts,label,idx\n0,1,2,1.0,0,1\n1,2,1,2.0,0,2\n")
        np.save(folder / "ml_fuzz.npy", matrix)
        events = load_or_data_error(path, "dyglib")
    with np.errstate(over="ignore", invalid="ignore"):
        fits = np.isfinite(matrix.astype(np.float32)).all()
    assert (events is not None) == bool(fits)
    if events is not None:
        np.testing.assert_array_equal(events.edge_feat, matrix[1:].astype(np.float32))
