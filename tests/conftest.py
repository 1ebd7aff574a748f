"""Shared fixtures: the bundled real datasets (each loaded once per session), the scripts folder and the
scripts' command lines run in the test's process."""
from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from graph.datasets import load_dataset
from graph.events import EventStream
from small import write_events_csv


@pytest.fixture(scope="session")
def uci_events() -> EventStream:
    """The bundled UCI messages stream (DyGLib CSV)."""
    return load_dataset("uci")


@pytest.fixture(scope="session")
def wikipedia_events() -> EventStream:
    """The bundled Wikipedia edits stream (JODIE text)."""
    return load_dataset("wikipedia")


@pytest.fixture(scope="session")
def enron_events() -> EventStream:
    """The bundled Enron e-mail stream (DyGLib CSV)."""
    return load_dataset("enron")


@pytest.fixture(scope="session")
def scripts_dir() -> Path:
    """The repository's scripts/ folder (command-line entry points)."""
    return Path(__file__).resolve().parents[1] / "scripts"


def script_cli(scripts_dir: Path, monkeypatch, capsys, script: str) -> Callable[..., tuple[int, str, str]]:
    """Run scripts/<script>.py's command line in this process; return (exit code, stdout, stderr).

    train.py's SIGINT/SIGTERM handlers are left out so that pytest keeps its own."""
    monkeypatch.syspath_prepend(str(scripts_dir))
    module = importlib.import_module(script)
    from _cli import run_cli
    if script == "train":
        monkeypatch.setattr(module, "stop_on_signals", threading.Event)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        with pytest.raises(SystemExit) as exit_:
            run_cli(module.main)
        captured = capsys.readouterr()
        return exit_.value.code, captured.out, captured.err

    return run


@pytest.fixture
def train_cli(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """scripts/train.py's command line, run in this process."""
    return script_cli(scripts_dir, monkeypatch, capsys, "train")


@pytest.fixture
def evaluate_cli(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """scripts/evaluate.py's command line, run in this process."""
    return script_cli(scripts_dir, monkeypatch, capsys, "evaluate")


@pytest.fixture(scope="module")
def workdir(request, tmp_path_factory) -> Path:
    """A folder the tests of one module share (named after the module)."""
    return tmp_path_factory.mktemp(request.module.__name__)


@pytest.fixture(scope="module")
def data_file(workdir) -> Path:
    """The small synthetic CSV (`small.write_events_csv`, seed 3) in the module's folder."""
    return write_events_csv(workdir / "events.csv", seed=3)


@pytest.fixture(scope="module")
def data_events(data_file) -> EventStream:
    """`data_file` loaded as an event stream."""
    return load_dataset(str(data_file))
