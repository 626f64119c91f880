"""Every example configuration in the repository parses (so the docs stay true)."""

from pathlib import Path

import pytest

from loopsync.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "config.example.yaml"]
ENV = {
    name: f"value-of-{name.lower()}"
    for name in (
        "LOOP_API_KEY",
        "SHIPHERO_REFRESH_TOKEN",
        "SHIPHERO_ACCESS_TOKEN",
        "PEOPLEVOX_PASSWORD",
        "XORO_API_KEY",
        "XORO_API_SECRET",
        "THREEPL_TOKEN",
        "THREEPL_SIGNING_SECRET",
    )
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses(path, tmp_path, monkeypatch):
    text = path.read_text()
    # Folder examples name server paths; point them at folders that exist here.
    for name in ("outbox", "inbox", "archive", "rejected"):
        (tmp_path / name).mkdir()
        text = text.replace(f"/srv/3pl/{name}", str(tmp_path / name))
    copy = tmp_path / path.name
    copy.write_text(text)
    cfg = load_config(copy, env=ENV)
    assert cfg.merchant and cfg.warehouse.kind in path.read_text()
