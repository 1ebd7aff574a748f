"""Read event streams from the file layouts temporal-GNN code bases use, with one-line errors for bad input.

Formats (`fmt`):
- "tgl": `edges.csv` with header `,src,dst,time,ext_roll[,int_roll]`, 0-based ids; optional
  `edge_features.pt` (one row per event) and `node_features.pt` (row = node id) beside it.
- "dyglib": the TGN/DyGLib processed CSV `,u,i,ts,label,idx`, 1-based ids; optional `ml_<name>.npy`
  (edge features, a padding row 0 is dropped) and `ml_<name>_node.npy` (row = node id) beside it.
- "jodie": whitespace-separated `src dst t [feat ...]`, no header (JODIE's ml_wikipedia.txt).
- "csv": comma-separated `src,dst,t[,feat ...]`, header optional; columns are taken by position.
Any file may be compressed as .xz or .gz.

For csv and whitespace files laid out otherwise, `ColumnChoice` (`--columns src=0,dst=1,t=3`) names the
columns by 0-based position or header name. Without it, a time column read by position that looks like
something else (many rows going back in time, few distinct values) is an error that points to it.
"""
from __future__ import annotations

import gzip
import lzma
import pickle
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.errors import DataError, one_line
from graph.events import EventStream, event_stream_from_raw

FORMATS = ("csv", "dyglib", "jodie", "tgl")
COMPRESSION_OPENERS = {".xz": lzma.open, ".gz": gzip.open}
TGL_EDGES = "edges.csv"
TGL_EDGES_STEM = "edges"
EXT_ROLLS = (0, 1, 2)
READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)  # unreadable file or broken compression
ID_LIMIT = 2**63  # ids are int64
FLOAT_ID_LIMIT = 2**53  # from here on, an id read as a float may have been rounded to another id
MAX_FLOAT32 = float(np.finfo(np.float32).max)  # features are stored as float32
# a time column taken by position is implausible when more than this share of rows go back in time ...
TIME_BACKWARD_SHARE = 0.05
# ... or when it holds fewer distinct values than this share of the rows (both checked on unsorted files only)
TIME_DISTINCT_SHARE = 0.01
TIME_CHECK_MIN_ROWS = 100  # below this, shares of rows say too little to refuse a file
COLUMN_KEYS = ("src", "dst", "t", "feat")


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns of a csv or whitespace file hold the source, destination, time and edge features:
    0-based positions or header names."""

    src: int | str
    dst: int | str
    t: int | str
    feat: tuple[int | str, ...] = ()


def parse_columns(spec: str) -> ColumnChoice:
    """`src=0,dst=1,t=3[,feat=4+5]` (positions or header names) as a `ColumnChoice`."""
    chosen: dict[str, list[int | str]] = {}
    for item in spec.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in COLUMN_KEYS or not value:
            raise DataError(f"--columns {spec!r}: expected key=column pairs for {', '.join(COLUMN_KEYS)} "
                            f"(e.g. src=0,dst=1,t=3), got {item.strip()!r}")
        if key in chosen:
            raise DataError(f"--columns {spec!r}: key {key!r} is given twice")
        chosen[key] = [int(v) if v.strip().isdigit() else v.strip() for v in value.split("+")]
    missing = [key for key in COLUMN_KEYS[:3] if key not in chosen]
    if missing:
        raise DataError(f"--columns {spec!r}: missing {', '.join(missing)} (src, dst and t are required)")
    if any(len(chosen[key]) != 1 for key in COLUMN_KEYS[:3]):
        raise DataError(f"--columns {spec!r}: src, dst and t take one column each")
    return ColumnChoice(chosen["src"][0], chosen["dst"][0], chosen["t"][0], tuple(chosen.get("feat", ())))


@dataclass(frozen=True)
class _RawEvents:
    """Validated columns of one file, still in file order and with the file's node ids."""

    src: np.ndarray
    dst: np.ndarray
    t: np.ndarray
    edge_feat: np.ndarray | None = None
    node_feat: np.ndarray | None = None
    ext_roll: np.ndarray | None = None


