"""The facts the code depends on live in the repository: every `docs/...` file a module
cites exists, and every docs/api page names its sources."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"docs/api/[\w.-]+\.md")


def test_every_docs_page_cited_by_the_code_exists():
    cited = {
        m.group(0): path
        for path in (ROOT / "src" / "loopsync").rglob("*.py")
        for m in CITED.finditer(path.read_text(encoding="utf-8"))
    }
    assert cited, "no module cites docs/api: the pattern or the docstrings changed"
    missing = {
        page: str(path.relative_to(ROOT))
        for page, path in cited.items()
        if not (ROOT / page).is_file()
    }
    assert not missing, missing


def test_every_api_page_lists_its_sources():
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    assert {p.name for p in pages} >= {
        "loop.md",
        "shiphero.md",
        "peoplevox.md",
        "xoro.md",
        "generic.md",
    }
    for page in pages:
        if page.name != "README.md":
            assert "\n## Sources\n" in page.read_text(encoding="utf-8"), page.name
