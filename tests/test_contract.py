"""The connector contract (`loopsync.testing.contract`) holds for every registered kind,
the generic connector over both transports, through the real engine and the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loopsync.config import load_config
from loopsync.connectors import KINDS, ConnectorKind, register
from loopsync.testing.contract import CHECKS, Check, ContractOptions, check_ids

CASES = [(kind, ContractOptions()) for kind in KINDS.values()] + [
    (KINDS["generic"], ContractOptions(transport="folder"))]


def case_id(case: tuple[ConnectorKind, ContractOptions]) -> str:
    kind, options = case
    return kind.name if options.transport == "http" else f"{kind.name}-{options.transport}"


def run_check(check: Check, kind: ConnectorKind, options: ContractOptions,
              tmp_path: Path) -> None:
    reason = check.skip_reason(kind, options)
    if reason is not None:
        pytest.skip(reason)
    check.run(kind, tmp_path, options)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("check", CHECKS, ids=check_ids())
def test_every_connector_keeps_the_contract(check: Check,
                                            case: tuple[ConnectorKind, ContractOptions],
                                            tmp_path: Path) -> None:
    run_check(check, *case, tmp_path)


# -- a connector added through the registry -------------------------------------------------

EXAMPLE = ConnectorKind("shelfwise", "tests.example_connector.connector:ShelfwiseConnector",
                        "tests.example_connector.emulator:ShelfwiseEmulator",
                        "tests/example_connector/example.yaml")


@pytest.fixture
def example_kind() -> Iterator[ConnectorKind]:
    with register(EXAMPLE) as kind:
        yield kind


@pytest.mark.parametrize("check", CHECKS, ids=check_ids())
def test_a_connector_added_through_the_registry_keeps_the_contract(
        check: Check, example_kind: ConnectorKind, tmp_path: Path) -> None:
    run_check(check, example_kind, ContractOptions(), tmp_path)


def test_the_example_connectors_config_parses(example_kind: ConnectorKind) -> None:
    path = Path(__file__).parent.parent / example_kind.example
    cfg = load_config(path, env={"LOOP_API_KEY": "k" * 20, "SHELFWISE_API_TOKEN": "t" * 20})
    assert cfg.warehouse.kind == "shelfwise" and cfg.warehouse.destinations == {"12": "SW-EAST"}


def test_a_registered_kind_is_gone_after_the_block() -> None:
    with register(EXAMPLE):
        assert "shelfwise" in KINDS
    assert "shelfwise" not in KINDS


def test_registering_a_shipped_kind_again_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"), register(KINDS["xoro"]):
        pass  # pragma: no cover - never reached