def load_events(path: str | Path, fmt: str | None = None, name: str | None = None,
                columns: ColumnChoice | None = None) -> EventStream:
    """Load an event stream from `path` (a file, or a TGL directory holding edges.csv).

    `fmt` is one of FORMATS, or None to detect it from the header and file name; `name` defaults to
    the dataset name the file name implies (`ml_uci.csv.xz` -> "uci", `DIR/edges.csv` -> "DIR").
    `columns` picks the columns of a csv or whitespace file (then `fmt` None means csv when the first
    line has a comma).
    """
    file = _resolve_path(Path(path))
    if columns is None:
        fmt = detect_format(file) if fmt is None else _known_format(fmt, file)
        raw = _READERS[fmt](file)
    else:
        fmt = ("csv" if "," in _first_line(file) else "jodie") if fmt is None else _known_format(fmt, file)
        if fmt not in POSITIONAL_SEPARATORS:
            raise DataError(f"{file}: --columns applies to csv and whitespace (jodie) files, not to format {fmt!r}")
        raw = _read_positional(file, POSITIONAL_SEPARATORS[fmt], columns)
    return event_stream_from_raw(
        name or dataset_name(file), raw.src, raw.dst, raw.t, source=str(file),
        edge_feat=raw.edge_feat, raw_node_feat=raw.node_feat, ext_roll=raw.ext_roll,
    )


def detect_format(path: str | Path) -> str:
    """Guess the format from the header line, then from the file name (edges.csv, ml_*.csv)."""
    file = _resolve_path(Path(path))
    header = _first_line(file)
    fields = {field.strip() for field in header.split(",")}
    stem, suffix = _bare_name(file), Path(_uncompressed_name(file)).suffix
    if {"src", "dst", "time"} <= fields or stem == TGL_EDGES_STEM:
        return "tgl"
    if {"u", "i", "ts"} <= fields or (stem.startswith("ml_") and suffix == ".csv"):
        return "dyglib"
    return "csv" if "," in header else "jodie"


def dataset_name(path: Path) -> str:
    """The dataset name a file name implies: `ml_<name>.csv` -> name, `<name>/edges.csv` -> name."""
    stem = _bare_name(path)
    if stem == TGL_EDGES_STEM:
        return path.resolve().parent.name
    return stem.removeprefix("ml_")


def _resolve_path(path: Path) -> Path:
    """The events file `path` names; a directory stands for the TGL edges.csv inside it."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.is_dir():
        return path
    for suffix in ("", *COMPRESSION_OPENERS):
        candidate = path / (TGL_EDGES + suffix)
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: directory has no {TGL_EDGES} (TGL layout)")


def _known_format(fmt: str, path: Path) -> str:
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt


def _uncompressed_name(path: Path) -> str:
    """The file name without a .xz/.gz suffix."""
    return path.name.removesuffix(path.suffix) if path.suffix in COMPRESSION_OPENERS else path.name


def _bare_name(path: Path) -> str:
    """The file name without compression and data suffixes (`ml_uci.csv.xz` -> `ml_uci`)."""
    return Path(_uncompressed_name(path)).stem


def _first_line(path: Path) -> str:
    """The first line of a (possibly compressed) text file; an empty file is an error."""
    opener = COMPRESSION_OPENERS.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
            line = handle.readline()
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read: {one_line(err)}") from err
    if not line.strip():
        raise DataError(f"{path}: file is empty (no header and no events)")
    return line


def _has_header(path: Path, sep: str) -> bool:
    """A header line is one whose first field is not a number."""
    first_field = re.split(sep, _first_line(path).strip())[0].strip()
    try:
        float(first_field)
    except ValueError:
        return True
    return False


def _read_table(path: Path, sep: str, header: int | None) -> pd.DataFrame:
    """Parse the file with pandas; parser failures and files without data rows become DataErrors."""
    try:
        frame = pd.read_csv(path, sep=sep, header=header, compression="infer", float_precision="round_trip")
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file is empty (no header and no events)") from err
    except (pd.errors.ParserError, UnicodeDecodeError, *READ_ERRORS) as err:
        raise DataError(f"{path}: cannot parse: {one_line(err)}") from err
    if frame.empty:
        raise DataError(f"{path}: no events (the file has a header but no data rows)")
    if header is not None:
        frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def _column_label(frame: pd.DataFrame, column: object) -> str:
    """`column 4 ('ts')` for a named column, `column 3` for a header-less one (1-based positions)."""
    position = frame.columns.get_loc(column) + 1
    return f"column {position}" if isinstance(column, int) else f"column {position} ({column!r})"


def _raise_at_first(bad: np.ndarray, frame: pd.DataFrame, columns: Sequence, path: Path, problem: str) -> None:
    """Raise a DataError naming the first flagged cell (earliest data row, then leftmost column)."""
    if not bad.any():
        return
    row, col = np.argwhere(bad.reshape(bad.shape[0], -1))[0]
    column = columns[col]
    raise DataError(f"{path}: data row {row + 1}, {_column_label(frame, column)}: "
                    f"{problem} (found {frame[column].iloc[row]!r})")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r} (header has: {', '.join(map(str, frame.columns))})")


def _finite_numbers(frame: pd.DataFrame, columns: Sequence, path: Path, what: str) -> np.ndarray:
    """The columns as a float64 (rows, len(columns)) matrix; non-numeric, NaN or inf cells are errors."""
    block = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    _raise_at_first(~np.isfinite(block), frame, columns, path, f"{what} is not a finite number")
    return block


def _node_id_column(frame: pd.DataFrame, column: object, path: Path) -> np.ndarray:
    """A column of non-negative integer node ids as int64; ids that int64 (or, in a column pandas read as
    floats, float64) cannot hold exactly are errors, since they would silently become other ids."""
    series = frame[column]
    if pd.api.types.is_signed_integer_dtype(series.dtype):
        ids = series.to_numpy(np.int64)
    else:
        values = _finite_numbers(frame, [column], path, "node id")[:, 0]
        _raise_at_first(values != np.round(values), frame, [column], path, "node id is not an integer")
        limit = FLOAT_ID_LIMIT if pd.api.types.is_float_dtype(series.dtype) else ID_LIMIT
        _raise_at_first(np.abs(values) >= limit, frame, [column], path, "node id is out of range "
                        "(ids are integers from 0 to 2**63-1, and below 2**53 in a column with decimals)")
        ids = values.astype(np.int64)
    _raise_at_first(ids < 0, frame, [column], path, "node id is negative")
    return ids


def _ext_roll_column(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """TGL's split label per event: 0 train, 1 validation, 2 test."""
    values = _finite_numbers(frame, ["ext_roll"], path, "ext_roll")[:, 0]
    _raise_at_first(~np.isin(values, EXT_ROLLS), frame, ["ext_roll"], path, "ext_roll must be 0, 1 or 2")
    return values.astype(np.int8)


