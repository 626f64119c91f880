"""The sandbox sends webhooks (issue 13 §5): signed as Loop, ShipHero and the generic
connector document it, with faults drawn from a seed, retried on a non-2xx answer, and
never slowing the emulator that emits them. Signatures are checked here with an HMAC
written independently of `sandbox/webhooks.py`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as hs

from loopsync.sandbox import WEBHOOK_SECRETS
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import ApiServer, EmulatedApi, Request, Response, json_response
from loopsync.sandbox.webhooks import (
    DeliveryPolicy,
    Source,
    WebhookFaults,
    WebhookSender,
    WebhookTarget,
    _retry_after,
    forged_body,
    plan_delivery,
)
from loopsync.testing import FakeClock

# Retries at once: the tests count attempts, they do not wait for a backoff.
QUICK = DeliveryPolicy(base=0.0, cap=0.0, timeout=5.0)


class Receiver(EmulatedApi):
    """A webhook intake that records what it got and answers `answer(request)`."""

    name = "receiver"

    def __init__(self, answer: Callable[[Request], Response] | None = None) -> None:
        super().__init__()
        self.got: list[Request] = []
        self.answer = answer or (lambda req: json_response({"ok": True}))
        self.arrived = threading.Event()

    def handle(self, req: Request) -> Response:
        self.got.append(req)
        self.arrived.set()
        return self.answer(req)


@pytest.fixture
def receiver():
    servers: list[ApiServer] = []

    def make(answer: Callable[[Request], Response] | None = None) -> tuple[Receiver, str]:
        api = Receiver(answer)
        server = ApiServer(api).start()
        servers.append(server)
        return api, server.url

    yield make
    for server in servers:
        server.stop()


def wait_for(check: Callable[[], bool], sender: WebhookSender | None = None) -> None:
    """Until `check()` holds (a real-time cap only against a hang, never a speed test)."""
    done = threading.Event()
    for _ in range(400):
        if check():
            return
        done.wait(0.025)
    raise AssertionError("condition never held" + (f": {sender.stats()}" if sender else ""))


def b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def open_return(sb: Any, rid: int) -> dict[str, Any]:
    raw = make_return(
        rng=random.Random(rid), return_id=rid, state="open", updated_at=sb.clock.now()
    )
    raw["destination_id"] = 12
    return raw


# -- signatures -------------------------------------------------------------------------


def test_loop_return_created_is_signed_base64_hmac_of_the_exact_body(make_sandbox, receiver):
    api, url = receiver()
    sb = make_sandbox("shiphero")
    sender = sb.send_webhooks(sb.webhook_targets(url, "shop-a"))
    sb.add_return(open_return(sb, 4100))
    wait_for(lambda: len(api.got) == 1, sender)
    (req,) = api.got
    assert req.path == "/webhooks/loop/shop-a"
    assert req.headers.get("X-Loop-Signature") == b64_hmac(WEBHOOK_SECRETS[Source.LOOP], req.body)
    body = json.loads(req.body)
    assert (body["topic"], body["trigger"], body["id"], body["state"]) == (
        "return",
        "return.created",
        "4100",
        "open",
    )


def test_loop_state_change_and_close_send_updated_then_closed(make_sandbox, receiver):
    api, url = receiver()
    sb = make_sandbox("shiphero")
    sender = sb.send_webhooks(sb.webhook_targets(url))
    sb.add_return(open_return(sb, 4101))
    sb.loop.set_state(4101, "review")
    sb.loop.set_state(4101, "closed")
    wait_for(lambda: len(api.got) == 3, sender)
    triggers = sorted(json.loads(r.body)["trigger"] for r in api.got)
    assert triggers == ["return.closed", "return.created", "return.updated"]


def test_shiphero_return_update_is_signed_and_carries_a_message_id(
    make_sandbox, receiver, tmp_path
):
    api, url = receiver()
    sb = make_sandbox("shiphero")
    sb.add_return(open_return(sb, 4102))
    cfg = sb.merchant_config(tmp_path)
    sb.run_cycle(cfg)  # the worker creates the RMA (before webhooks are on)
    sender = sb.send_webhooks(sb.webhook_targets(url, "shop-b"))
    assert sb.warehouse.receive("4102", "full")
    wait_for(lambda: any("shiphero" in r.path for r in api.got), sender)
    (req,) = [r for r in api.got if "shiphero" in r.path]
    assert req.path == "/webhooks/shiphero/shop-b"
    secret = WEBHOOK_SECRETS[Source.SHIPHERO]
    assert req.headers.get("x-shiphero-hmac-sha256") == b64_hmac(secret, req.body)
    assert req.headers.get("x-shiphero-message-id")
    body = json.loads(req.body)
    assert body["webhook_type"] == "Return Update"
    assert isinstance(body["return_id"], int) and body["return_uuid"]
    assert body["status"].lower().replace("_", " ") == "warehouse complete"


def test_generic_receipt_event_is_signed_by_the_connectors_documented_scheme(
    make_sandbox, receiver, clock
):
    api, url = receiver()
    sb = make_sandbox("generic")
    secret = WEBHOOK_SECRETS[Source.GENERIC]
    target = WebhookTarget(Source.GENERIC, f"{url}/webhooks/generic/shop-c?x=1", secret)
    sender = sb.send_webhooks([target])
    sb.warehouse.add_receipts("4103", [("TEE-M", 1, "available")])
    wait_for(lambda: len(api.got) == 1, sender)
    (req,) = api.got
    stamp = req.headers.get("X-Loopsync-Timestamp")
    assert stamp == str(int(clock.now().timestamp()))
    message = f"v1\n{stamp}\nPOST\n{req.raw_path}\n".encode() + req.body
    expected = "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    assert req.raw_path == "/webhooks/generic/shop-c?x=1"
    assert req.headers.get("X-Loopsync-Signature") == expected
    body = json.loads(req.body)
    assert body["event"] == "receipt" and body["rma_number"] == "4103"
    assert body["receipts"][0]["quantity"] == 1


def test_no_target_no_thread_work_and_secrets_stay_out_of_reprs_and_counts(clock):
    target = WebhookTarget(Source.LOOP, "http://127.0.0.1:9/x", "top-secret-value")
    sender = WebhookSender(clock, [target])
    sender.emit(Source.SHIPHERO, "Return Update", "1", {"status": "pending"})
    assert sender.stats() == {}  # no ShipHero target: nothing queued
    assert "top-secret-value" not in repr(target)
    assert "top-secret-value" not in repr(sender.stats())


# -- faults -----------------------------------------------------------------------------


def test_faults_are_drawn_from_the_seed_the_same_way_every_time():
    faults = WebhookFaults(lose=0.2, duplicate=0.2, delay=0.3, max_delay=2.0, forge=0.1)
    first = [plan_delivery(faults, rng) for rng in [random.Random(5)] for _ in range(500)]
    again = [plan_delivery(faults, rng) for rng in [random.Random(5)] for _ in range(500)]
    assert first == again
    lost = sum(p.copies == 0 for p in first)
    dup = sum(p.copies == 2 for p in first)
    assert 60 <= lost <= 140 and 50 <= dup <= 130  # 20 % of 500 = 100 (of 80 % for dup)
    assert all(0.0 <= p.delay <= 2.0 for p in first)
    assert 20 <= sum(p.forged for p in first) <= 80


def test_no_faults_means_one_copy_now_never_forged():
    rng = random.Random(1)
    assert {plan_delivery(WebhookFaults(), rng) for _ in range(200)} == {
        plan_delivery(WebhookFaults(), random.Random(9))
    }


def test_lost_events_are_never_sent_and_duplicates_arrive_twice_alike(clock, receiver):
    api, url = receiver()
    target = WebhookTarget(Source.LOOP, f"{url}/w", "s3cret")
    lossy = WebhookSender(clock, [target], faults=WebhookFaults(lose=1.0), policy=QUICK).start()
    for n in range(5):
        lossy.emit(Source.LOOP, "return.created", str(n), {"id": str(n)})
    assert lossy.drain(10)
    assert lossy.stats()["lost"] == 5 and api.got == []
    lossy.close()
    doubled = WebhookSender(
        clock, [target], faults=WebhookFaults(duplicate=1.0), policy=QUICK
    ).start()
    doubled.emit(Source.LOOP, "return.created", "7", {"id": "7"})
    wait_for(lambda: len(api.got) == 2, doubled)
    assert api.got[0].body == api.got[1].body
    assert api.got[0].headers.get("X-Loop-Signature") == api.got[1].headers.get("X-Loop-Signature")
    assert doubled.stats()["delivered"] == 2
    doubled.close()


def test_a_delayed_event_arrives_after_one_emitted_later(clock, receiver):
    api, url = receiver()
    target = WebhookTarget(Source.LOOP, f"{url}/w", "s3cret")
    sender = WebhookSender(
        clock, [target], faults=WebhookFaults(delay=1.0, max_delay=30.0), policy=QUICK, seed=3
    ).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    sender.faults = WebhookFaults()
    sender.emit(Source.LOOP, "return.updated", "2", {"id": "2"})
    wait_for(lambda: len(api.got) == 1, sender)
    clock.advance(30)  # the sender's time is the injected clock
    wait_for(lambda: len(api.got) == 2, sender)
    assert [json.loads(r.body)["id"] for r in api.got] == ["2", "1"]
    sender.close()


def test_a_forgery_is_signed_with_another_secret_and_counted_as_refused(clock, receiver):
    def verifying(req: Request) -> Response:
        good = b64_hmac("s3cret", req.body) == req.headers.get("X-Loop-Signature")
        return json_response({}, 200 if good else 401)

    api, url = receiver(verifying)
    target = WebhookTarget(Source.LOOP, f"{url}/w", "s3cret")
    sender = WebhookSender(clock, [target], faults=WebhookFaults(forge=1.0), policy=QUICK).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1", "state": "open"})
    assert sender.drain(10)
    stats = sender.stats()
    assert stats["forged"] == 1 and stats["forged_refused"] == 1
    assert stats["delivered"] == 1 and stats["forged_accepted"] == 0
    forged = [json.loads(r.body) for r in api.got if json.loads(r.body).get("forged")]
    assert forged and forged[0]["state"] == "closed"  # a lie a careless intake would act on
    sender.close()


# -- delivery ---------------------------------------------------------------------------


def test_a_non_2xx_answer_is_retried_five_times_then_given_up(clock, receiver):
    api, url = receiver(lambda req: json_response({"error": "down"}, 500))
    sender = WebhookSender(
        clock, [WebhookTarget(Source.LOOP, f"{url}/w", "s")], policy=QUICK
    ).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    assert sender.drain(10)
    assert len(api.got) == 6  # Loop: 5 retries, 6 attempts
    assert sender.stats()["failed"] == 1 and sender.stats()["retried"] == 5
    sender.close()


def test_a_retry_that_succeeds_is_delivered_once(clock, receiver):
    answers = iter([503, 502])
    api, url = receiver(lambda req: json_response({}, next(answers, 200)))
    sender = WebhookSender(
        clock, [WebhookTarget(Source.SHIPHERO, f"{url}/w", "s")], policy=QUICK
    ).start()
    sender.emit(Source.SHIPHERO, "Return Update", "1", {"status": "pending"})
    assert sender.drain(10)
    stats = sender.stats()
    assert (stats["attempts"], stats["retried"], stats["delivered"]) == (3, 2, 1)
    ids = {r.headers.get("x-shiphero-message-id") for r in api.got}
    assert len(api.got) == 3 and len(ids) == 1  # one event, one message id
    sender.close()


def test_a_retry_after_longer_than_loop_honours_fails_the_webhook(clock, receiver):
    api, url = receiver(lambda req: json_response({}, 429, {"Retry-After": "3600"}))
    sender = WebhookSender(
        clock, [WebhookTarget(Source.LOOP, f"{url}/w", "s")], policy=QUICK
    ).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    assert sender.drain(10)
    assert len(api.got) == 1 and sender.stats()["failed"] == 1
    sender.close()


def test_a_redirect_is_not_followed_so_the_signed_body_goes_nowhere_else(clock, receiver):
    elsewhere, other = receiver()
    api, url = receiver(lambda req: Response(307, b"", {"Location": f"{other}/steal"}))
    sender = WebhookSender(
        clock, [WebhookTarget(Source.LOOP, f"{url}/w", "s")], policy=QUICK
    ).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    assert sender.drain(10)
    assert len(api.got) == 6 and elsewhere.got == []
    sender.close()


def test_a_receiver_that_never_answers_does_not_slow_the_emulator(make_sandbox, receiver):
    release = threading.Event()

    def stuck(req: Request) -> Response:
        release.wait(30)
        return json_response({})

    api, url = receiver(stuck)
    sb = make_sandbox("shiphero", rate_limits=False)
    sender = sb.send_webhooks(
        sb.webhook_targets(url), policy=DeliveryPolicy(timeout=30.0, workers=1)
    )
    sender.queue_limit = 5
    try:
        for n in range(20):  # each emits return.created while the receiver hangs
            sb.add_return(open_return(sb, 4200 + n))
        assert api.arrived.wait(10)  # the one worker is stuck in its first delivery
        answer = requests.get(
            f"{sb.loop_url}/warehouse/return/list",
            headers={"X-Authorization": sb.env()["LOOP_API_KEY"]},
            params={"state": "open"},
            timeout=10,
        )
        assert answer.status_code == 200 and "4219" in answer.text
        sb.loop.set_state(4200, "closed")  # handled while deliveries wait
        stats = sender.stats()
        assert stats["emitted"] == 21 and stats["overflow"] >= 15  # bounded queue
    finally:
        release.set()


def test_a_refused_connection_is_retried_and_then_given_up(clock):
    sender = WebhookSender(
        clock, [WebhookTarget(Source.LOOP, "http://127.0.0.1:9/w", "s")], policy=QUICK
    ).start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    assert sender.drain(10)
    assert sender.stats()["attempts"] == 6 and sender.stats()["failed"] == 1
    sender.close()


# -- parsers of what a receiver answers, and the faults spec ----------------------------------


@given(hs.one_of(hs.none(), hs.text(max_size=40)))
def test_retry_after_reads_whole_seconds_or_nothing(value):
    seconds = _retry_after(value)
    assert seconds is None or (seconds >= 0 and seconds == int(value.strip()))


@given(hs.binary(max_size=200))
def test_a_forged_body_always_differs_from_the_real_one(body):
    assert forged_body(body) != body


def test_fault_spec_parses_and_refuses_nonsense():
    assert WebhookFaults.parse("lose=0.1, duplicate=0.2,max-delay=3") == WebhookFaults(
        lose=0.1, duplicate=0.2, max_delay=3.0
    )
    assert WebhookFaults.parse("") == WebhookFaults()
    for bad in ("lose", "lose=x", "drop=0.1", "lose=2", "max_delay=-1"):
        with pytest.raises(ValueError, match="webhook fault"):
            WebhookFaults.parse(bad)


def test_fake_clock_sender_uses_the_injected_clock_for_backoff():
    clock = FakeClock("2026-06-01T00:00:00Z")
    policy = DeliveryPolicy(base=100.0, cap=100.0)
    sender = WebhookSender(clock, [WebhookTarget(Source.LOOP, "http://127.0.0.1:9/w", "s")])
    sender.policy = policy
    sender.start()
    sender.emit(Source.LOOP, "return.created", "1", {"id": "1"})
    wait_for(lambda: sender.stats()["attempts"] == 1, sender)
    assert not sender.drain(0.3)  # the retry waits on the fake clock, not on real time
    assert sender.stats()["attempts"] == 1
    clock.advance(100)
    wait_for(lambda: sender.stats()["attempts"] == 2, sender)
    sender.close()


# -- against the intake's own verifier (loopsync.webhooks) -------------------------------------


def intake_request(req: Request) -> Any:
    from loopsync import webhooks as intake

    source, merchant = req.path.removeprefix("/webhooks/").split("/")
    headers = {k.lower(): str(v) for k, v in req.headers.items()}
    return intake.Request(source, merchant, req.raw_path, headers, req.body)


@pytest.mark.parametrize("kind", ["shiphero", "generic"])
def test_every_sender_is_accepted_by_the_intake_and_every_forgery_refused(
    make_sandbox, receiver, tmp_path, clock, kind
):
    from loopsync import webhooks as intake

    api, url = receiver()
    sb = make_sandbox(kind)
    sb.add_return(open_return(sb, 4300))
    sb.run_cycle(sb.merchant_config(tmp_path))  # the RMA exists before the hooks are on
    sender = sb.send_webhooks(sb.webhook_targets(url, "m1"), faults=WebhookFaults(forge=1.0))
    sb.add_return(open_return(sb, 4301))
    assert sb.warehouse.receive("4300", "full")
    wait_for(lambda: len(api.got) == 4, sender)  # Loop and the warehouse, each + a forgery

    def secret_of(source: Any, merchant: str) -> str | None:
        return WEBHOOK_SECRETS[Source(source.value)] if merchant == "m1" else None

    decisions = [(r, intake.intake(intake_request(r), secret_of, clock.now())) for r in api.got]
    accepted = [d for r, d in decisions if not json.loads(r.body).get("forged")]
    refused = [d for r, d in decisions if json.loads(r.body).get("forged")]
    assert {type(d).__name__ for d in accepted} == {"Accept"}, accepted
    assert {d.event.source.value for d in accepted} == {"loop", kind}
    assert [getattr(d, "reason", None) for d in refused] == [intake.Refusal.BAD_SIGNATURE] * 2


def test_sandbox_command_refuses_a_bad_fault_spec_in_one_line_exit_2(capsys):
    from loopsync.cli import main

    assert main(["sandbox", "--webhooks", "http://127.0.0.1:1", "--webhook-faults", "lose=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "webhook fault lose=2.0" in err[-1] and "Traceback" not in "\n".join(err)
    assert main(["sandbox", "--webhooks", "localhost:8080"]) == 2
    assert "not an http(s)://host URL" in capsys.readouterr().err


def test_a_webhook_registered_with_shiphero_gets_return_updates_signed_with_its_secret(
    make_sandbox, receiver, tmp_path
):
    """`webhook_create` (as `loopsync webhooks register` calls it) makes the emulated
    ShipHero send Return Update there, signed with the secret it showed once."""
    api, url = receiver()
    sb = make_sandbox("shiphero")
    sb.add_return(open_return(sb, 4400))
    sb.run_cycle(sb.merchant_config(tmp_path))
    sender = sb.send_webhooks([])  # nothing configured by hand
    token = requests.post(
        f"{sb.warehouse_url}/auth/refresh",
        json={"refresh_token": sb.warehouse.refresh_token},
        timeout=10,
    ).json()["access_token"]
    mutation = (
        "mutation ($url: String!) { webhook_create(data: "
        '{name: "Return Update", url: $url}) { webhook { shared_signature_secret } } }'
    )
    answer = requests.post(
        f"{sb.warehouse_url}/graphql",
        json={"query": mutation, "variables": {"url": f"{url}/hooks/sh"}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    secret = answer["data"]["webhook_create"]["webhook"]["shared_signature_secret"]
    assert sb.warehouse.receive("4400", "damaged")
    wait_for(lambda: len(api.got) == 1, sender)
    (req,) = api.got
    assert req.path == "/hooks/sh"
    assert req.headers.get("x-shiphero-hmac-sha256") == b64_hmac(secret, req.body)
