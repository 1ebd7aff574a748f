"""The documentation stays true to the repository: every benchmark JSON it cites exists, every relative
link (and #anchor into a markdown file) resolves, and the README stays short."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
BENCHMARK_JSON = re.compile(r"benchmarks/[\w.-]+\.json")


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (a `# comment` in a block is no heading)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(path), re.M)}


def cases(pattern: re.Pattern, text_of) -> list:
    return [pytest.param(doc, hit, id=f"{doc.relative_to(ROOT)}:{hit}")
            for doc in DOCS for hit in sorted(set(pattern.findall(text_of(doc))))]


def relative(link: str) -> bool:
    return not re.match(r"^(https?:|mailto:)", link)


@pytest.mark.parametrize("doc, json_path", cases(BENCHMARK_JSON, lambda p: p.read_text(encoding="utf-8")))
def test_cited_benchmark_json_exists(doc: Path, json_path: str):
    assert (ROOT / json_path).is_file(), f"{doc.relative_to(ROOT)} cites {json_path}, which is not in the repo"


@pytest.mark.parametrize("doc, link", [c for c in cases(LINK, prose) if relative(c.values[1])])
def test_relative_link_resolves(doc: Path, link: str):
    target, _, anchor = link.partition("#")
    path = (doc.parent / target).resolve() if target else doc
    assert path.exists(), f"{doc.relative_to(ROOT)} links to {link}: {target} does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{doc.relative_to(ROOT)} links to {link}: no heading #{anchor} in {path.name}"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES} allowed"