def _read_matrix(path: Path) -> np.ndarray | None:
    """A 2-D numeric feature matrix from a .pt tensor or a .npy array; None when the file is absent."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".pt":
            tensor = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensor, torch.Tensor):
                raise DataError(f"{path}: expected a torch tensor, found {type(tensor).__name__}")
            matrix = tensor.detach().to(torch.float32).numpy()
        else:
            matrix = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
        raise DataError(f"{path}: cannot read feature matrix: {one_line(err)}") from err
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise DataError(f"{path}: expected a 2-D numeric matrix, found shape {matrix.shape} of {matrix.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        features = matrix.astype(np.float32, copy=False)
    bad = np.argwhere(~np.isfinite(features))
    if len(bad):
        row, col = bad[0]
        raise DataError(f"{path}: row {row}, column {col}: feature is not a finite float32 (found {matrix[row, col]!r})")
    return features


def _edge_rows(matrix: np.ndarray | None, num_events: int, feat_path: Path, events_path: Path,
               padded: bool) -> np.ndarray | None:
    """Edge features with exactly one row per event; `padded` accepts (and drops) DyGLib's row 0."""
    if matrix is None or matrix.shape[0] == num_events:
        return matrix
    if padded and matrix.shape[0] == num_events + 1:
        return matrix[1:]
    expected = f"{num_events} or {num_events + 1} with a padding row 0" if padded else str(num_events)
    raise DataError(f"{feat_path}: edge feature matrix has {matrix.shape[0]} rows, expected {expected} "
                    f"(one per event of {events_path.name})")


def _node_rows(matrix: np.ndarray | None, raw: _RawEvents, feat_path: Path, events_path: Path) -> np.ndarray | None:
    """Node features indexed by the file's node id: there must be a row for the largest id."""
    if matrix is None:
        return None
    largest_id = int(max(raw.src.max(), raw.dst.max()))
    if matrix.shape[0] <= largest_id:
        raise DataError(f"{feat_path}: node feature matrix has {matrix.shape[0]} rows, but node id {largest_id} "
                        f"occurs in {events_path.name} (needs at least {largest_id + 1} rows)")
    return matrix


def _with_features(raw: _RawEvents, path: Path, edge_path: Path, node_path: Path, padded: bool) -> _RawEvents:
    """Attach the optional feature files that sit beside the events file."""
    return replace(
        raw,
        edge_feat=_edge_rows(_read_matrix(edge_path), raw.t.shape[0], edge_path, path, padded),
        node_feat=_node_rows(_read_matrix(node_path), raw, node_path, path),
    )


