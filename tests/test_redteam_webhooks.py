"""Red team on webhook intake and its inbox: what an attacker or a careless operator
tried, as tests (each one failed before its fix)."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import webhooks
from loopsync.errors import Unreadable
from loopsync.state import Store
from tests.test_webhooks_cli import merchant  # noqa: F401 - a fixture used by name
from tests.test_webhooks_http import (  # noqa: F401 - fixtures used by name
    SHIPHERO_SECRET,
    Served,
    hook_env,
    loop_body,
    make_served,
    rmas_in_warehouse,
    served,
)


def inbox_keys(srv: Any) -> list[str]:
    store = Store(srv.cfg.state_path, srv.listener.clock)
    try:
        return [str(r[0]) for r in store.conn.execute("select key from inbox")]
    finally:
        store.close()


def test_a_captured_shiphero_event_replayed_under_new_message_ids_is_stored_once(served):
    # The message id is a header: the signature does not cover it. An attacker who saw one
    # genuine delivery could replay it under endless new ids, each a new event to handle
    # (a Loop read and a ShipHero poll each, the merchant's gate held, the inbox growing).
    _, srv = served
    body = json.dumps({"webhook_type": "Return Update", "return_id": 7, "status": "x"}).encode()
    sig = webhooks.hmac_b64(SHIPHERO_SECRET, body)
    for n in range(5):
        headers = {"x-shiphero-hmac-sha256": sig, "x-shiphero-message-id": f"forged-{n}"}
        assert srv.post("/webhooks/shiphero/acme", body, headers)[0] == 200
    assert len(inbox_keys(srv)) == 1
    assert srv.hooks.drain(srv.cfg) == 1


def test_handled_events_are_pruned_for_a_merchant_without_a_loop_secret(make_served, clock):
    # Pruning ran only after the Loop-only "missed" count: a ShipHero- or 3PL-only
    # merchant's inbox grew forever.
    _, srv = make_served(loop_secret=None, generic_secret=None)
    body = b'{"webhook_type": "Return Update", "return_id": 999999, "status": "pending"}'
    sig = webhooks.hmac_b64(SHIPHERO_SECRET, body)
    assert srv.post("/webhooks/shiphero/acme", body, {"x-shiphero-hmac-sha256": sig})[0] == 200
    assert srv.hooks.drain(srv.cfg) == 1
    clock.advance(31 * 24 * 3600)
    with srv.hooks.cycle(srv.cfg):
        pass
    assert inbox_keys(srv) == []


def test_refusals_counted_before_a_graceful_stop_are_written_down(served, clock):
    # Refusal counts wait in memory for the merchant's worker; a stop (SIGTERM, the
    # listener closing) lost every count since its last wake-up.
    _, srv = served
    body = b'{"id": "1"}'
    forged = {"X-Loop-Signature": webhooks.hmac_b64("not-the-secret-at-all", body)}
    assert srv.post("/webhooks/loop/acme", body, forged)[0] == 401
    srv.hooks.close()
    store = Store(srv.cfg.state_path, clock)
    try:
        assert store.inbox.figures().refused == {"bad_signature": 1}
    finally:
        store.close()


def test_run_once_handles_events_a_serve_stored_but_did_not_handle(served, clock, monkeypatch):
    # A serve killed after its 200s, then cron (`run --once`): nothing handled the stored
    # events, and `status` said "N not handled yet" forever.
    from loopsync.cli import main

    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    for name, value in hook_env(sb).items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--once", "-c", str(srv.cfg.file)]) == 0
    store = Store(srv.cfg.state_path, clock)
    try:
        assert store.inbox.unhandled() == [] and store.inbox.figures().unhandled == 0
    finally:
        store.close()
    assert rmas_in_warehouse(sb, raw["id"]) == 1


def test_an_event_for_a_merchant_whose_state_volume_is_missing_is_503_and_creates_nothing(
    served, clock, tmp_path_factory
):
    # The intake opened the state file as every writer does, creating the folder the
    # operator named for the volume: a 200 for an event kept on the container's own
    # filesystem (lost with it), where `run` and `serve` refuse with exit 73.
    sb, first = served
    # an absolute state_path away from the configuration: the volume, never mounted
    volume = tmp_path_factory.mktemp("elsewhere") / "volume"
    cfg = dataclasses.replace(first.cfg, state_path=volume / "acme.sqlite")
    srv = Served(cfg, clock)
    srv.listener._thread.start()
    try:
        (raw,) = sb.seed(1, states_weights=[("open", 1)])
        assert srv.loop_event(loop_body(raw, clock))[0] == 503
    finally:
        srv.listener.server.shutdown()
        srv.listener.server.server_close()
    assert not volume.exists()
    from loopsync.inbox import finish_stored

    assert finish_stored(cfg, threading.Event()) == 0  # cron's run: nothing created either
    assert not volume.exists()


def test_an_unknown_merchant_is_answered_exactly_like_a_known_one_badly_signed(served):
    # 404 for an unknown merchant and 401 for a known one told an attacker which merchant
    # names exist (the decoy key already made both cost the same time).
    _, srv = served
    body = b'{"id": "1"}'
    forged = {"X-Loop-Signature": webhooks.hmac_b64("not-the-secret-at-all", body)}
    for headers in (forged, {}):
        known = srv.post("/webhooks/loop/acme", body, headers)
        unknown = srv.post("/webhooks/loop/nobody", body, headers)
        assert known == unknown == (401, b"refused\n")
    # a sender the merchant has no secret for is no different
    assert srv.post("/webhooks/ftp/acme", body, forged) == (401, b"refused\n")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=8,
)
answers = st.builds(
    lambda node: {"data": {"webhook_create": node}},
    json_values | st.builds(lambda s: {"webhook": {"shared_signature_secret": s}}, json_values),
)


@settings(max_examples=150, deadline=None)
@given(json_values | answers)
def test_webhook_create_answer_yields_a_usable_secret_or_unreadable(body):
    # A hostile or broken answer ({"data": {"webhook_create": null}}) raised AttributeError
    # (a traceback from `webhooks register`), and a secret too short, blank-padded or with
    # a control character was stored, so the merchant's file no longer loaded at all.
    from loopsync.configkit import secret_problem
    from loopsync.connectors.shiphero.mapping import webhook_secret

    try:
        secret = webhook_secret(body)
    except Unreadable:
        return
    assert secret_problem(secret, "it") is None


def test_webhook_runs_never_stand_for_the_scheduled_cycles_in_the_verdict(served, clock):
    # A webhook's run (one return, no ingest) ending "ok" counted as the last successful
    # cycle: with polling broken (Loop's list failing every cycle) and webhooks flowing,
    # the merchant stayed OK and never STALLED, so a lost webhook was a silently lost return.
    from loopsync import status
    from loopsync.report import Verdict

    _, srv = served
    cfg = srv.cfg
    store = Store(cfg.state_path, clock)
    try:
        for n in range(6):
            store.runs.start(f"cycle-{n}", "serve")
            store.runs.add_stage_failure(f"cycle-{n}", "ingest", "Loop answered HTTP 500")
            store.runs.finish(f"cycle-{n}", "errors", {}, 1, None)
            clock.advance(60)
            store.runs.start(f"hook-{n}", "webhook")
            store.runs.finish(f"hook-{n}", "ok", {}, 0, None)
            clock.advance(cfg.every.total_seconds())
    finally:
        store.close()
    view = status.merchant_view(cfg, now=clock.now())
    assert view.verdict is Verdict.STALLED, (view.verdict, view.reason)
    assert view.last_ok_at is None


def test_a_flood_of_webhook_runs_does_not_hide_the_last_failed_cycle(served, clock):
    from loopsync import status
    from loopsync.report import Verdict

    _, srv = served
    store = Store(srv.cfg.state_path, clock)
    try:
        store.runs.start("cycle", "serve")
        store.runs.add_stage_failure("cycle", "ingest", "Loop answered HTTP 500")
        store.runs.finish("cycle", "errors", {}, 1, None)
        for n in range(status.RECENT_RUNS + 2):  # more than the recent runs shown
            clock.advance(5)
            store.runs.start(f"hook-{n}", "webhook")
            store.runs.finish(f"hook-{n}", "ok", {}, 0, None)
    finally:
        store.close()
    view = status.merchant_view(srv.cfg, now=clock.now())
    assert view.verdict is Verdict.DEGRADED and "ingest failed" in view.reason


def test_replayed_duplicates_do_not_keep_webhooks_healthy_for_the_poll_deferral(make_served, clock):
    # Every answered duplicate refreshed "last accepted": one captured delivery replayed
    # every few minutes kept scheduled polling deferred while the real webhooks were gone.
    sb, srv = make_served(
        poll_every="10m", healthy_within="5m", shiphero_secret=None, generic_secret=None
    )
    ran: list[str] = []
    job = srv.hooks.scheduled(lambda c, stop, next_due=None: ran.append(c.merchant))
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    assert srv.loop_event(body)[0] == 200
    job(srv.cfg, None)  # the first cycle runs
    for _ in range(3):  # the same delivery again and again, each within healthy_within
        clock.advance(4 * 60)
        assert srv.loop_event(body)[0] == 200
        job(srv.cfg, None)
    assert len(ran) == 3  # 0, 8 and 12 minutes: the last new event was 12 minutes ago


def test_status_says_which_configured_sender_is_silent_and_not_healthy_then(make_served, clock):
    # ShipHero disables an unhealthy webhook; with Loop's events still flowing, status and
    # the page said "webhooks healthy" and nothing showed that ShipHero had gone quiet.
    from loopsync import status
    from loopsync.report import view_lines

    sb, srv = make_served(generic_secret=None)
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    view = status.merchant_view(srv.cfg, now=clock.now())
    assert view.webhooks is not None
    assert not view.webhooks.healthy and view.webhooks.silent == ("shiphero",)
    assert "silent: shiphero" in "\n".join(view_lines(view))
    assert view.to_json()["webhooks"]["silent"] == ["shiphero"]


def test_register_says_a_running_serve_must_reload_to_use_the_new_secret(merchant):
    # serve reads secrets at start and on SIGHUP: registering alone left it refusing every
    # ShipHero event (401) until ShipHero disabled the webhook, and nothing said so.
    from tests.test_webhooks_cli import PUBLIC, run

    _, path = merchant
    code, out = run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")
    assert code == 0 and "SIGHUP" in out
