"""loopsync.testing's own guarantees: the in-process adapter behaves like the socket
(Date from the emulator's clock, faults played, a socket-only fault refused loudly), and
the fake Loop follows the emulator's state machine."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime

import pytest
import requests

from loopsync.errors import StateConflict
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.loop import LoopEmulator
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import Fault
from loopsync.testing import (
    FakeClock,
    FakeLoop,
    SocketFaultInProcess,
    emulated_loop,
    loop_return,
    mount,
)


def served_loop(clock: FakeClock) -> tuple[LoopEmulator, requests.Session, str]:
    emulator = LoopEmulator(clock=clock, api_keys={LOOP_KEY})
    session = requests.Session()
    session.headers["X-Authorization"] = LOOP_KEY
    return emulator, session, f"{mount(session, emulator)}/api/v1"


def test_in_process_answers_carry_the_emulators_clock_in_their_date_header() -> None:
    clock = FakeClock("2031-02-03T04:05:06Z")
    _, session, url = served_loop(clock)
    answer = session.get(f"{url}/destinations", timeout=5)
    assert answer.status_code == 200
    assert parsedate_to_datetime(answer.headers["Date"]) == clock.now()


def test_in_process_faults_are_played_and_recorded_like_the_sockets() -> None:
    emulator, session, url = served_loop(FakeClock())
    emulator.faults.inject(Fault("status", status=503))
    assert session.get(f"{url}/destinations", timeout=5).status_code == 503
    emulator.faults.inject(Fault("reset"))
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/destinations", timeout=5)
    assert session.get(f"{url}/destinations", timeout=5).status_code == 200


def test_a_fault_only_a_socket_can_play_is_refused_not_silently_skipped() -> None:
    emulator, session, url = served_loop(FakeClock())
    emulator.faults.inject(Fault("drip"))
    with pytest.raises(SocketFaultInProcess, match="ApiServer"):
        session.get(f"{url}/destinations", timeout=5)


def test_emulated_loop_is_the_emulators_state_machine_behind_a_real_client() -> None:
    clock = FakeClock("2026-06-01T12:00:00Z")
    emulator, client = emulated_loop(clock)
    emulator.add_return(make_return(return_id=901, created_at=clock.now() - timedelta(hours=1)))
    [page] = client.iter_returns(clock.now() - timedelta(days=1), clock.now(), "open")
    assert [r["id"] for r in page.returns] == ["901"]
    client.process("901")
    assert emulator.get("901")["state"] == "closed"
    with pytest.raises(StateConflict):
        client.flag("901")


def test_the_fake_loop_refuses_what_the_emulator_refuses_in_its_words() -> None:
    loop = FakeLoop([loop_return("101", state="closed"), loop_return("102", state="review")])
    with pytest.raises(StateConflict, match="closed") as closed:
        loop.process("101")
    assert closed.value.code == "UNPROCESSABLE_RETURN"
    with pytest.raises(StateConflict) as flagged:
        loop.process("102")
    assert flagged.value.code == "UNPROCESSABLE_FLAGGED_RETURN"
    assert loop.writes == []