def _read_event_columns(path: Path, src: str, dst: str, time: str) -> tuple[pd.DataFrame, _RawEvents]:
    """A headed CSV's table and its source, destination and time columns, validated."""
    frame = _read_table(path, sep=",", header=0)
    _require_columns(frame, (src, dst, time), path)
    raw = _RawEvents(
        src=_node_id_column(frame, src, path), dst=_node_id_column(frame, dst, path),
        t=_finite_numbers(frame, [time], path, "timestamp")[:, 0],
    )
    return frame, raw


def _read_tgl(path: Path) -> _RawEvents:
    frame, raw = _read_event_columns(path, "src", "dst", "time")
    if "ext_roll" in frame.columns:
        raw = replace(raw, ext_roll=_ext_roll_column(frame, path))
    return _with_features(raw, path, path.parent / "edge_features.pt", path.parent / "node_features.pt", padded=False)


def _read_dyglib(path: Path) -> _RawEvents:
    _, raw = _read_event_columns(path, "u", "i", "ts")
    stem = _bare_name(path)
    return _with_features(raw, path, path.with_name(f"{stem}.npy"), path.with_name(f"{stem}_node.npy"), padded=True)


def _edge_feature_columns(frame: pd.DataFrame, columns: Sequence, path: Path) -> np.ndarray:
    """The feature columns as a float64 matrix whose values all fit float32 (the stream's feature type)."""
    block = _finite_numbers(frame, columns, path, "edge feature")
    _raise_at_first(np.abs(block) > MAX_FLOAT32, frame, columns, path, "edge feature does not fit a float32")
    return block


def _read_positional(path: Path, sep: str, columns: ColumnChoice | None = None) -> _RawEvents:
    """`src, dst, t, feat...` by position, with or without a header line, or the columns `columns` names."""
    frame = _read_table(path, sep=sep, header=0 if _has_header(path, sep) else None)
    if columns is None:
        if frame.shape[1] < 3:
            raise DataError(f"{path}: expected at least 3 columns (src, dst, t), found {frame.shape[1]}")
        src_column, dst_column, time_column, *feature_columns = frame.columns
    else:
        src_column, dst_column, time_column = (_chosen_column(frame, key, path)
                                               for key in (columns.src, columns.dst, columns.t))
        feature_columns = [_chosen_column(frame, key, path) for key in columns.feat]
    raw = _RawEvents(
        src=_node_id_column(frame, src_column, path), dst=_node_id_column(frame, dst_column, path),
        t=_finite_numbers(frame, [time_column], path, "timestamp")[:, 0],
        edge_feat=_edge_feature_columns(frame, feature_columns, path) if feature_columns else None,
    )
    if columns is None:
        _require_plausible_time(raw.t, frame, time_column, path)
    return raw


def _chosen_column(frame: pd.DataFrame, key: int | str, path: Path) -> object:
    """The frame's column at 0-based position `key`, or with header name `key`."""
    if isinstance(key, int):
        if key >= frame.shape[1]:
            raise DataError(f"{path}: --columns names position {key}, but the file has {frame.shape[1]} columns "
                            f"(positions 0 to {frame.shape[1] - 1})")
        return frame.columns[key]
    if key not in frame.columns or isinstance(frame.columns[0], int):
        header = ", ".join(map(str, frame.columns)) if not isinstance(frame.columns[0], int) else "no header line"
        raise DataError(f"{path}: --columns names column {key!r}, which the file does not have ({header})")
    return key


def _require_plausible_time(t: np.ndarray, frame: pd.DataFrame, column: object, path: Path) -> None:
    """A time column taken by position must look like one: an unsorted column with many rows going back in
    time, or with few distinct values, is more likely a rating or a count than a timestamp."""
    backward = int(np.count_nonzero(t[1:] < t[:-1]))
    if backward == 0 or len(t) < TIME_CHECK_MIN_ROWS:
        return
    distinct = len(np.unique(t))
    if backward > TIME_BACKWARD_SHARE * (len(t) - 1) or distinct < TIME_DISTINCT_SHARE * len(t):
        raise DataError(
            f"{path}: {_column_label(frame, column)} (position {frame.columns.get_loc(column)}), read as the "
            f"time, does not look like one: "
            f"{backward / (len(t) - 1):.0%} of rows go back in time and it has {distinct:,} distinct values in "
            f"{len(t):,} rows; name the columns with --columns src=0,dst=1,t=N (0-based positions or header names)")


POSITIONAL_SEPARATORS = {"jodie": r"\s+", "csv": ","}
_READERS = {
    "tgl": _read_tgl,
    "dyglib": _read_dyglib,
    **{fmt: partial(_read_positional, sep=sep) for fmt, sep in POSITIONAL_SEPARATORS.items()},
}
