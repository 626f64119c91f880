"""graphql-core, used only by the ShipHero emulator, is an optional extra (`sandbox`),
installed by the `test` extra; without it the other kinds still work and the ShipHero
demo says which extra to install instead of showing a traceback."""

from __future__ import annotations

import io
import sys
import tomllib
from pathlib import Path

import pytest

from loopsync.cli import main
from loopsync.connectors import KINDS
from loopsync.sandbox import emulator_class

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.fixture
def without_graphql(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if graphql-core were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "graphql", None)
    for name in [m for m in sys.modules if m.startswith("graphql.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "loopsync.sandbox.shiphero", raising=False)


def test_graphql_core_is_an_extra_that_the_test_extra_installs() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert not any(d.startswith("graphql-core") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("graphql-core") for d in extras["sandbox"])
    assert "loopsync[sandbox]" in extras["test"]


def test_without_graphql_core_the_shiphero_demo_names_the_extra_and_exits_2(
    without_graphql: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    assert main(["demo", "--warehouse", "shiphero"], out=out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "graphql" in err[0] and "pip install 'loopsync[sandbox]'" in err[0]
    assert "Traceback" not in err[0] and out.getvalue() == ""


def test_without_graphql_core_every_other_emulator_loads(without_graphql: None) -> None:
    for kind in KINDS:
        if kind == "shiphero":
            with pytest.raises(ModuleNotFoundError, match=r"loopsync\[sandbox\]"):
                emulator_class(kind)
        else:
            assert emulator_class(kind).kind == kind
