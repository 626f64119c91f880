"""Webhooks in a sharded fleet: a pod that knows a merchant another shard owns forwards the
request once to the owner (LOOPSYNC_SHARD_PEERS) and answers with the owner's status, over
real HTTP between two listeners (shard 0 and shard 1 of 2); a template only ever reaches
its own host."""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import peers, web, webhooks
from loopsync.config import load_config
from loopsync.errors import UsageError
from loopsync.http import origin_of
from loopsync.inbox import WebhookService
from loopsync.shards import Shard, owner
from loopsync.state import Store

from .test_webhooks_http import LOOP_SECRET, hook_env, loop_body, write_config

HOSTS = ("127.0.0.10", "127.0.0.11")  # loopback: shard i listens on 127.0.0.1<i>
OWNER = owner("acme", 2)
OTHER = 1 - OWNER


class Fleet:
    """Two pods that both load acme's file; only the owning shard runs it."""

    def __init__(self, cfg: Any, clock: Any, template: str | None) -> None:
        self.cfg = cfg
        self.pods: dict[int, web.Listener] = {}
        self.hooks: dict[int, WebhookService] = {}
        port = 0
        for index in (OWNER, OTHER):
            owned = [cfg] if index == OWNER else []
            hooks = WebhookService(lambda owned=owned: owned, clock=clock)
            pod = web.Listener(
                web.Address(HOSTS[index], port),
                lambda owned=owned: owned,
                token=None,
                clock=clock,
                hooks=hooks,
            )
            port = pod.server.port  # both pods on one port, as a StatefulSet's are
            self.pods[index], self.hooks[index] = pod, hooks
        tpl = peers.PeerTemplate.parse(template.replace("PORT", str(port))) if template else None
        for index, pod in self.pods.items():
            pod.server.router = peers.Router(Shard(index, 2), lambda: [cfg], tpl)
            pod._thread.start()

    def post(self, index: int, body: bytes, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection(HOSTS[index], self.pods[index].server.port, timeout=10)
        try:
            conn.request(
                "POST", "/webhooks/loop/acme", body, {"Content-Type": "application/json", **headers}
            )
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def signed(self, index: int, body: bytes) -> int:
        return self.post(index, body, {"X-Loop-Signature": webhooks.hmac_b64(LOOP_SECRET, body)})

    def inbox(self) -> list[Any]:
        store = Store(self.cfg.state_path, self.pods[OWNER].clock)
        try:
            return store.conn.execute("select key, source, subject from inbox").fetchall()
        finally:
            store.close()

    def stop(self, index: int) -> None:
        self.pods[index].server.shutdown()
        self.pods[index].server.server_close()


@pytest.fixture
def make_fleet(make_sandbox, clock, tmp_path):
    made: list[Fleet] = []

    def make(template: str | None = "http://127.0.0.1{index}:PORT") -> tuple[Any, Fleet]:
        sb = make_sandbox("shiphero", rate_limits=False)
        cfg = load_config(write_config(sb, tmp_path), env=hook_env(sb))
        fleet = Fleet(cfg, clock, template)
        made.append(fleet)
        return sb, fleet

    yield make
    for fleet in made:
        for index in fleet.pods:
            fleet.stop(index)


def _event(sb: Any, clock: Any) -> bytes:
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    return loop_body(raw, clock)


def test_event_posted_to_the_non_owner_is_stored_by_the_owner_once(make_fleet, clock):
    sb, fleet = make_fleet()
    body = _event(sb, clock)
    assert fleet.signed(OTHER, body) == 200
    assert len(fleet.inbox()) == 1
    assert fleet.signed(OTHER, body) == 200  # the sender's retry: a duplicate, still one
    assert fleet.signed(OWNER, body) == 200
    assert len(fleet.inbox()) == 1


def test_forwarded_event_is_still_signature_checked_by_the_owner(make_fleet, clock):
    sb, fleet = make_fleet()
    body = _event(sb, clock)
    assert fleet.post(OTHER, body, {"X-Loop-Signature": "bad"}) == 401
    assert fleet.post(OTHER, body, {}) == 401  # unsigned: refused without forwarding
    assert fleet.inbox() == []


def test_owner_down_or_no_template_answers_503_so_the_sender_retries(make_fleet, clock):
    sb, fleet = make_fleet()
    body = _event(sb, clock)
    fleet.stop(OWNER)
    del fleet.pods[OWNER]
    assert fleet.signed(OTHER, body) == 503
    sb2, unset = make_fleet(template=None)
    assert unset.signed(OTHER, _event(sb2, clock)) == 503


def test_a_forwarded_request_is_never_forwarded_again(make_fleet, clock):
    sb, fleet = make_fleet()
    body = _event(sb, clock)
    sig = webhooks.hmac_b64(LOOP_SECRET, body)
    status = fleet.post(OTHER, body, {"X-Loop-Signature": sig, peers.FORWARDED_HEADER: "1"})
    assert status == 401
    assert fleet.inbox() == []


def test_unknown_merchant_still_gets_401(make_fleet, clock):
    _sb, fleet = make_fleet()
    port = fleet.pods[OTHER].server.port
    conn = http.client.HTTPConnection(HOSTS[OTHER], port, timeout=10)
    conn.request("POST", "/webhooks/loop/nobody", b"{}", {"Content-Type": "application/json"})
    assert conn.getresponse().status == 401
    conn.close()


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    answer = 302

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(self.answer)
        self.send_header("Location", "http://127.0.0.1:1/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_forward_sends_only_signature_headers_follows_no_redirect_and_503s_it():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tpl = peers.PeerTemplate.parse(f"http://127.0.0.{{index}}:{server.server_address[1]}")
        headers = {
            "content-type": "application/json",
            "x-loop-signature": "sig",
            "authorization": "Bearer secret-token-0123456789",
            "connection": "keep-alive",
            "cookie": "a=b",
        }
        status = web.forward(
            peers.Elsewhere(1, tpl), "/webhooks/loop/acme", headers, b"{}", web.peer_session()
        )
        assert status == 302  # answered 503 by the handler (not 2xx), never followed
        (seen,) = _Recorder.seen
        assert not {"authorization", "cookie", "connection"} & seen.keys()
        assert seen["x-loop-signature"] == "sig" and seen[peers.FORWARDED_HEADER.lower()] == "1"
    finally:
        server.shutdown()
        server.server_close()


# -- the template reaches only its own host (hostile targets and templates) ---------------

TEMPLATE = peers.PeerTemplate.parse("http://loopsync-{index}.loopsync:9108")


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, 10_000), target=st.text(max_size=80))
def test_any_received_target_reaches_only_the_templates_host(index, target):
    for candidate in (target, "/webhooks/" + target):
        url = TEMPLATE.url(index, candidate)
        if url is not None:
            assert url.startswith(f"http://loopsync-{index}.loopsync:9108/webhooks/")
            origin = web_origin(url)
            assert (origin.host, origin.port) == (f"loopsync-{index}.loopsync", 9108)


