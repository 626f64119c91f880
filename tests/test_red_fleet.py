"""Red team, deployment and fleet: what a careless operator does to `state import`,
`shards plan` and a large fleet's start-up, and what loopsync must answer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from loopsync import cli
from loopsync.state.backup import export
from loopsync.testing import FakeClock
from tests.test_state_backup import _config, _state


def _import(config: Path, source: Path) -> int:
    return cli.main(
        ["state", "import", "-c", str(config), "--from", str(source)], out=io.StringIO()
    )


def _exported(tmp_path: Path, clock: FakeClock) -> Path:
    _state(tmp_path / "a" / "s.sqlite", clock, effects=1)
    return export("acme", tmp_path / "a" / "s.sqlite", tmp_path / "acme.export", clock).path


def test_state_import_never_creates_a_missing_state_volume(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The resharding procedure imports into the new shard's volume: with that volume not
    mounted, an import that made the folder would put the state on the pod's own disk
    (lost with it) and report success."""
    file = _exported(tmp_path, clock)
    volume = tmp_path / "volume"  # LOOPSYNC_STATE_DIR, not mounted (missing)
    monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(volume))
    doc = yaml.safe_load(_config(tmp_path, tmp_path / "x").read_text(encoding="utf-8"))
    doc["state_path"] = "acme.sqlite"  # relative: lands in LOOPSYNC_STATE_DIR
    config = tmp_path / "acme.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert _import(config, file) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LOOPSYNC_STATE_DIR" in err[0]
    assert not volume.exists()
    # an absolute state_path's missing folder (not beside the configuration) too
    monkeypatch.delenv("LOOPSYNC_STATE_DIR")
    doc["state_path"] = str(tmp_path / "pv" / "acme.sqlite")
    (tmp_path / "conf").mkdir()
    elsewhere = tmp_path / "conf" / "acme.yaml"
    elsewhere.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert _import(elsewhere, file) == 73
    assert not (tmp_path / "pv").exists()
    monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(volume))
    volume.mkdir()  # mounted: the import goes through
    assert _import(config, file) == 0 and (volume / "acme.sqlite").is_file()
