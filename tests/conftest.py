"""Shared fixtures: the bundled real datasets (each loaded once per session) and the scripts folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from graph.datasets import load_dataset
from graph.events import EventStream


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
