"""The project's docs stand alone: no reference to a design document the repository does not ship."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_docs_do_not_refer_to_design_md():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    assert [str(p.relative_to(ROOT)) for p in pages if "DESIGN.md" in p.read_text()] == []
