"""Batched PeopleVox look-ups (`PeopleVoxConnector.prepare`): the sales orders and RA
headers of many returns in one GetData each, against the emulated PeopleVox in process."""

from __future__ import annotations

import pytest

from loopsync.connectors.base import NotReady
from loopsync.testing import FakeClock
from tests.test_peoplevox_connector import (
    ServedEmulator,
    create,
    fake_clock,  # noqa: F401 - a fixture used by `emu`
    loop_return,
    make_connector,
    ops,
    push_request,
)
from tests.test_peoplevox_connector import emu as emu  # noqa: PLC0414 - the fixture


def returns(emu: ServedEmulator, n: int, *, first: int = 601) -> list:
    out = []
    for rid in range(first, first + n):
        raw = loop_return(str(rid), order=f"#{rid}")
        emu.on_loop_return(raw)
        out.append(push_request(raw))
    return out


def test_fifty_returns_cost_two_lookups_and_the_two_saves_each(emu, fake_clock: FakeClock):
    reqs = returns(emu, 50)
    con = make_connector(emu, fake_clock)
    con.prepare(reqs)
    assert ops(emu, "GetData") == 2
    for req in reqs:
        located = con.locate(req)
        assert con.find_rma(req, located) is None
        con.create_rma(req, located)
    # Every look-up answered by the two batched reads; the third read is the merchant's
    # reason codes, once per connector.
    assert ops(emu, "GetData") == 3


def test_a_missing_order_is_looked_up_alone_and_waits(emu, fake_clock: FakeClock):
    reqs = returns(emu, 3)
    orphan = push_request(loop_return("699", order="#699"))  # its order never reached PVX
    con = make_connector(emu, fake_clock)
    con.prepare([*reqs, orphan])
    before = ops(emu, "GetData")
    for req in reqs:
        con.locate(req)
    assert ops(emu, "GetData") == before
    with pytest.raises(NotReady):
        con.locate(orphan)
    assert ops(emu, "GetData") == before + 1


def test_an_existing_ra_is_found_not_saved_again(emu, fake_clock: FakeClock):
    reqs = returns(emu, 2)
    made = create(make_connector(emu, fake_clock), reqs[0])  # the state that said so is lost
    con = make_connector(emu, fake_clock)
    con.prepare(reqs)
    before = ops(emu, "GetData")
    found = con.find_rma(reqs[0], con.locate(reqs[0]))
    assert found is not None and found.rma_id == made.rma_id
    # Its items (the header was in the batch), and the reason codes, once a connector.
    assert ops(emu, "GetData") == before + 2
    assert con.find_rma(reqs[1], con.locate(reqs[1])) is None
