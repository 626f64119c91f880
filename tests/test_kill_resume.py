"""The real worker in a subprocess, SIGKILLed at chosen points of a cycle, then run again:
no return is lost, no second RMA is created, no second process/flag/note is fired.

A kill point is a request the sandbox holds open: "before" holds it without acting (the
worker dies with its intent written and nothing done), "after" acts and then holds the
answer (the worker dies not knowing it succeeded: the hardest case)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from loopsync.connectors import kind_names
from loopsync.testing import Sandbox
from loopsync.sandbox.peoplevox import PeopleVoxEmulator
from loopsync.sandbox.server import Fault, json_response
from loopsync.state import MerchantLock
from loopsync.timeutil import SystemClock

pytestmark = pytest.mark.slow


def start_worker(cfg_path, env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "loopsync", "--log-format", "json", *args, "-c", str(cfg_path)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_worker(cfg_path, env):
    proc = start_worker(cfg_path, env, "run", "--once")
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode(), err.decode()


class Holds:
    def __init__(self):
        self.release = threading.Event()

    def arm(self, api, match, *, after):
        reached = threading.Event()

        def respond(req):
            if after:
                with api.lock:
                    api.handle(req)
            reached.set()
            self.release.wait(30)  # the worker is killed while it waits for this answer
            return json_response({"message": "too late"}, 500)

        api.faults.inject(Fault("custom", response=respond), when=match)
        return reached


# Client limits loosened where the sandbox's limits are off: the subprocess runs on the
# real clock, and this test is about crashes, not pacing.
# A 1 s warehouse timeout keeps the wait before looking up a lost create (two timeouts)
# short.
FAST = {
    "shiphero": {"timeout": "1s"},
    "generic": {"timeout": "1s"},
    "peoplevox": {"rate_limit": {"requests": 1000, "per": "1s"}, "timeout": "1s"},
    "xoro": {"requests_per_second": 10, "timeout": "1s"},
}
LOST_CREATE_SETTLE = 2.2  # seconds: CREATE_SETTLE warehouse timeouts, and a little more


def make_world(tmp_path, kind="shiphero"):
    sb = Sandbox(kind, clock=SystemClock(), rate_limits=False).start()
    seeded = sb.seed(4, states_weights=[("open", 1)])
    cfg_path = sb.write_config(
        tmp_path,
        merchant="killme",
        warehouse_extra=FAST.get(kind),
        state_path=str(tmp_path / "killme.sqlite"),
    )
    return sb, [str(r["id"]) for r in seeded], cfg_path


@pytest.fixture
def holds():
    h = Holds()
    yield h
    h.release.set()


@pytest.fixture
def world(tmp_path, holds):
    sb, ids, cfg_path = make_world(tmp_path)
    yield sb, holds, ids, cfg_path
    sb.stop()


def is_list(req):
    return req.path.endswith("/warehouse/return/list")


def loop_post(action):
    return lambda req: req.method == "POST" and req.path.endswith(f"/{action}")


# How each warehouse's RMA create looks on the wire (Xoro's own app creates RMAs).
CREATES = {
    "shiphero": lambda req: req.path.endswith("/graphql") and b"return_create" in req.body,
    "peoplevox": lambda req: PeopleVoxEmulator.operation(req) == "SaveData",
    "generic": lambda req: req.method == "POST" and req.path.endswith("/rmas"),
}

LOOP_POINTS = [
    ("during ingest", "loop", is_list, False, False),
    ("after the Loop note, answer lost", "loop", loop_post("note"), True, False),
    ("after process, answer lost", "loop", loop_post("process"), True, True),
    ("after flag, answer lost", "loop", loop_post("flag"), True, True),
]
CASES = [
    (kind, *point)
    for kind in kind_names()
    for point in LOOP_POINTS
    if not (kind == "xoro" and "note" in point[0])
]
CASES += [
    (kind, label, "warehouse", CREATES[kind], after, False)
    for kind in CREATES
    for label, after in (
        ("before the RMA is created", False),
        ("after the RMA is created, answer lost", True),
    )
]


@pytest.mark.parametrize(
    "kind, label, api_name, match, after, finished_first",
    CASES,
    ids=[f"{c[0]}: {c[1]}" for c in CASES],
)
def test_sigkill_then_rerun_repeats_nothing(
    tmp_path, holds, kind, label, api_name, match, after, finished_first
):
    sb, ids, cfg_path = make_world(tmp_path, kind)
    try:
        kill_and_rerun(sb, holds, ids, cfg_path, label, api_name, match, after, finished_first)
        watch_only = kind == "xoro"  # Xoro makes its own RMAs: loopsync leaves no note
        for rid in ids:
            assert sb.warehouse.rma_count(rid) == 1, (
                f"{label}: return {rid} has {sb.warehouse.rma_count(rid)} RMAs"
            )
            assert len(sb.loop.actions_for(rid)) == 1, f"{label}: {rid} {sb.loop.actions_for(rid)}"
            notes = sb.loop.notes_for(rid)
            assert sum("created" in n for n in notes) == (0 if watch_only else 1), (
                f"{label}: {notes}"
            )
            assert sum("flagged" in n for n in notes) <= 1, f"{label}: {notes}"
    finally:
        sb.stop()


def kill_and_rerun(sb, holds, ids, cfg_path, label, api_name, match, after, finished_first):
    env = sb.env()
    if finished_first:
        code, _, err = run_worker(cfg_path, env)
        assert code == 0, err
        receive_all(sb, ids)
    api = sb.loop if api_name == "loop" else sb.warehouse
    reached = holds.arm(api, match, after=after)
    proc = start_worker(cfg_path, env, "run", "--once")
    assert reached.wait(30), f"the worker never reached the kill point ({label})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    api.faults.clear()
    if api_name == "warehouse":
        # A create whose answer was lost is looked up only after two warehouse timeouts.
        time.sleep(LOST_CREATE_SETTLE)
    for _ in range(2):
        code, _, err = run_worker(cfg_path, env)
        assert code == 0, err
    if not finished_first:
        receive_all(sb, ids)
        code, _, err = run_worker(cfg_path, env)
        assert code == 0, err


def receive_all(sb, ids):
    for rid, scenario in zip(ids, ["full", "short", "damaged", "full"], strict=True):
        assert sb.warehouse.receive(rid, scenario), f"no RMA for {rid} to receive"


def test_sigterm_stops_serve_promptly_with_exit_0(world):
    sb, _, _, cfg_path = world
    proc = start_worker(cfg_path, sb.env(), "serve")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not sb.recorder.calls("shiphero"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = proc.wait(15)
    assert code == 0, proc.stderr.read().decode()
    assert time.monotonic() - started < 10


def test_lock_held_exits_75(world, tmp_path):
    sb, _, _, cfg_path = world
    with MerchantLock(tmp_path / "killme.sqlite"):
        code, out, _ = run_worker(cfg_path, sb.env())
    assert code == 75 and "killme" in out
