"""Red team on the PeopleVox look-ups: a tenant that ignores the SearchClause (or an
answer holding rows not asked for) never gives a return another customer's sales order;
the emulated PeopleVox in process."""

from __future__ import annotations

from typing import Any

import pytest

from loopsync.connectors.base import NotReady
from loopsync.testing import FakeClock
from tests.test_peoplevox_batch import returns
from tests.test_peoplevox_connector import (
    ServedEmulator,
    fake_clock,  # noqa: F401 - a fixture used by `emu`
    loop_return,
    make_connector,
    push_request,
)
from tests.test_peoplevox_connector import emu as emu  # noqa: PLC0414 - the fixture


def ignore_search_clause(emu: ServedEmulator) -> None:
    read = emu._read

    def ignoring(operation: str, request: Any) -> Any:
        return read(operation, {**request, "SearchClause": ""})

    emu._read = ignoring  # type: ignore[method-assign]  # a tenant that ignores the filter


@pytest.mark.parametrize("prepared", [True, False])
def test_a_sales_order_look_up_whose_filter_is_ignored_uses_no_other_order(
    emu, fake_clock: FakeClock, prepared
):
    reqs = returns(emu, 1)
    orphan = push_request(loop_return("699", order="#699"))  # its order never reached PVX
    ignore_search_clause(emu)
    con = make_connector(emu, fake_clock)
    if prepared:
        con.prepare([*reqs, orphan])
    with pytest.raises(NotReady):
        con.locate(orphan)  # the one other order in PeopleVox is not its order
    assert con.locate(reqs[0])["sales_order_number"]
