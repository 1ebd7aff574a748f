"""A prepared stream: an event stream stored as a directory of memory-mapped arrays, for streams bigger than RAM.

Layout of a prepared directory (every array a plain .npy file; `meta.json` is written last):
- `src.npy`, `dst.npy`: contiguous 0-based node ids (int32 when they fit, else int64), in time order;
- `t.npy`: float64 times, ascending (ties keep the input's order); `ext_roll.npy` (int8) when given;
- `node_ids.npy`: the input file's id of every node; `edge_feat.npy` (E, D) and `node_feat.npy` (N, D),
  float32, when the input has them;
- `index_indptr.npy`, `index_nbr.npy`, `index_ts.npy`, `index_eid.npy`: the whole stream's T-CSR (both
  directions of every event), built in linear time by `graph.temporal_index.build_index`;
- `meta.json`: format, version, counts, and every array's dtype and shape (checked when the stream is opened).

`PreparedWriter` takes the stream chunk by chunk in file order, in memory bounded by a chunk and the node
count (plus 16 bytes per event if the input is not sorted by time), and writes into a temporary directory
beside the target that it renames into place at the end, so an interrupted preparation leaves nothing that
could be mistaken for a stream. `load_prepared` maps the arrays read-only: pages come from the page cache
and may come and go, so many processes can share one directory.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError
from graph.events import EventStream
from graph.temporal_index import INDEX_ARRAYS, IndexArrays, build_index, compact_id_dtype

META_FILE = "meta.json"
FORMAT = "mspipe-prepared-stream"
FORMAT_VERSION = 1
PARTIAL_MARK = ".partial-"  # temporary directories are named `.NAME.partial-PID`
COPY_CHUNK = 1 << 20  # rows moved per step when the stream is renumbered or reordered


class _GrowingArray:
    """An .npy file written front to back: rows are appended, and the header gets the final row count on
    close (numpy pads a header so that its first dimension can grow in place)."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        self._file = open(path, "wb")
        self._header_bytes = self._write_header()

    def _write_header(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        self._file.seek(0)
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        if self._file.closed:
            return
        if self._write_header() != self._header_bytes:
            raise RuntimeError(f"{self.path}: .npy header changed length")  # numpy's growth padding is gone
        self._file.close()


def _open_memmap(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _sorted_chunk(t: np.ndarray, previous: float) -> bool:
    return bool(len(t) == 0 or (t[0] >= previous and np.all(t[1:] >= t[:-1])))


class PreparedWriter:
    """Writes a prepared stream to `out` from chunks of (file ids, times, features) in file order.

    Use as a context manager: `append` every chunk, then `finish`; leaving the block by an exception or
    Ctrl-C removes everything written. `progress(stage, events)` reports work done (for a progress bar).
    """

    def __init__(self, out: str | Path, name: str, overwrite: bool = False,
                 progress: Callable[[str, int], None] | None = None) -> None:
        self.out, self.name, self.overwrite = Path(out), name, overwrite
        self._progress = progress or (lambda stage, events: None)
        self.tmp = self.out.parent / f".{self.out.name}{PARTIAL_MARK}{os.getpid()}"
        self._columns: dict[str, _GrowingArray] = {}
        self._node_ids = np.empty(0, dtype=np.int64)
        self._last_t = -np.inf
        self._in_time_order = True
        self.timings: dict[str, float] = {}

    def __enter__(self) -> "PreparedWriter":
        self._refuse_existing()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind, error, trace) -> None:
        for column in self._columns.values():
            column._file.close()
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _refuse_existing(self) -> None:
        if (self.out.exists() or self.out.is_symlink()) and not self.overwrite:
            raise DataError(f"{self.out}: already exists (pass --overwrite to replace it)")

    def _column(self, name: str, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> _GrowingArray:
        if name not in self._columns:
            self._columns[name] = _GrowingArray(self.tmp / f"{name}.npy", dtype, row_shape)
        return self._columns[name]

    def append(self, raw_src: np.ndarray, raw_dst: np.ndarray, t: np.ndarray, edge_feat: np.ndarray | None = None,
               ext_roll: np.ndarray | None = None) -> None:
        """Add the next events in file order: the file's node ids (non-negative integers), finite times,
        optional float32 edge features (one row per event) and TGL split labels."""
        raw_src, raw_dst = np.asarray(raw_src, dtype=np.int64), np.asarray(raw_dst, dtype=np.int64)
        t = np.asarray(t, dtype=np.float64)
        if not (raw_src.shape == raw_dst.shape == t.shape and t.ndim == 1):
            raise ValueError(f"src, dst and t must be 1-D of equal length, got {raw_src.shape}, {raw_dst.shape}, {t.shape}")
        given = {"edge_feat": edge_feat, "ext_roll": ext_roll}
        expected = {"raw_src", "raw_dst", "t", *(name for name, column in given.items() if column is not None)}
        if self._columns and set(self._columns) != expected:
            raise ValueError(f"every chunk must have the same columns: {sorted(self._columns)}, got {sorted(expected)}")
        self._in_time_order = self._in_time_order and _sorted_chunk(t, self._last_t)
        self._last_t = t[-1] if len(t) else self._last_t
        self._node_ids = np.union1d(self._node_ids, np.concatenate([raw_src, raw_dst]))
        self._column("raw_src", np.int64).append(raw_src)
        self._column("raw_dst", np.int64).append(raw_dst)
        self._column("t", np.float64).append(t)
        if edge_feat is not None:
            edge_feat = np.asarray(edge_feat, dtype=np.float32)
            self._column("edge_feat", np.float32, edge_feat.shape[1:]).append(edge_feat)
        if ext_roll is not None:
            self._column("ext_roll", np.int8).append(ext_roll)
        self._progress("read", len(t))

    def finish(self, raw_node_feat: np.ndarray | None = None) -> dict[str, Any]:
        """Renumber, sort (when the input was not in time order), index and publish the stream; return its
        meta data (with the seconds each step took under `timings`). `raw_node_feat` is indexed by file id."""
        if "t" not in self._columns or self._columns["t"].rows == 0:
            raise DataError(f"{self.name}: no events to prepare")
        for column in self._columns.values():
            column.close()
        self.timings["read_s"] = time.perf_counter() - self._started
        if not self._in_time_order:
            self._timed("sort_s", self._sort_by_time)
        self._timed("renumber_s", self._renumber)
        if raw_node_feat is not None:
            self._write_node_features(raw_node_feat)
        self._timed("index_s", self._build_index)
        meta = self._meta()
        with open(self.tmp / META_FILE, "w") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        self._publish()
        return meta

    def _timed(self, key: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = step()
        self.timings[key] = time.perf_counter() - started
        return result

    def _mapped(self, name: str) -> np.ndarray:
        return np.load(self.tmp / f"{name}.npy", mmap_mode="r")

    def _rewrite(self, name: str, dtype: np.dtype, rows: Callable[[int, int], np.ndarray]) -> None:
        """Replace column `name` with `rows(start, stop)` computed chunk by chunk from the current file."""
        source = self._mapped(name)
        target = _open_memmap(self.tmp / f"{name}.next.npy", source.shape, dtype)
        for start in range(0, len(source), COPY_CHUNK):
            target[start:start + COPY_CHUNK] = rows(start, min(start + COPY_CHUNK, len(source)))
        target.flush()
        del source, target
        os.replace(self.tmp / f"{name}.next.npy", self.tmp / f"{name}.npy")

    def _sort_by_time(self) -> None:
        """A stable sort by time of every column (ties keep file order), gathered chunk by chunk."""
        order = np.argsort(np.load(self.tmp / "t.npy"), kind="stable")
        for name, column in self._columns.items():
            source = self._mapped(name)
            self._rewrite(name, column.dtype, lambda start, stop: source[order[start:stop]])

    def _renumber(self) -> None:
        """File ids to contiguous 0-based ids (the rank of the id among all ids, as `load_events` numbers them)."""
        dtype = compact_id_dtype(len(self._node_ids))
        for end in ("src", "dst"):
            raw = self._mapped(f"raw_{end}")
            target = _open_memmap(self.tmp / f"{end}.npy", raw.shape, dtype)
            for start in range(0, len(raw), COPY_CHUNK):
                target[start:start + COPY_CHUNK] = np.searchsorted(self._node_ids, raw[start:start + COPY_CHUNK])
            target.flush()
            del raw, target
            os.remove(self.tmp / f"raw_{end}.npy")
        np.save(self.tmp / "node_ids.npy", self._node_ids)

    def _write_node_features(self, raw_node_feat: np.ndarray) -> None:
        largest = int(self._node_ids[-1])
        if raw_node_feat.shape[0] <= largest:
            raise DataError(f"{self.name}: node feature matrix has {raw_node_feat.shape[0]} rows, but node id "
                            f"{largest} occurs (needs at least {largest + 1} rows)")
        np.save(self.tmp / "node_feat.npy", np.asarray(raw_node_feat[self._node_ids], dtype=np.float32))

    def _build_index(self) -> None:
        src, dst, t = (self._mapped(name) for name in ("src", "dst", "t"))
        index = build_index(src, dst, t, len(self._node_ids),
                            allocate=lambda name, shape, dtype: _open_memmap(self.tmp / f"index_{name}.npy", shape, dtype),
                            progress=lambda events: self._progress("index", events))
        for array in (index.nbr, index.ts, index.eid, index.indptr):
            array.flush()

    def _meta(self) -> dict[str, Any]:
        arrays = {}
        for path in sorted(self.tmp.glob("*.npy")):
            array = np.load(path, mmap_mode="r")
            arrays[path.stem] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        num_events = self._columns["t"].rows
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "num_events": num_events,
            "num_nodes": len(self._node_ids), "index_add_reverse": True, "arrays": arrays,
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
        }

    def _publish(self) -> None:
        """Rename the finished directory into place (an existing one, with --overwrite, is removed after)."""
        self._refuse_existing()
        old = None
        if self.out.exists() or self.out.is_symlink():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def is_prepared_dir(path: Path) -> bool:
    """Whether `path` is a directory meant to hold a prepared stream: it has `meta.json`, or it is a
    preparation's temporary directory, or it holds a prepared stream's arrays."""
    return path.is_dir() and ((path / META_FILE).exists() or PARTIAL_MARK in path.name
                              or (path / "src.npy").exists() or (path / "index_indptr.npy").exists())


def advise_access(array: np.ndarray, random: bool) -> None:
    """Tell the kernel how a memory-mapped array of `load_prepared` will be read: `random`, one page per
    fault (rows scattered over the file: uniform sampling), or with read-around (the kernel's default: rows
    near each other in time, as recent neighbours are, share the pages read with them). A no-op elsewhere."""
    base = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_RANDOM"):
        base.madvise(mmap.MADV_RANDOM if random else mmap.MADV_NORMAL)


def _map_npy(path: Path, dtype: str, shape: list[int]) -> np.ndarray:
    """A read-only memory map of an .npy file, checked against the dtype and shape meta.json promises."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise DataError(f"{path}: unsupported .npy version {version}; prepare the stream again")
            found_shape, fortran, found_dtype = read_header[version](handle)
            offset = handle.tell()
            size = os.fstat(handle.fileno()).st_size
            if found_dtype.str != dtype or list(found_shape) != shape or fortran:
                raise DataError(f"{path}: holds a {tuple(found_shape)} array of {found_dtype}, but {META_FILE} "
                                f"says {tuple(shape)} of {np.dtype(dtype)} (prepare the stream again)")
            needed = offset + int(np.prod(shape, dtype=np.int64)) * found_dtype.itemsize
            if size < needed:
                raise DataError(f"{path}: truncated ({size:,} bytes, needs {needed:,}); prepare the stream again")
            if needed == offset:
                return np.empty(shape, dtype=found_dtype)
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the prepared stream (prepare it again)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    return np.frombuffer(mapped, dtype=found_dtype, count=int(np.prod(shape, dtype=np.int64)),
                         offset=offset).reshape(shape)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise DataError(f"{path}: incomplete prepared stream (no {META_FILE}: its preparation did not finish); "
                        f"prepare it again with scripts/prepare_data.py")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_path}: cannot read: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a prepared stream's meta data (format {FORMAT!r} expected)")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: prepared with format version {meta.get('version')!r}, this code reads "
                        f"{FORMAT_VERSION}; prepare the stream again")
    required = {"src", "dst", "t", "node_ids", *(f"index_{name}" for name in INDEX_ARRAYS)}
    arrays = meta.get("arrays")
    if not isinstance(arrays, dict) or not required <= set(arrays):
        raise DataError(f"{meta_path}: lists no arrays {sorted(required - set(arrays or ()))}; prepare the stream again")
    return meta


def load_prepared(path: str | Path) -> EventStream:
    """The prepared stream in directory `path`, its columns, features and T-CSR memory-mapped read-only."""
    path = Path(path)
    meta = _read_meta(path)
    arrays = {name: _map_npy(path / f"{name}.npy", spec["dtype"], spec["shape"]) for name, spec in meta["arrays"].items()}
    num_events, num_nodes = len(arrays["t"]), len(arrays["node_ids"])
    if (meta.get("num_events"), meta.get("num_nodes")) != (num_events, num_nodes) or \
            len(arrays["index_indptr"]) != num_nodes + 1:
        raise DataError(f"{path / META_FILE}: counts do not match the arrays; prepare the stream again")
    return EventStream(
        name=str(meta.get("name") or path.name), src=arrays["src"], dst=arrays["dst"], t=arrays["t"],
        num_nodes=num_nodes, node_ids=arrays["node_ids"], edge_feat=arrays.get("edge_feat"),
        node_feat=arrays.get("node_feat"), ext_roll=arrays.get("ext_roll"),
        index=IndexArrays(*(arrays[f"index_{name}"] for name in INDEX_ARRAYS)), source=str(path),
    )
