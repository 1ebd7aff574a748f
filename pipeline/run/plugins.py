"""Plugins: user modules that add parts (memory updaters, embeddings, predictors, sampling strategies,
schedulers) to the registries of `common.registry` simply by being imported.

A config's `plugins` list names them, each either a `.py` file (relative to the config file's folder) or
the name of an importable module; importing one runs its `@REGISTRY.register(...)` decorators, so the
names it adds become valid config values. Importing is idempotent: a config validated twice (file, then
command-line overrides) imports each plugin once.

Plugins are code, so they come only from what the user names: a config file given on the command line,
`--set plugins=...`, or `scripts/evaluate.py --plugins`. A run directory, a checkpoint or a results file is
data: the plugins a checkpoint records are compared with those given (`missing_plugins`), never imported.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import PluginError, shorten

SHOWN_PLUGINS = 3  # how many plugins an error message names before "and N more"
SHOWN_CHARS = 160  # how much of one plugin entry an error message shows


def resolve_plugins(entries: Sequence[str], base_dir: Path) -> list[str]:
    """`entries` with `.py` paths made absolute against `base_dir` (module names stay as they are)."""
    return [str((base_dir / entry).resolve()) if entry.endswith(".py") else entry for entry in entries]


def load_plugins(entries: list[str], base_dir: Path, source: str, key: str | None = "plugins") -> list[str]:
    """Import every plugin in `entries` and return them resolved (`.py` paths made absolute against
    `base_dir`), so a config that is stored and validated again finds the same files from anywhere.

    `source` names the config (and `key` its key; None: `source` is a command-line option) in errors. An
    error raised while a plugin runs is a bug in the plugin and propagates with its traceback; only a
    plugin that does not exist, or a plugin file that is not Python (it does not compile), is a `PluginError`.
    """
    where = f"{source}: key '{key}'" if key else source
    resolved = resolve_plugins(entries, base_dir)
    for entry in resolved:
        if entry.endswith(".py"):
            _import_file(Path(entry), where)
        else:
            _import_module(entry, where)
    return resolved


def _import_file(path: Path, where: str) -> None:
    """Import a plugin file under a name unique to its path (two `plugin.py` in different folders differ)."""
    name = f"plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    if not path.is_file():
        raise PluginError(f"{where} names {path}, which is not a file")
    spec = importlib.util.spec_from_file_location(name, path)
    try:
        spec.loader.get_code(name)  # compiled (and cached) first, so that a file that is not Python is a user error
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes, on some Python versions
        line = f", line {err.lineno}" if getattr(err, "lineno", None) else ""
        reason = shorten(str(getattr(err, "msg", err)))
        raise PluginError(f"{where} names {shorten(str(path), SHOWN_CHARS, keep_end=True)}{line}: not valid "
                          f"Python ({reason})") from None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _import_module(name: str, where: str) -> None:
    """Import a plugin module by its dotted name (a no-op if it already is)."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise
        raise PluginError(f"{where} names module {shorten(name, SHOWN_CHARS, keep_end=True)!r}, which cannot be found") from None


def missing_plugins(recorded: Sequence[str], given: Sequence[str]) -> list[str]:
    """The plugins of `recorded` (what a run was trained with) that `given` (resolved, what the user named)
    does not cover. A module is covered by the same name; a `.py` file by the same path or, since a run and
    its plugin may have moved since, by a file of the same name: either way the code imported is the
    user's choice, never the run's."""
    given_files = {Path(entry).name for entry in given if entry.endswith(".py")}
    given_set = set(given)
    return [entry for entry in recorded
            if entry not in given_set and not (entry.endswith(".py") and Path(entry).name in given_files)]


def describe_plugins(entries: Sequence[str]) -> str:
    """`entries` for a one-line message: each shortened, at most `SHOWN_PLUGINS` of them."""
    shown = [shorten(entry, SHOWN_CHARS, keep_end=True) for entry in entries[:SHOWN_PLUGINS]]
    more = len(entries) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
