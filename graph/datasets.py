"""The real datasets bundled with the repository, addressable by name, and the name-or-path resolution
the scripts' `--data` option uses."""
from __future__ import annotations

from pathlib import Path

from common.errors import PATH_CHARS, DataError, shorten
from graph.events import EventStream
from graph.loaders import ColumnChoice, load_events, path_status
from graph.prepared import is_prepared_dir, load_prepared

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUILTIN_DATASETS: dict[str, Path] = {
    "uci": DATA_DIR / "ml_uci.csv.xz",
    "wikipedia": DATA_DIR / "ml_wikipedia.txt.xz",
    "enron": DATA_DIR / "ml_enron.csv.xz",
}
DEFAULT_DATASET = "uci"


def dataset_source(name_or_path: str) -> tuple[Path, str | None]:
    """The file (or TGL directory) `--data` names, and the dataset name to give it (None: from the file)."""
    if name_or_path in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name_or_path], name_or_path
    path = Path(name_or_path)
    if len(path.parts) > 1 or path.suffix or path_status(path) is not None:
        return path, None
    known = ", ".join(sorted(BUILTIN_DATASETS))
    raise DataError(f"{shorten(name_or_path, PATH_CHARS)}: unknown dataset name and no such file (built-in datasets: {known})")


def load_dataset(name_or_path: str, fmt: str | None = None, columns: ColumnChoice | None = None) -> EventStream:
    """Load a built-in dataset by name, any supported file (or TGL directory) by path, or a stream prepared
    by scripts/prepare_data.py (memory-mapped); `columns` picks the columns of a csv or whitespace file."""
    path, name = dataset_source(name_or_path)
    if name is None and path_status(path) is not None and is_prepared_dir(path):
        if fmt is not None or columns is not None:
            raise DataError(f"{shorten(name_or_path, PATH_CHARS)}: a prepared stream takes no --format or --columns "
                            f"(they were applied when it was prepared)")
        return load_prepared(path)
    return load_events(path, fmt=fmt, name=name, columns=columns)