def web_origin(url: str) -> Any:
    return origin_of(url)


@pytest.mark.parametrize(
    "target",
    [
        "/webhooks/loop/acme@evil.example",
        "/webhooks/loop/acme\\@evil.example",
        "/webhooks/loop/acme#@evil.example",
        "//evil.example/webhooks/loop/acme",
        "/webhooks/loop/a\r\nHost: evil.example",
        "@evil.example/webhooks/loop/acme",
    ],
)
def test_hostile_targets_are_not_forwarded(target):
    assert TEMPLATE.url(1, target) is None


@pytest.mark.parametrize(
    "text",
    [
        "http://loopsync-0.loopsync:9108",  # no {index}
        "http://user:pw@loopsync-{index}.loopsync:9108",
        "http://loopsync-{index}.loopsync:9108/path",
        "http://loopsync-{index}.loopsync:9108?q=1",
        "ftp://loopsync-{index}.loopsync:9108",
        "http://evil.example#{index}",
        "http://evil.example/{index}",
        "http://{index}{index}:1",
        "http://loopsync-{index}.loopsync:99999",
    ],
)
def test_bad_templates_are_refused_at_start(text):
    with pytest.raises(UsageError, match=peers.PEERS_ENV):
        peers.PeerTemplate.parse(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_any_template_accepted_puts_index_only_in_its_host(text):
    try:
        tpl = peers.PeerTemplate.parse(text)
    except UsageError:
        return
    a, b = tpl.origin(3), tpl.origin(4)
    assert a.host != b.host and (a.scheme, a.port) == (b.scheme, b.port)
    assert "3" in a.host


def test_closed_port_answers_none():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tpl = peers.PeerTemplate.parse(f"http://127.0.0.{{index}}:{port}")
    assert (
        web.forward(peers.Elsewhere(1, tpl), "/webhooks/loop/a", {}, b"{}", web.peer_session())
        is None
    )
