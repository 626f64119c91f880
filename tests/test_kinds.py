"""`connectors.KINDS` is the one list of warehouse kinds: every list reads it, and every
table keyed by kind names registered kinds only."""

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from loopsync import cli
from loopsync.config import load_config
from loopsync.connectors import (
    KINDS,
    available_kinds,
    connector_class,
    iter_kinds,
    kind_names,
    register,
    variant_name,
    variants,
)
from loopsync.connectors.base import WarehouseConnector
from loopsync.sandbox.base import WarehouseEmulator

REPO = Path(__file__).resolve().parent.parent


def _choices(command: str) -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in sub.choices[command]._actions if a.dest == "warehouse")
    return list(action.choices)


@pytest.mark.parametrize("kind", kind_names())
def test_every_kind_names_its_connector_emulator_and_example(kind):
    entry = KINDS[kind]
    connector = entry.load()
    assert issubclass(connector, WarehouseConnector) and connector.kind == kind
    assert connector.creates_rmas == entry.creates_rmas
    assert issubclass(entry.load_emulator(), WarehouseEmulator)
    assert (REPO / entry.example).is_file()
    assert entry.transports and len(set(entry.transports)) == len(entry.transports)


def test_every_registered_kind_is_installed():
    assert available_kinds() == kind_names() == [k.name for k in iter_kinds()]


@pytest.mark.parametrize("command", ["demo", "sandbox"])
def test_cli_offers_exactly_the_registered_kinds(command):
    assert _choices(command) == kind_names()


def test_variants_cover_every_transport_of_every_kind_once():
    pairs = variants()
    assert len(set(pairs)) == len(pairs)
    assert {kind for kind, _ in pairs} == set(KINDS)
    names = [variant_name(kind, transport) for kind, transport in pairs]
    assert len(set(names)) == len(names)
    assert names[: len(KINDS)] == kind_names()  # a kind's default transport is its own name


def _load(path: Path, name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_soak_runs_every_variant_and_its_fault_table_names_registered_kinds():
    soak = _load(REPO / "benchmarks" / "soak.py", "loopsync_soak_kinds")
    assert tuple(variant_name(k, t) for k, t in variants()) == soak.CONNECTORS
    assert set(soak.SPECIFIC_FAULTS) <= set(KINDS)


def test_benchmark_tables_name_registered_kinds_and_push_skips_watch_only_kinds():
    poll = importlib.import_module("benchmarks.poll")
    push = importlib.import_module("benchmarks.push")
    assert set(poll.ADD_RMA) <= set(KINDS)
    assert {kind for kind, _ in push.CONNECTORS} == {k.name for k in iter_kinds() if k.creates_rmas}


def test_test_tables_keyed_by_kind_name_registered_kinds():
    # Optional per-kind knowledge: a new kind runs the kill-resume cases on Loop's side at
    # once, and the warehouse-side ones once its create is described in CREATES.
    kill = importlib.import_module("tests.test_kill_resume")
    assert set(kill.FAST) <= set(KINDS)
    assert set(kill.CREATES) <= {k.name for k in iter_kinds() if k.creates_rmas}


# -- adding a kind: one package, one emulator, one example, one registry line ----------------


@pytest.fixture
def example_registered():
    # The example connector of tests/example_connector (the contract suite runs it too).
    from tests.example_connector import KIND

    with register(KIND):
        yield KIND


def test_a_kind_added_by_one_registry_line_is_offered_configured_and_loaded(example_registered):
    name = example_registered.name
    assert name in kind_names() and name in available_kinds() and (name, "http") in variants()
    assert name in _choices("demo") and name in _choices("sandbox")
    cfg = load_config(
        REPO / example_registered.example,
        env={"LOOP_API_KEY": "a-loop-key-for-tests", "SHELFWISE_API_TOKEN": "a-shelfwise-token"},
    )
    assert cfg.warehouse.kind == name and cfg.warehouse.connector.page_size == 100
    assert connector_class(name).kind == name
    assert example_registered.load_emulator().kind == name


def test_the_example_kinds_files_are_one_package_of_the_standard_shape():
    package = REPO / "tests" / "example_connector"
    assert sorted(p.name for p in package.glob("*.py")) == [
        "__init__.py",
        "connector.py",
        "emulator.py",
        "mapping.py",
        "settings.py",
        "wire.py",
    ]


def test_using_one_kind_imports_no_other_kinds_package():
    code = (
        "import sys; from loopsync.connectors import available_kinds, connector_class; "
        "available_kinds(); connector_class('xoro'); "
        "print(' '.join(m for m in sys.modules if m.startswith('loopsync.connectors.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "loopsync.connectors.xoro.connector" in loaded
    assert not [m for m in loaded if m.split(".")[2] in set(KINDS) - {"xoro"}], loaded
