"""requirements.txt and environment.yml must pin the same packages to the same exact versions."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXACT_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[A-Za-z0-9.+!_-]+)$")


def _normalized(name: str) -> str:
    """PEP 503 name normalization, so `PyYAML` and `pyyaml` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: list[str], source: str) -> dict[str, str]:
    """Map package -> version; fails on any requirement that is not an exact `==` pin."""
    pins = {}
    for requirement in requirements:
        match = EXACT_PIN.match(requirement.strip())
        if match is None:
            pytest.fail(f"{source}: {requirement!r} is not pinned with ==")
        pins[_normalized(match["name"])] = match["version"]
    return pins


def _requirements_txt_pins() -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    return _pins([line for line in lines if line], "requirements.txt")


def _environment_yml_pins() -> dict[str, str]:
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict) and "pip" in entry]
    assert len(pip_sections) == 1, "environment.yml: expected one pip: section"
    return _pins(pip_sections[0], "environment.yml")


def test_requirements_pin_every_package_exactly():
    assert _requirements_txt_pins(), "requirements.txt pins nothing"


def test_environment_and_requirements_pin_the_same_versions():
    assert _environment_yml_pins() == _requirements_txt_pins()


def test_gpu_environment_pins_the_same_versions_with_dgl_from_its_cuda_index():
    environment = yaml.safe_load((REPO_ROOT / "environment-gpu.yml").read_text())
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict) and "pip" in entry)
    options = [line for line in pip if line.startswith("-")]
    assert options == ["--find-links https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html"]
    pins = _pins([line for line in pip if not line.startswith("-")], "environment-gpu.yml")
    assert pins.pop("dgl") == "2.1.0+cu121"
    expected = _requirements_txt_pins()
    expected.pop("dgl")
    assert pins == expected
