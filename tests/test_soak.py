"""The crash-and-fault soak (`benchmarks/soak.py`), short, and deterministic regression
tests for what the soak found."""

import importlib.util
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loopsync.sandbox.server import Fault

SOAK_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("loopsync_soak", SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def is_return_create(req):
    return req.path == "/graphql" and b"return_create" in req.body


# -- regressions found by the soak ------------------------------------------------------------


def test_garbled_answer_to_return_create_does_not_create_a_second_rma(
    make_sandbox, tmp_path, clock
):
    """Found by the soak: ShipHero ran return_create, then a proxy's HTML page came back
    (HTTP 200, not GraphQL). That was a permanent error, which the engine takes as "never
    sent", so the next cycle created the RMA again. A garbled answer to a mutation is an
    unknown outcome: the next cycle looks the RMA up (partner_id) and links it."""
    sb = make_sandbox("shiphero")
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    cfg = sb.merchant_config(tmp_path)
    sb.warehouse.faults.inject(Fault("malformed"), when=is_return_create)
    sb.run_cycle(cfg)
    assert sb.warehouse.rma_count(rid) == 1  # it ran; the answer was garbage
    clock.advance(60)
    second = sb.run_cycle(cfg)
    assert second.ok, second.stage_errors
    assert sb.warehouse.rma_count(rid) == 1, "the RMA was created twice"
    assert second.counts.linked == 1 and second.counts.pushed == 0
    assert sum("created" in n for n in sb.loop.notes_for(rid)) == 1


def test_note_that_lands_after_the_timeout_is_not_written_twice(make_sandbox, tmp_path, clock):
    """Found by the soak (3 times: once in 75 kills, then twice in 300): Loop wrote a note
    only after loopsync's read timeout, or while the worker was killed and restarted. The
    look-up that followed (the same run's act stage, or the restarted worker a second later)
    did not see it yet, and wrote it again. A note whose answer was lost is looked up only
    two Loop read timeouts after the attempt, and meanwhile waits without holding back the
    return's other effects."""
    sb = make_sandbox("shiphero")
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    cfg = sb.merchant_config(tmp_path, timeout="1s")
    release = threading.Event()
    looked_up = []

    posted = []

    def lands_late(req):
        posted.append(clock.now())
        release.wait(10)  # Loop is still writing it when the client gives up (1 s)
        with sb.loop.lock:
            return sb.loop.handle(req)

    def notes_read(req):
        if posted:  # the check before the first write is not a look-up of a lost one
            looked_up.append(clock.now())
        with sb.loop.lock:
            return sb.loop.handle(req)

    sb.loop.faults.inject(
        Fault("custom", response=lands_late),
        when=lambda r: r.method == "POST" and r.path.endswith("/note"),
    )
    sb.loop.faults.inject(
        Fault("custom", response=notes_read),
        times=100,
        when=lambda r: r.method == "GET" and r.path.endswith("/notes"),
    )
    sb.run_cycle(cfg)  # the RMA note's answer is lost
    sb.warehouse.receive(rid, "full")
    clock.advance(1)  # a restarted worker, a second later
    second = sb.run_cycle(cfg)
    assert looked_up == [], "looked the lost note up while Loop could still be writing it"
    assert sb.loop.actions_for(rid) == ["process"], second.stage_errors  # not held back
    release.set()
    deadline = time.monotonic() + 10
    while not sb.loop.notes_for(rid) and time.monotonic() < deadline:
        time.sleep(0.02)
    clock.advance(600)
    sb.run_cycle(cfg)
    assert looked_up, "the lost note was never looked up"
    notes = sb.loop.notes_for(rid)
    assert sum("created" in n for n in notes) == 1, f"RMA note written twice: {notes}"


def test_create_still_running_at_shiphero_when_looked_up_is_not_repeated(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("shiphero")
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    cfg = sb.merchant_config(tmp_path, warehouse_extra={"timeout": "1s"})
    release, landed = threading.Event(), threading.Event()

    def lands_late(req):
        release.wait(10)  # ShipHero is still creating it when the client gives up (1 s)
        with sb.warehouse.lock:
            answer = sb.warehouse.handle(req)
        landed.set()
        return answer

    def looked_up(req):
        with sb.warehouse.lock:
            answer = sb.warehouse.handle(req)
        release.set()  # ... and finishes right after the next run's look-up
        return answer

    sb.warehouse.faults.inject(Fault("custom", response=lands_late), when=is_return_create)
    sb.warehouse.faults.inject(
        Fault("custom", response=looked_up), when=lambda r: b"LoopsyncReturns" in r.body
    )
    sb.run_cycle(cfg)
    clock.advance(1)
    sb.run_cycle(cfg)
    release.set()
    assert landed.wait(10)
    assert sb.warehouse.rma_count(rid) == 1
    clock.advance(3)  # two read timeouts on: now it is looked up
    sb.run_cycle(cfg)
    assert sb.warehouse.rma_count(rid) == 1
    assert any("created" in n for n in sb.loop.notes_for(rid)), "the RMA was never linked"


def test_garbled_answer_to_a_shiphero_read_is_retried(make_sandbox, tmp_path):
    """The same garbage on a read is transient: retried in the call, not a failed stage."""
    sb = make_sandbox("shiphero")
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    cfg = sb.merchant_config(tmp_path)
    sb.warehouse.faults.inject(Fault("malformed"), when=lambda r: b"LoopsyncOrders" in r.body)
    result = sb.run_cycle(cfg)
    assert result.ok, result.stage_errors
    assert sb.warehouse.rma_count(str(raw["id"])) == 1


# -- the soak itself ----------------------------------------------------------------------
#
# Two short soaks, each run once for the tests below. Workers are killed after a number of
# sandbox requests drawn by the seed (not after a time), so the assertions count kills,
# faults and records, never how much got done in a wall time: the machine may be slow (the
# 900 s cap is only a safety net, far above the usual 15 s).

SHORT = {"seed": 11, "max_requests": 20, "max_delay": 4.0, "parallel": 5, "max_seconds": 900}


def short_soaks(tmp_path_factory):
    """Both soaks at once (they mostly wait on their workers): the classic one, 10 kills
    with the faults the worker has long survived and no poison; the hostile one, 5 kills
    with every fault, a transport fault armed per run, and poison records."""
    soak = load_soak()

    def one(name, **kw):
        reports = soak.run_soak(
            soak.CONNECTORS, workdir=tmp_path_factory.mktemp(name), keep=True, **SHORT, **kw
        )
        return soak, reports, soak.render(reports, seconds=0, seed=SHORT["seed"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        classic = pool.submit(one, "classic", kills=10, poison=False, transport=False)
        hostile = pool.submit(one, "hostile", kills=5)
        return {"classic": classic.result(), "hostile": hostile.result()}


@pytest.fixture(scope="module")
def soaks(tmp_path_factory):
    return short_soaks(tmp_path_factory)


@pytest.fixture
def classic_soak(soaks):
    return soaks["classic"]


@pytest.fixture
def hostile_soak(soaks):
    return soaks["hostile"]


@pytest.mark.slow
def test_short_soak_every_connector(classic_soak):
    """Two SIGKILLs per connector, each after a count of requests, with faults in every
    API; every invariant holds (one RMA per eligible return, one process/flag per finished
    return, nothing lost, no cursor past unread work, no repeated note, no crashed run)."""
    soak, reports, text = classic_soak
    assert [r.kills for r in reports] == [2] * len(soak.CONNECTORS), text
    assert all(r.ok for r in reports), text
    assert sum(r.crashed_runs for r in reports) == 0, text
    assert sum(r.finished for r in reports) >= 10, text  # the clean phase finishes them


@pytest.mark.slow
def test_hostile_soak_counts_kills_and_never_repeats_an_effect(hostile_soak):
    """With transport faults and poison too, kills still come by count, and whatever else
    fails (crashes are counted, see below), nothing is done twice."""
    soak, reports, text = hostile_soak
    assert [r.kills for r in reports] == [1] * len(soak.CONNECTORS), text
    assert all(sum(p.startswith("Loop") for p in r.poison) == 3 for r in reports), text
    assert sum(r.duplicate_rmas + r.duplicate_actions + r.duplicate_notes for r in reports) == 0, (
        text
    )


@pytest.mark.slow
def test_hostile_soak_no_crashed_run_no_loss_poison_held(hostile_soak):
    """Every invariant holds under the hostile soak too: no worker run crashed, nothing
    lost, each poison record (three on Loop, one in each warehouse) held and acted on by no
    one, and every transport fault kind was met."""
    soak, reports, text = hostile_soak
    assert sum(r.crashed_runs for r in reports) == 0, text
    assert sum(r.lost for r in reports) == 0, text
    assert all(r.ok for r in reports), text
    assert all(any(not p.startswith("Loop") for p in r.poison) for r in reports), text
    labels = {label.split(" ", 1)[1] for r in reports for label in r.faults}
    assert set(soak.TRANSPORT_KINDS) <= labels, text


@pytest.mark.slow
def test_hostile_soak_delivers_webhooks_and_every_forgery_is_refused(hostile_soak):
    """Webhooks go to the serve workers' intake alongside the kills and faults, lost,
    duplicated, delayed and forged: forgeries are refused (none accepted), deliveries are
    stored, and still nothing is done twice and nothing is lost (the tests above)."""
    soak, reports, text = hostile_soak
    hooks = soak.webhook_totals(reports)
    assert hooks["delivered"] > 0 and hooks["duplicated"] > 0 and hooks["lost"] > 0, text
    assert hooks["forged_refused"] > 0 and hooks["forged_accepted"] == 0, text
    assert sum(r.intake["accepted"] for r in reports) > 0, text
    assert "forged webhook" not in text, text
