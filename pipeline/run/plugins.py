"""Plugins: user modules that add parts (memory updaters, embeddings, predictors, sampling strategies,
schedulers) to the registries of `common.registry` simply by being imported.

A config's `plugins` list names them, each either a `.py` file (relative to the config file's folder) or
the name of an importable module; importing one runs its `@REGISTRY.register(...)` decorators, so the
names it adds become valid config values. Importing is idempotent: a config validated twice (file, then
command-line overrides) imports each plugin once.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from common.errors import PluginError


def load_plugins(entries: list[str], base_dir: Path, source: str) -> list[str]:
    """Import every plugin in `entries` and return them resolved (`.py` paths made absolute against
    `base_dir`), so a config that is stored and validated again finds the same files from anywhere.

    `source` names the config in errors. An error raised while a plugin runs is a bug in the plugin and
    propagates with its traceback; only a plugin that does not exist is a `PluginError`.
    """
    resolved = [str((base_dir / entry).resolve()) if entry.endswith(".py") else entry for entry in entries]
    for entry in resolved:
        if entry.endswith(".py"):
            _import_file(Path(entry), source)
        else:
            _import_module(entry, source)
    return resolved


def _import_file(path: Path, source: str) -> None:
    """Import a plugin file under a name unique to its path (two `plugin.py` in different folders differ)."""
    name = f"plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    if not path.is_file():
        raise PluginError(f"{source}: key 'plugins' names {path}, which is not a file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _import_module(name: str, source: str) -> None:
    """Import a plugin module by its dotted name (a no-op if it already is)."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
            raise
        raise PluginError(f"{source}: key 'plugins' names module {name!r}, which cannot be found") from None
