"""The connector contract (`loopsync.testing.contract`) holds for every registered kind,
the generic connector over both transports, through the real engine and the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loopsync.config import load_config
from loopsync.connectors import KINDS, ConnectorKind, register
from loopsync.models import ItemStatus
from loopsync.paging import PageWalk
from loopsync.testing.contract import CHECKS, Check, ContractOptions, check_ids

from .example_connector import KIND as EXAMPLE
from .example_connector import connector as connector_mod
from .example_connector import mapping as mapping_mod
from .example_connector import wire as wire_mod

CASES = [(kind, ContractOptions()) for kind in KINDS.values()] + [
    (KINDS["generic"], ContractOptions(transport="folder"))
]


def case_id(case: tuple[ConnectorKind, ContractOptions]) -> str:
    kind, options = case
    return kind.name if options.transport == "http" else f"{kind.name}-{options.transport}"


def run_check(check: Check, kind: ConnectorKind, options: ContractOptions, tmp_path: Path) -> None:
    reason = check.skip_reason(kind, options)
    if reason is not None:
        pytest.skip(reason)
    check.run(kind, tmp_path, options)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("check", CHECKS, ids=check_ids())
def test_every_connector_keeps_the_contract(
    check: Check, case: tuple[ConnectorKind, ContractOptions], tmp_path: Path
) -> None:
    run_check(check, *case, tmp_path)


# -- a connector added through the registry -------------------------------------------------


@pytest.fixture
def example_kind() -> Iterator[ConnectorKind]:
    with register(EXAMPLE) as kind:
        yield kind


@pytest.mark.parametrize("check", CHECKS, ids=check_ids())
def test_a_connector_added_through_the_registry_keeps_the_contract(
    check: Check, example_kind: ConnectorKind, tmp_path: Path
) -> None:
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


# -- the contract has teeth: it fails a connector that breaks a guarantee --------------------


def never_finds(self: Any, req: Any, located: Any) -> None:
    return None


def trusting_item(rma_id: str, n: int, line: dict[str, Any]) -> ItemStatus:
    # int() takes "１" (a full-width digit); conditions dropped
    return ItemStatus(line["sku"], int(line["expected"]), int(line["received"]))


class UncappedWalk(PageWalk[Any]):
    def __init__(self, fetch: Any, **kw: Any) -> None:
        super().__init__(fetch, **{**kw, "max_pages": 10**9})


BROKEN = {
    "lost_create_is_looked_up": (connector_mod.ShelfwiseConnector, "find_rma", never_finds),
    "malformed_record_is_held": (mapping_mod, "_item", trusting_item),
    "receipts_decide_once": (mapping_mod, "_item", trusting_item),
    "pagination_is_bounded": (wire_mod, "PageWalk", UncappedWalk),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_contract_fails_a_connector_that_breaks_its_guarantee(
    name: str, example_kind: ConnectorKind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, attribute, broken = BROKEN[name]
    monkeypatch.setattr(target, attribute, broken)
    check = next(c for c in CHECKS if c.name == name)
    with pytest.raises(AssertionError):
        check.run(example_kind, tmp_path, ContractOptions())
