"""Writing the files the project produces (checkpoints, results.json, pipeline logs, timeline images, benchmark
results, prepared data): atomically, and never through a symbolic link.

A run directory or output folder may come from elsewhere, so any name in it may be a symbolic link planted
to make a write land on another file. Every file is therefore written by `replacing` (or `write_atomic`):
the content goes to a new temporary file beside the target, created exclusively under a name no one can
guess (`O_EXCL | O_NOFOLLOW`: nothing already there, link or file, is ever opened), flushed to disk and
renamed over the target. A reader sees the old file or the new one, never half of one; a failed write
removes the temporary file and leaves the old one as it was. A target that is a symbolic link or not a
regular file, or whose folder is missing, is refused before anything is written: an `OutputError`, one
line naming it. Other failures (no permission, a full disk) stay `OSError`s, naming the target.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from common.errors import OutputError

TEMPORARY_SUFFIX = ".tmp"  # temporary files are named `.NAME.<random>.tmp`
MAX_TEMPORARY_STEM = 200  # characters of the target's name a temporary one keeps (names end at 255 bytes)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def check_target(path: str | Path) -> None:
    """Refuse (`OutputError`) to write `path` when it is a symbolic link or something other than a regular
    file, or when its folder does not exist; a regular file or nothing there is fine."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        _check_folder(path.parent)
        return
    except NotADirectoryError:
        raise OutputError(f"{path.parent}: is not a directory") from None
    if stat.S_ISLNK(mode):
        raise OutputError(f"{path}: is a symbolic link; refusing to write through it (remove the link or choose "
                          f"another path)")
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputError(f"{path}: is {kind}; refusing to replace it with a file")


def check_new_output(path: str | Path, overwrite: bool, option: str = "--out") -> None:
    """`check_target`, and refuse an existing file unless `overwrite` (the user passed --overwrite)."""
    check_target(path)
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it or choose another {option}")


def _check_folder(folder: Path) -> None:
    try:
        mode = os.stat(folder).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise OutputError(f"{folder}: no such directory") from None
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{folder}: is not a directory")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside `path` under a random name, opened for writing (never an existing one)."""
    while True:
        temporary = path.with_name(f".{path.name[:MAX_TEMPORARY_STEM]}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
        try:
            return os.open(temporary, CREATE_FLAGS, 0o644), temporary
        except FileExistsError:
            continue  # a name taken by chance (or planted): draw another
        except (FileNotFoundError, NotADirectoryError):
            break  # the folder is gone or is not one: said below, outside this handler
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from None  # name the target, not the temporary
    _check_folder(path.parent)
    raise OutputError(f"{path.parent}: cannot create a file in it")


def _open_temporary(fd: int, text: bool) -> IO:
    return open(fd, "w", encoding="utf-8", newline="") if text else open(fd, "wb")


@contextlib.contextmanager
def replacing(path: str | Path, text: bool = False) -> Iterator[IO]:
    """A file handle (binary, or UTF-8 text with `text`) whose content replaces `path` atomically when the
    block ends without an exception; on an exception `path` stays as it was and nothing else is left."""
    path = Path(path)
    check_target(path)
    fd, temporary = _create_temporary(path)
    try:
        handle = _open_temporary(fd, text)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` (str: as UTF-8) atomically, as `replacing` does."""
    with replacing(path, text=isinstance(data, str)) as handle:
        handle.write(data)


def check_writable(folder: str | Path) -> None:
    """Create and remove a temporary file in `folder` (as `replacing` would), so that a folder that cannot be
    written fails now, as an `OSError` or `OutputError`, rather than after hours of work."""
    fd, temporary = _create_temporary(Path(folder) / ".write-test")
    os.close(fd)
    os.unlink(temporary)


def _sync_folder(folder: Path) -> None:
    """Flush a rename in `folder` to disk (best effort: some file systems cannot sync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
