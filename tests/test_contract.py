"""The connector contract (`loopsync.testing.contract`) holds for every registered kind,
the generic connector over both transports, through the real engine and the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopsync.connectors import KINDS, ConnectorKind
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
