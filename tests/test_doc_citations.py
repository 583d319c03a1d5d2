"""Code and docs cite only files a maintainer with the repository has (issue 20 item 7)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("repdeploy", "tests", "benchmarks", "tools", "docs") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".md") and p.name != Path(__file__).name] + [ROOT / "README.md"]


def test_no_citation_leaves_the_repository():
    outside = re.compile(r"\b(reference|design|style)\.md\b|shared/")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not hits, f"citations of files outside the repository (move the fact into docs/): {hits}"


def test_every_cited_docs_page_exists():
    cited = {m for p in SOURCES for m in re.findall(r"docs/([A-Za-z_-]+\.md)", p.read_text(encoding="utf-8"))}
    assert cited, "the code cites its docs pages"
    assert sorted(c for c in cited if not (ROOT / "docs" / c).is_file()) == []
