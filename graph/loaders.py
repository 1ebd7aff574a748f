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

Reads are bounded and single-pass: only regular files are read (a FIFO or device is refused before it is
read), each file is opened and read once (format detection looks at the same stream the parser reads), and
a line longer than MAX_LINE_BYTES or a table wider than MAX_COLUMNS is refused with the file and line.
Quotes are not special (a quoted field spans no lines); a cell or header name in double quotes is read
without them.

`iter_event_chunks` reads a file bigger than memory in chunks of rows, checked as `load_events` checks the
whole file (an error names the file's line and data row); an edge feature file is memory-mapped, not read.
"""
from __future__ import annotations

import csv
import gzip
import lzma
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch

from common.errors import PATH_CHARS, DataError, one_line, shorten
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
MAX_TIME = 1e30
"""Largest |timestamp| an events file may hold. Times are kept as float64, but the models take their differences
(between two events, or from 0 for a memory never written) as float32, which ends at 3.4e38: within ±1e30 every
difference stays below 2e30, a margin of 1e8 for what the models compute from it (products with the time
encoding's frequencies, sums over a batch). Unix seconds (2e9) and nanoseconds (2e18) are far inside it."""
# a time column taken by position is implausible when more than this share of rows go back in time ...
TIME_BACKWARD_SHARE = 0.05
# ... or when it holds fewer distinct values than this share of the rows (both checked on unsorted files only)
TIME_DISTINCT_SHARE = 0.01
TIME_CHECK_MIN_ROWS = 100  # below this, shares of rows say too little to refuse a file
COLUMN_KEYS = ("src", "dst", "t", "feat")

# Limits on what one file may make the parser hold, so that a hostile or wrong file (no line breaks, a
# binary blob, one endless line of commas) is refused with one line instead of filling memory. Real event
# files stay far below them: a line holds one event (src, dst, t and at most a few hundred features; TGL,
# DyGLib and JODIE CSVs with 172 feature columns have lines of about 2 KB, and 4,096 float columns written
# with full precision take about 100 KB), so both limits leave a margin of 40x or more.
MAX_LINE_BYTES = 4 * 2**20
"""Longest line (bytes, after decompression) of an events file: 4 MiB. A longer line is refused."""
MAX_COLUMNS = 4096
"""Most columns (fields of the first line) of an events file; more is refused before pandas builds them."""
READ_CHUNK = 2**20  # bytes taken from a (decompressed) file per read; below MAX_LINE_BYTES (see _LineBoundedStream)
SHOWN_CHARS = 40  # an error message shows at most this many characters of a value taken from a file or option
SHOWN_NAMES = 12  # ... and at most this many of a header's column names


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns of a csv or whitespace file hold the source, destination, time and edge features:
    0-based positions or header names."""

    src: int | str
    dst: int | str
    t: int | str
    feat: tuple[int | str, ...] = ()

    def roles(self) -> list[tuple[str, int | str]]:
        """(role, column) for every chosen column: src, dst, t, then feat once per feature column."""
        return [("src", self.src), ("dst", self.dst), ("t", self.t), *(("feat", key) for key in self.feat)]


def parse_columns(spec: str) -> ColumnChoice:
    """`src=0,dst=1,t=3[,feat=4+5]` (positions or header names) as a `ColumnChoice`; a column named for
    two roles (src=0,dst=0, or feat=3+3) is an error, since the events would silently be self-loops or
    carry a feature twice."""
    shown = f"--columns {shown_value(spec)}"
    chosen: dict[str, list[int | str]] = {}
    for item in spec.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in COLUMN_KEYS or not value:
            raise DataError(f"{shown}: expected key=column pairs for {', '.join(COLUMN_KEYS)} "
                            f"(e.g. src=0,dst=1,t=3), got {shown_value(item.strip())}")
        if key in chosen:
            raise DataError(f"{shown}: key {key!r} is given twice")
        chosen[key] = [int(v) if v.strip().isdigit() else v.strip() for v in value.split("+")]
    missing = [key for key in COLUMN_KEYS[:3] if key not in chosen]
    if missing:
        raise DataError(f"{shown}: missing {', '.join(missing)} (src, dst and t are required)")
    if any(len(chosen[key]) != 1 for key in COLUMN_KEYS[:3]):
        raise DataError(f"{shown}: src, dst and t take one column each")
    choice = ColumnChoice(chosen["src"][0], chosen["dst"][0], chosen["t"][0], tuple(chosen.get("feat", ())))
    _require_distinct(choice.roles(), shown, lambda key: f"column {shown_value(key)}")
    return choice


def _require_distinct(roles: Sequence[tuple[str, object]], where: str, describe) -> None:
    """Raise a DataError naming the first column that two roles share (`describe` names a column)."""
    seen: dict[object, str] = {}
    for role, column in roles:
        if column in seen:
            twice = f"for both {seen[column]} and {role}" if seen[column] != role else f"twice for {role}"
            raise DataError(f"{where}: {describe(column)} is named {twice}; each column can have one role "
                            f"(src, dst, t or one feature)")
        seen[column] = role


def shown_value(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr` of a value for an error message, cut to `limit` characters first (values from files and options
    can be megabytes long; the cut is marked with ...)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}..."
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}..."


def _shown_names(names: Sequence[object]) -> str:
    """A header's column names for an error message: the first SHOWN_NAMES, cut to 4 * SHOWN_CHARS in all."""
    listed = ", ".join(str(name)[:4 * SHOWN_CHARS] for name in names[:SHOWN_NAMES])
    shown = shorten(listed, PATH_CHARS)
    return shown if shown == listed and len(names) <= SHOWN_NAMES else f"{shown} ({len(names):,} columns)"


@dataclass(frozen=True)
class RawEvents:
    """Validated columns of one file, or of one chunk of it, still in file order and with the file's node ids."""

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
    line has a comma). The file is opened and read once; only a regular file is read.
    """
    file = _resolve_path(Path(path))
    _check_format_choice(file, fmt, columns)
    with _open_events(file) as text:
        _, layout = _layout(file, text.first_line(), fmt, columns)
        raw = _with_features(layout.read_frame(next(_read_frames(file, text, layout))), file, layout.features)
    return event_stream_from_raw(
        name or dataset_name(file), raw.src, raw.dst, raw.t, source=str(file),
        edge_feat=raw.edge_feat, raw_node_feat=raw.node_feat, ext_roll=raw.ext_roll,
    )


def iter_event_chunks(path: str | Path, fmt: str | None = None, columns: ColumnChoice | None = None,
                      chunk_rows: int = 1_000_000) -> EventChunks:
    """The events of `path` (as `load_events` takes it) in chunks of at most `chunk_rows` rows, in file order,
    for files bigger than memory: see `EventChunks`. The file is opened (and its node features read) now."""
    return EventChunks(path, fmt, columns, chunk_rows)


class EventChunks:
    """An events file read chunk by chunk, checked like `load_events` checks it, in memory bounded by a chunk.

    Iterate (once) for `RawEvents` chunks in file order: file node ids, float64 times, float32 edge features
    (columns of the file, or rows of its edge feature file, which is memory-mapped rather than read whole)
    and TGL's ext_roll. `node_feat` is the node feature file, indexed by the file's node ids (chunks carry
    none). An error names the file's line and its data row counted over the whole file. Use as a context
    manager: the file stays open until `close`.
    """

    path: Path  # the events file (edges.csv for a TGL directory)
    name: str  # the dataset name the file name implies, as load_events names the stream
    format: str  # one of FORMATS, given or detected
    node_feat: np.ndarray | None

    def __init__(self, path: str | Path, fmt: str | None = None, columns: ColumnChoice | None = None,
                 chunk_rows: int = 1_000_000) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.path = _resolve_path(Path(path))
        self.name = dataset_name(self.path)
        self._chunk_rows = chunk_rows
        self._started = False
        _check_format_choice(self.path, fmt, columns)
        self._files = ExitStack()
        try:
            self._text = self._files.enter_context(_open_events(self.path))
            self.format, self._layout = _layout(self.path, self._text.first_line(), fmt, columns)
            files = self._layout.features
            self.node_feat = None if files is None else _read_matrix(files.node)
            self._edge_rows = (_EdgeFeatureRows(files.edge, self.path, files.padded)
                               if files is not None and files.edge.exists() else None)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[RawEvents]:
        if self._started:
            raise RuntimeError(f"{self.path}: the chunks of an events file can be iterated once")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[RawEvents]:
        for frame in _read_frames(self.path, self._text, self._layout, self._chunk_rows):
            raw = self._layout.read_frame(frame)
            if self.node_feat is not None:
                _node_rows(self.node_feat, raw, self._layout.features.node, self.path)
            if self._edge_rows is not None:
                raw = replace(raw, edge_feat=self._edge_rows.take(len(frame)))
            yield raw
        if self._edge_rows is not None:
            self._edge_rows.finish()

    def close(self) -> None:
        """Close the events file."""
        self._files.close()

    def __enter__(self) -> EventChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_format_choice(file: Path, fmt: str | None, columns: ColumnChoice | None) -> None:
    """A given `fmt` must be known, and `columns` goes only with a csv or whitespace format."""
    if fmt is not None:
        _known_format(fmt, file)
        if columns is not None and fmt not in POSITIONAL_SEPARATORS:
            raise DataError(f"{file}: --columns applies to csv and whitespace (jodie) files, not to format {fmt!r}")


def detect_format(path: str | Path) -> str:
    """Guess the format from the header line, then from the file name (edges.csv, ml_*.csv)."""
    file = _resolve_path(Path(path))
    with _open_events(file) as text:
        return _detect(file, text.first_line())


def _detect(file: Path, header: str) -> str:
    fields = {_unquoted(field) for field in header.split(",")}
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


def path_status(path: Path) -> os.stat_result | None:
    """`os.stat` of `path`, None when nothing is there; any other failure (a name too long, no permission
    on a folder above it) is a one-line DataError that shows at most the path's first characters."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as err:  # ValueError: a NUL character in the path
        reason = getattr(err, "strerror", None) or _shown_error(err)
        raise DataError(f"{shorten(str(path), PATH_CHARS)}: cannot read: {reason}") from err


def _resolve_path(path: Path) -> Path:
    """The events file `path` names; a directory stands for the TGL edges.csv inside it."""
    status = path_status(path)
    if status is None:
        raise DataError(f"{path}: no such file or directory")
    if not stat.S_ISDIR(status.st_mode):
        return path
    for suffix in ("", *COMPRESSION_OPENERS):
        candidate = path / (TGL_EDGES + suffix)
        if path_status(candidate) is not None:  # not is_file(): a FIFO or device named edges.csv is refused when opened
            return candidate
    raise DataError(f"{path}: directory has no {TGL_EDGES} (TGL layout)")


def _known_format(fmt: str, path: Path) -> str:
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {shown_value(fmt)} (known: {', '.join(FORMATS)})")
    return fmt


def _uncompressed_name(path: Path) -> str:
    """The file name without a .xz/.gz suffix."""
    return path.name.removesuffix(path.suffix) if path.suffix in COMPRESSION_OPENERS else path.name


def _bare_name(path: Path) -> str:
    """The file name without compression and data suffixes (`ml_uci.csv.xz` -> `ml_uci`)."""
    return Path(_uncompressed_name(path)).stem


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise DataError(f"{path}: is {kind}, not a regular file; only regular files are read "
                        f"(save the data to a file first)")


def open_regular_file(path: str | Path) -> BinaryIO:
    """`path` opened for binary reading, or a one-line DataError when it cannot be read or is not a regular
    file: a FIFO or device is refused without reading it (or blocking on it: it is opened non-blocking and
    checked on the opened descriptor, so nothing can swap the file in between)."""
    path = Path(path)
    try:
        _require_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or one_line(err)}") from err
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _LineBoundedStream:
    """The bytes of one events file, decompressed and read once, front to back, for both format detection
    (`first_line`) and pandas (`read`); a line longer than MAX_LINE_BYTES is a DataError naming it.

    Reads hand out at most READ_CHUNK (< MAX_LINE_BYTES) bytes, so only the line that runs across the
    boundary of two chunks can be the long one. Lines end at \n or \r (pandas ends rows at both); quotes
    are not special (pandas reads with quoting off), so no row spans lines.
    """

    def __init__(self, path: Path, stream: BinaryIO) -> None:
        self.path = path
        self._stream = stream
        self._ahead = b""  # read for first_line(), not yet handed to read()
        self._line = 1  # number of the line the next byte belongs to
        self._line_bytes = 0  # bytes of that line seen so far
        self._first: str | None = None
        self.first_line_number = 1  # the number of the line `first_line` returns (blank lines come before it)
        self._widths: _RowWidths | None = None

    def _pull(self, size: int) -> bytes:
        try:
            chunk = self._stream.read(min(size, READ_CHUNK))
        except READ_ERRORS as err:
            raise DataError(f"{self.path}: cannot read: {_shown_error(err)}") from err
        self._count(chunk)
        return chunk

    def _count(self, chunk: bytes) -> None:
        first_end = min((at for at in (chunk.find(b"\n"), chunk.find(b"\r")) if at >= 0), default=-1)
        if first_end < 0:
            self._line_bytes += len(chunk)
        else:
            self._line_bytes += first_end
        if self._line_bytes > MAX_LINE_BYTES:
            raise DataError(f"{self.path}: line {self._line:,} is longer than {MAX_LINE_BYTES // 2**20} MiB, the "
                            f"limit for one event's line (is this a text table of events?)")
        if first_end >= 0:
            self._line += chunk.count(b"\n") or chunk.count(b"\r")
            self._line_bytes = len(chunk) - 1 - max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))

    def first_line(self) -> str:
        """The first line that is not blank (without its line break; BOM dropped, undecodable bytes replaced);
        a file without one is an error. Blank lines before it (empty, or blanks and tabs only: pandas skips them
        too) are dropped and counted in `first_line_number`; what it read after them is still handed out by
        `read`."""
        if self._first is not None:
            return self._first
        while True:
            blank = _LEADING_BLANK_LINES.match(self._ahead).end()
            if blank:  # dropped at once, so that a file of blank lines is read in bounded memory
                dropped = self._ahead[:blank]
                self.first_line_number += dropped.count(b"\n") + dropped.count(b"\r") - dropped.count(b"\r\n")
                self._ahead = self._ahead[blank:]
            end = re.search(rb"[\r\n]", self._ahead)
            if end is not None and self._ahead[:end.start()].strip(b" \t"):
                line = self._ahead[:end.start()]
                break
            chunk = self._pull(READ_CHUNK)
            if not chunk:
                line = self._ahead.rstrip(b"\r")  # the file's one line without a line break, or blanks
                break
            self._ahead += chunk
        text = line.decode("utf-8-sig", errors="replace")
        if not text.strip():
            raise DataError(f"{self.path}: file is empty (no header and no events)")
        self._first = text
        return text

    def check_widths(self, sep: str, header: bool) -> None:
        """From now on, refuse a line whose number of fields differs from the first line's (see `_RowWidths`);
        call before the first `read`."""
        self._widths = _RowWidths(self.path, self.first_line(), sep, header, self.first_line_number)

    def read(self, size: int = -1) -> bytes:
        if self._ahead:
            chunk, self._ahead = (self._ahead, b"") if size < 0 else (self._ahead[:size], self._ahead[size:])
        elif size >= 0:
            chunk = self._pull(size)
        else:
            chunk = b"".join(iter(lambda: self._pull(READ_CHUNK), b""))
        if self._widths is not None:
            self._widths.feed(chunk)
        return chunk


