"""The package layout's promises, checked on the source: the stage engine is generic, and DGL's backend is
chosen in one place."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN_PACKAGES = {"graph", "sampler", "memory", "models", "pipeline.stages", "pipeline.run"}


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth of its code."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", sorted((ROOT / "pipeline" / "engine").glob("*.py")), ids=lambda p: p.name)
def test_the_engine_imports_no_domain_package(path):
    domain = {module for module in imported_modules(path)
              if any(module == package or module.startswith(package + ".") for package in DOMAIN_PACKAGES)}
    assert not domain, f"pipeline/engine/{path.name} imports {sorted(domain)}"


def test_dgl_backend_is_set_in_one_place():
    sources = [path for path in ROOT.rglob("*.py") if ".venv" not in path.parts and "tests" not in path.parts]
    setting = [path.relative_to(ROOT).as_posix() for path in sources if "DGLBACKEND" in path.read_text()]
    assert setting == ["common/__init__.py"]