_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*(?:\r\n|\n|\r(?!\Z)))*")  # a CR at the end may start a CR LF


class _RowWidths:
    """Checks, on the bytes handed to pandas, that every line that is not blank has as many fields as the first
    line (the header, or the first row). pandas itself refuses only a later line that is wider: a shorter one
    it fills with NaN (so a missing time was reported as "found nan", a value the file does not hold), and a
    first data row one field wider than the header it silently takes as the index, shifting every column.

    Lines end at LF, CR or CR LF and are numbered as an editor numbers them, blank lines included; a line of
    only blanks and tabs is skipped, as pandas skips it. Fields are split at "," or, for the whitespace
    separator, at runs of blanks and tabs; quoting is off, as for the parser. The work is a few vectorised
    passes over each chunk; only the unfinished last line is carried to the next one (at most MAX_LINE_BYTES).
    """

    def __init__(self, path: Path, first_line: str, sep: str, header: bool, first_line_number: int = 1) -> None:
        self.path = path
        self.first_line_number = first_line_number
        self.expected = _field_count(first_line, sep)
        self._comma = sep == ","
        self._header = header
        self._tail = b""  # the unfinished last line of what was fed
        self._after_cr = False  # the last byte fed was CR (an LF right after it starts no new line)
        self._line = first_line_number  # the number of the line `_tail` belongs to
        self._rows = 0  # lines with fields so far, the first one included

    def feed(self, chunk: bytes) -> None:
        """Check the lines `chunk` completes; an empty chunk (the end of the file) checks the last line."""
        data = self._tail + chunk
        if not data:
            return
        array = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero((array == 10) | (array == 13))
        if not chunk:  # the end of the file: the last line has no line break
            ends = np.array([len(data)])
        elif not len(ends):
            self._tail = data
            return
        starts = np.concatenate([[0], ends[:-1] + 1])
        self._check(array, starts, ends, chunk)
        self._after_cr = data[-1:] == b"\r"
        self._tail = data[ends[-1] + 1:]

    def _check(self, array: np.ndarray, starts: np.ndarray, ends: np.ndarray, chunk: bytes) -> None:
        """Check the lines array[starts[k]:ends[k]], then count them into `_line` and `_rows`."""
        fields = self._fields(array, starts, ends)
        bad = (fields > 0) & (fields != self.expected)
        if self._rows == 0:  # the first line with fields (the one first_line returned) sets the width
            bad[np.argmax(fields > 0)] = False
        if chunk:  # an LF right after CR (also across chunks) ends an empty piece of the same line
            before = np.where(ends > 0, array[np.maximum(ends - 1, 0)], 13 if self._after_cr else 0)
            new_line = ~((array[ends] == 10) & (before == 13))
        else:
            new_line = np.zeros(len(ends), dtype=bool)
        if bad.any():
            k = int(np.argmax(bad))
            line = self._line + int(np.count_nonzero(new_line[:k]))
            data_row = self._rows + int(np.count_nonzero(fields[:k])) + 1 - int(self._header)
            reference = "the header has" if self._header else f"line {self.first_line_number:,} has"
            raise DataError(f"{self.path}: line {line:,} (data row {data_row:,}) has {int(fields[k]):,} "
                            f"column{'s' if fields[k] != 1 else ''} where {reference} {self.expected:,}")
        self._line += int(np.count_nonzero(new_line))
        self._rows += int(np.count_nonzero(fields))

    def _fields(self, array: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The number of fields of each line array[starts[k]:ends[k]], 0 for a blank one."""
        blank_or_end = (array == 32) | (array == 9) | (array == 10) | (array == 13)
        if self._comma:
            commas = np.flatnonzero(array == 44)
            fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
            unsure = (fields == 1) & (ends > starts)  # no comma: one field, or a blank line
            fields[ends == starts] = 0
            if unsure.any():
                content = np.flatnonzero(~blank_or_end)
                fields[unsure & (np.searchsorted(content, ends) == np.searchsorted(content, starts))] = 0
            return fields
        field_starts = np.flatnonzero(~blank_or_end & np.concatenate([[True], blank_or_end[:-1]]))
        return np.searchsorted(field_starts, ends) - np.searchsorted(field_starts, starts)


class _open_events:  # noqa: N801  (used as a context manager, like open)
    """Open an events file once (a regular file only; decompressed when .xz/.gz) as a `_LineBoundedStream`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _LineBoundedStream:
        self._raw = open_regular_file(self.path)
        opener = COMPRESSION_OPENERS.get(self.path.suffix)
        try:
            self._stream = self._raw if opener is None else opener(self._raw, "rb")
        except READ_ERRORS as err:
            self._raw.close()
            raise DataError(f"{self.path}: cannot read: {_shown_error(err)}") from err
        return _LineBoundedStream(self.path, self._stream)

    def __exit__(self, *exc: object) -> None:
        try:
            self._stream.close()
        except READ_ERRORS:
            pass  # a damaged compressed stream may fail again on close; the error that matters was raised
        finally:
            self._raw.close()


def _shown_error(err: BaseException) -> str:
    """A library's message on one line, cut to a length an error line can hold."""
    return shorten(one_line(err), PATH_CHARS)


def _unquoted(field: str) -> str:
    """A field without surrounding blanks and one pair of double quotes (`"src"` -> `src`)."""
    field = field.strip()
    return field[1:-1].strip() if len(field) >= 2 and field[0] == field[-1] == '"' else field


def _field_count(line: str, sep: str) -> int:
    """Fields of a line, counted only up to MAX_COLUMNS + 1 (a long line is not split into millions)."""
    if sep == ",":
        return line.count(",") + 1
    return len(line.split(None, MAX_COLUMNS))


def _has_header(line: str, sep: str) -> bool:
    """A header line is one whose first field is not a number."""
    first_field = re.split(sep, line.strip(), maxsplit=1)[0]
    try:
        float(_unquoted(first_field))
    except ValueError:
        return True
    return False


def _read_frames(path: Path, text: _LineBoundedStream, layout: _Layout,
                 chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The table in frames of at most `chunk_rows` rows (one frame when None), each indexed by its data rows'
    0-based numbers in the file; parser failures and files without data rows become DataErrors. The first
    line's width is checked against MAX_COLUMNS first (pandas refuses later lines wider than it)."""
    if _field_count(text.first_line(), layout.sep) > MAX_COLUMNS:
        raise DataError(f"{path}: line {text.first_line_number:,} has more than {MAX_COLUMNS:,} columns, the limit for an events file "
                        f"(src, dst, t and edge features)")
    text.check_widths(layout.sep, header=layout.header is not None)
    with _parse_errors(path):
        # keep_default_na=False: a cell such as "", "NA" or "null" stays the text it is, so an error quotes it
        table = pd.read_csv(text, sep=layout.sep, header=layout.header, float_precision="round_trip",
                            quoting=csv.QUOTE_NONE, keep_default_na=False, chunksize=chunk_rows)
    frames = iter([table] if chunk_rows is None else table)
    rows = 0
    while True:
        with _parse_errors(path):
            frame = next(frames, None)
        if frame is None:
            break
        if layout.header is not None:
            frame.columns = [_unquoted(str(column)) for column in frame.columns]
        frame.index = pd.RangeIndex(rows, rows + len(frame))  # also replaces an index pandas took from a column
        rows += len(frame)
        if len(frame):
            yield frame
    if not rows:
        raise DataError(f"{path}: no events (the file has a header but no data rows)")


@contextmanager
def _parse_errors(path: Path) -> Iterator[None]:
    """Turn what pandas raises for a file it cannot parse into a one-line DataError."""
    try:
        yield
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file is empty (no header and no events)") from err
    except (pd.errors.ParserError, UnicodeDecodeError, *READ_ERRORS) as err:
        raise DataError(f"{path}: cannot parse: {_shown_error(err)}") from err


def _headerless(frame: pd.DataFrame) -> bool:
    """Whether the frame was read without a header line (its columns are then numbered, not named)."""
    return not isinstance(frame.columns[0], str)


def _column_label(frame: pd.DataFrame, column: object) -> str:
    """`column 4 ('ts')` for a named column, `column 3` for a header-less one (1-based positions)."""
    position = frame.columns.get_loc(column) + 1
    return f"column {position}" if isinstance(column, int) else f"column {position} ({shown_value(column)})"


def _row_label(frame: pd.DataFrame, row: int) -> str:
    """`line 5 (data row 4)` for the frame's `row`-th row: data rows are counted from 1 over the whole file
    (the frame's index), lines from 1 with the header line (blank lines, which pandas skips, are not counted)."""
    data_row = int(frame.index[row]) + 1
    line = data_row if _headerless(frame) else data_row + 1
    return f"line {line} (data row {data_row})"


def _raise_at_first(bad: np.ndarray, frame: pd.DataFrame, columns: Sequence, path: Path, problem: str) -> None:
    """Raise a DataError naming the first flagged cell (earliest data row, then leftmost column)."""
    if not bad.any():
        return
    row, col = np.argwhere(bad.reshape(bad.shape[0], -1))[0]
    column = columns[col]
    raise DataError(f"{path}: {_row_label(frame, row)}, {_column_label(frame, column)}: "
                    f"{problem} (found {shown_value(frame[column].iloc[row])})")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r} (header has: {_shown_names(frame.columns)})")


def _finite_numbers(frame: pd.DataFrame, columns: Sequence, path: Path, what: str) -> np.ndarray:
    """The columns as a float64 (rows, len(columns)) matrix; non-numeric, NaN or inf cells are errors."""
    block = frame[list(columns)].apply(_to_numeric).to_numpy(np.float64, na_value=np.nan)
    _raise_at_first(~np.isfinite(block), frame, columns, path, f"{what} is not a finite number")
    return block


def _to_numeric(series: pd.Series) -> pd.Series:
    """A column as numbers (NaN where a cell is not one); text cells lose one pair of double quotes first,
    since the parser keeps them (quoting is off so that no quoted field can span lines)."""
    if not pd.api.types.is_numeric_dtype(series.dtype):
        series = series.astype(object).map(lambda cell: _unquoted(cell) if isinstance(cell, str) else cell)
    return pd.to_numeric(series, errors="coerce")


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
    """A 2-D numeric feature matrix from a .pt tensor or a .npy array; None when the file is absent. The
    file is opened once and must be a regular file; a .npy header that promises more data than the file
    holds is refused before anything is allocated for it."""
    if not path.exists():
        return None
    with open_regular_file(path) as handle:
        try:
            if path.suffix == ".pt":
                tensor = torch.load(handle, map_location="cpu", weights_only=True)
                if not isinstance(tensor, torch.Tensor):
                    raise DataError(f"{path}: expected a torch tensor, found {type(tensor).__name__}")
                matrix = tensor.detach().to(torch.float32).numpy()
            else:
                _require_npy_size(path, handle)
                matrix = np.load(handle, allow_pickle=False)
        except DataError:
            raise
        except Exception as err:  # whatever random bytes make the unpickler, the zip reader or numpy raise
            raise DataError(f"{path}: cannot read feature matrix: {_shown_error(err) or type(err).__name__}") from err
    _require_matrix(path, matrix.shape, matrix.dtype)
    return _finite_features(matrix, path)


def _require_matrix(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 2 or not np.issubdtype(dtype, np.number):
        raise DataError(f"{path}: expected a 2-D numeric matrix, found shape {shape} of {dtype}")


def _finite_features(matrix: np.ndarray, path: Path, first_row: int = 0) -> np.ndarray:
    """Rows `first_row`... of a feature file as float32; a value that is not a finite float32 is an error
    naming its row in the file."""
    with np.errstate(over="ignore", invalid="ignore"):
        features = matrix.astype(np.float32, copy=False)
    bad = np.argwhere(~np.isfinite(features))
    if len(bad):
        row, col = bad[0]
        raise DataError(f"{path}: row {first_row + row}, column {col}: feature is not a finite float32 "
                        f"(found {matrix[row, col]!r})")
    return features


def _require_npy_size(path: Path, handle: BinaryIO) -> None:
    """Refuse a .npy file whose header's shape needs more bytes than the file has (np.load would allocate
    the whole array first); leaves `handle` at the start. Headers it cannot read are left to np.load."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version in readers:
        shape, _, dtype = readers[version](handle)
        if not dtype.hasobject:
            needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
            available = os.fstat(handle.fileno()).st_size - handle.tell()
            if needed > available:
                raise DataError(f"{path}: header promises a {shape} array of {dtype} ({needed:,} bytes), but the "
                                f"file holds {available:,} bytes after it (truncated or not a feature file)")
    handle.seek(0)


def _mapped_matrix(path: Path) -> np.ndarray | torch.Tensor:
    """The matrix of a .npy or .pt feature file, memory-mapped so that only the rows taken are read; a file
    that cannot be mapped (an old-style .pt, a damaged file) is read whole by `_read_matrix`, which refuses
    what is not a feature matrix."""
    with open_regular_file(path):  # a FIFO or device is refused before the loaders open it by name
        try:
            if path.suffix == ".pt":
                matrix = torch.load(str(path), mmap=True, weights_only=True, map_location="cpu")
            else:
                matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # noqa: BLE001  (whatever mapping raises, the whole read names the problem)
            matrix = None
    if isinstance(matrix, torch.Tensor):
        _require_matrix(path, tuple(matrix.shape), np.dtype(np.float32))  # any tensor is read as float32
        return matrix.detach()
    if not isinstance(matrix, np.ndarray):
        return _read_matrix(path)
    _require_matrix(path, matrix.shape, matrix.dtype)
    return matrix


class _EdgeFeatureRows:
    """The rows of an edge feature file, memory-mapped and handed out chunk by chunk in event order, so that
    the file is never read whole. `padded`: the file starts with DyGLib's padding row 0, which is checked
    like the others and skipped."""

    def __init__(self, path: Path, events_path: Path, padded: bool) -> None:
        self.path, self._events_path, self._skip = path, events_path, int(padded)
        self._matrix = _mapped_matrix(path)
        self._next = self._skip  # the file's row of the next event

    def take(self, count: int) -> np.ndarray:
        """The float32 rows of the next `count` events."""
        start, stop = self._next, self._next + count
        if stop > self._matrix.shape[0]:
            padding = ", after a padding row 0" if self._skip else ""
            raise DataError(f"{self.path}: edge feature matrix has {self._matrix.shape[0]} rows, too few for "
                            f"{self._events_path.name}, which has at least {stop - self._skip} events "
                            f"(expected one row per event{padding})")
        self._next = stop
        first = 0 if start == self._skip else start  # the first chunk checks the padding row too
        rows = self._matrix[first:stop]
        rows = rows.to(torch.float32, copy=True).numpy() if isinstance(rows, torch.Tensor) else np.array(rows)
        return _finite_features(rows, self.path, first_row=first)[start - first:]

    def finish(self) -> None:
        """Refuse a file with rows left over after the last event."""
        if self._next < self._matrix.shape[0]:
            raise _edge_count_error(self._matrix.shape[0], self._next - self._skip, self.path, self._events_path,
                                    padded=bool(self._skip))


def _edge_rows(matrix: np.ndarray | None, num_events: int, feat_path: Path, events_path: Path,
               padded: bool) -> np.ndarray | None:
    """Edge features with exactly one row per event; `padded` accepts (and drops) DyGLib's row 0."""
    if matrix is None or matrix.shape[0] == num_events:
        return matrix
    if padded and matrix.shape[0] == num_events + 1:
        return matrix[1:]
    raise _edge_count_error(matrix.shape[0], num_events, feat_path, events_path, padded)


def _edge_count_error(rows: int, num_events: int, feat_path: Path, events_path: Path, padded: bool) -> DataError:
    expected = f"{num_events} or {num_events + 1} with a padding row 0" if padded else str(num_events)
    return DataError(f"{feat_path}: edge feature matrix has {rows} rows, expected {expected} "
                     f"(one per event of {events_path.name})")


def _node_rows(matrix: np.ndarray | None, raw: RawEvents, feat_path: Path, events_path: Path) -> np.ndarray | None:
    """Node features indexed by the file's node id: there must be a row for the largest id."""
    if matrix is None:
        return None
    largest_id = int(max(raw.src.max(), raw.dst.max()))
    if matrix.shape[0] <= largest_id:
        raise DataError(f"{feat_path}: node feature matrix has {matrix.shape[0]} rows, but node id {largest_id} "
                        f"occurs in {events_path.name} (needs at least {largest_id + 1} rows)")
    return matrix


@dataclass(frozen=True)
class _FeatureFiles:
    """The optional feature files beside an events file; `padded`: the edge feature file may start with
    DyGLib's padding row 0."""

    edge: Path
    node: Path
    padded: bool


def _with_features(raw: RawEvents, path: Path, files: _FeatureFiles | None) -> RawEvents:
    """Attach the feature files that sit beside the events file, read whole."""
    if files is None:
        return raw
    return replace(
        raw,
        edge_feat=_edge_rows(_read_matrix(files.edge), raw.t.shape[0], files.edge, path, files.padded),
        node_feat=_node_rows(_read_matrix(files.node), raw, files.node, path),
    )


def _event_columns(frame: pd.DataFrame, path: Path, src: str, dst: str, time: str) -> RawEvents:
    """A headed CSV frame's source, destination and time columns, validated."""
    _require_columns(frame, (src, dst, time), path)
    return RawEvents(
        src=_node_id_column(frame, src, path), dst=_node_id_column(frame, dst, path),
        t=_time_column(frame, time, path),
    )


def _time_column(frame: pd.DataFrame, column: object, path: Path) -> np.ndarray:
    """A column of timestamps as float64; a cell that is not a finite number, or lies beyond ±MAX_TIME, is an
    error naming its row."""
    t = _finite_numbers(frame, [column], path, "timestamp")[:, 0]
    limit = f"{MAX_TIME:.0e}".replace("e+", "e")
    _raise_at_first(np.abs(t) > MAX_TIME, frame, [column], path, f"timestamp is out of range: times must lie "
                    f"within ±{limit}, so that every time difference fits the model's float32 time encoding")
    return t


def _tgl_frame(frame: pd.DataFrame, path: Path) -> RawEvents:
    raw = _event_columns(frame, path, "src", "dst", "time")
    if "ext_roll" in frame.columns:
        raw = replace(raw, ext_roll=_ext_roll_column(frame, path))
    return raw


def _edge_feature_columns(frame: pd.DataFrame, columns: Sequence, path: Path) -> np.ndarray:
    """The feature columns as a float32 matrix (the stream's feature type); a value it cannot hold is an error."""
    block = _finite_numbers(frame, columns, path, "edge feature")
    _raise_at_first(np.abs(block) > MAX_FLOAT32, frame, columns, path, "edge feature does not fit a float32")
    return block.astype(np.float32)


def _positional_frame(frame: pd.DataFrame, path: Path, columns: ColumnChoice | None) -> RawEvents:
    """`src, dst, t, feat...` by position, or the columns `columns` names (which must be distinct columns of
    the file: a name and a position may point to the same one)."""
    if columns is None:
        if frame.shape[1] < 3:
            raise DataError(f"{path}: expected at least 3 columns (src, dst, t), found {frame.shape[1]}")
        src_column, dst_column, time_column, *feature_columns = frame.columns
    else:
        chosen = [(role, _chosen_column(frame, key, path)) for role, key in columns.roles()]
        _require_distinct(chosen, f"{path}: --columns", lambda column: f"{_column_label(frame, column)} "
                                                                         f"(position {frame.columns.get_loc(column)})")
        (_, src_column), (_, dst_column), (_, time_column), *features = chosen
        feature_columns = [column for _, column in features]
    raw = RawEvents(
        src=_node_id_column(frame, src_column, path), dst=_node_id_column(frame, dst_column, path),
        t=_time_column(frame, time_column, path),
        edge_feat=_edge_feature_columns(frame, feature_columns, path) if feature_columns else None,
    )
    if columns is None:
        _require_plausible_time(raw.t, frame, time_column, path)
    return raw


def _chosen_column(frame: pd.DataFrame, key: int | str, path: Path) -> object:
    """The frame's column at 0-based position `key`, or with header name `key`."""
    if isinstance(key, int):
        if key >= frame.shape[1]:
            raise DataError(f"{path}: --columns names position {key:,}, but the file has {frame.shape[1]} columns "
                            f"(positions 0 to {frame.shape[1] - 1})")
        return frame.columns[key]
    if key not in frame.columns or _headerless(frame):
        header = "no header line" if _headerless(frame) else _shown_names(frame.columns)
        raise DataError(f"{path}: --columns names column {shown_value(key)}, which the file does not have ({header})")
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


@dataclass(frozen=True)
class _Layout:
    """How one events file is read: its table's separator and header row, the reader of one frame of it
    (the whole table, or a chunk), and the feature files beside it."""

    sep: str
    header: int | None
    read_frame: Callable[[pd.DataFrame], RawEvents]
    features: _FeatureFiles | None = None


def _tgl_layout(path: Path, first_line: str) -> _Layout:
    return _Layout(",", 0, partial(_tgl_frame, path=path),
                   _FeatureFiles(path.parent / "edge_features.pt", path.parent / "node_features.pt", padded=False))


def _dyglib_layout(path: Path, first_line: str) -> _Layout:
    stem = _bare_name(path)
    return _Layout(",", 0, partial(_event_columns, path=path, src="u", dst="i", time="ts"),
                   _FeatureFiles(path.with_name(f"{stem}.npy"), path.with_name(f"{stem}_node.npy"), padded=True))


def _positional_layout(path: Path, first_line: str, sep: str, columns: ColumnChoice | None = None) -> _Layout:
    """Columns by position (or as `columns` names them), with a header line when the first field is not a number."""
    return _Layout(sep, 0 if _has_header(first_line, sep) else None,
                   partial(_positional_frame, path=path, columns=columns))


_LAYOUTS = {
    "tgl": _tgl_layout,
    "dyglib": _dyglib_layout,
    **{fmt: partial(_positional_layout, sep=sep) for fmt, sep in POSITIONAL_SEPARATORS.items()},
}


def _layout(file: Path, first_line: str, fmt: str | None, columns: ColumnChoice | None) -> tuple[str, _Layout]:
    """The format of an events file (`fmt`, or detected from its first line and name) and how it is read."""
    if columns is None:
        fmt = fmt or _detect(file, first_line)
        return fmt, _LAYOUTS[fmt](file, first_line)
    fmt = fmt or ("csv" if "," in first_line else "jodie")
    return fmt, _positional_layout(file, first_line, POSITIONAL_SEPARATORS[fmt], columns)
