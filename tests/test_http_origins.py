"""Issue 14 §1: credentials never leave the configured origin, for every client.

A "redirector" server answers every request with a redirect to a second server (the
"sink") on another port: another origin. Whatever the status (301/302/303/307/308), the
sink must receive nothing at all (no header, no body, so no Loop key, generic token,
ShipHero refresh token or PeopleVox password), the error must name the sink's origin and
no more, and an RMA behind such a redirect is not counted as pushed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from loopsync.errors import ForeignOrigin, PermanentError
from loopsync.http import HttpClient, RetryPolicy, origin_of, scrub
from loopsync.loop_client import LoopClient
from loopsync.runner import build_connector, open_store
from loopsync.testing import Sandbox
from loopsync.testing import FakeClock
from tests.hostile import HostileServer, Received, redirect, reply, sequence

STATUSES = (301, 302, 303, 307, 308)
POLICY = RetryPolicy(attempts=2, base=0.01, cap=0.02)
LOOP_KEY = "loop-key-0123456789abcdef"


@pytest.fixture
def sink() -> Iterator[HostileServer]:
    with HostileServer(reply(200, {"ok": True, "access_token": "x" * 20})) as server:
        yield server


def redirector(status: int, sink: HostileServer) -> HostileServer:
    # keeps path and query: the worst case, as a real open redirect would
    return HostileServer(redirect(status, lambda req: f"{sink.url}{req.target}?token=abc"))


def assert_nothing_reached(sink: HostileServer, exc: BaseException) -> None:
    assert sink.received == []
    assert isinstance(exc, ForeignOrigin) and isinstance(exc, PermanentError)
    assert exc.target == f"http://127.0.0.1:{sink.port}"
    assert str(sink.port) in str(exc) and "token=abc" not in str(exc)


@pytest.mark.parametrize("status", STATUSES)
def test_loop_key_never_follows_a_redirect_to_another_origin(
    status: int, sink: HostileServer, clock: FakeClock
) -> None:
    with redirector(status, sink) as bad:
        client = LoopClient(f"{bad.url}/api/v1", LOOP_KEY, clock=clock, policy=POLICY)
        with pytest.raises(ForeignOrigin) as read:
            client.return_details("1001")
        with pytest.raises(ForeignOrigin) as write:
            client.add_note("1001", "hello")
        assert bad.received[0].headers["x-authorization"] == LOOP_KEY  # the real origin had it
    assert_nothing_reached(sink, read.value)
    assert_nothing_reached(sink, write.value)


@pytest.fixture(scope="module")
def sandboxes() -> Iterator[dict[str, Sandbox]]:
    """One sandbox per kind for the module (nothing reaches them past the redirect)."""
    started: dict[str, Sandbox] = {}
    yield started
    for sb in started.values():
        sb.stop()


def sandbox(sandboxes: dict[str, Sandbox], kind: str) -> Sandbox:
    if kind not in sandboxes:
        sandboxes[kind] = Sandbox(kind, clock=FakeClock("2026-06-01T12:00:00Z")).start()
        if kind == "generic":
            sandboxes[kind].seed(2, states_weights=[("open", 1)])
    return sandboxes[kind]


def sandbox_config(sandboxes: dict[str, Sandbox], kind: str, tmp_path: Any, **extra: Any) -> Any:
    sb = sandbox(sandboxes, kind)
    return sb, sb.merchant_config(tmp_path, warehouse_extra=extra)


def connector_for(cfg: Any, clock: FakeClock) -> Any:
    store = open_store(cfg, clock, dry_run=True)
    return build_connector(cfg, clock, store, stop=threading.Event(), policy=POLICY)


@pytest.mark.parametrize("status", STATUSES)
def test_shiphero_refresh_token_in_a_redirected_body_never_reaches_another_origin(
    status: int, sink: HostileServer, sandboxes: dict[str, Sandbox], tmp_path: Any, clock: FakeClock
) -> None:
    with redirector(status, sink) as bad:
        sb, cfg = sandbox_config(sandboxes, "shiphero", tmp_path, base_url=bad.url)
        connector = connector_for(cfg, clock)
        with pytest.raises(ForeignOrigin) as caught:
            connector.client.bearer()
        assert bad.received and bad.received[0].contains(sb.warehouse.refresh_token)
    assert_nothing_reached(sink, caught.value)


@pytest.mark.parametrize("status", STATUSES)
def test_peoplevox_password_in_a_redirected_body_never_reaches_another_origin(
    status: int, sink: HostileServer, sandboxes: dict[str, Sandbox], tmp_path: Any, clock: FakeClock
) -> None:
    with redirector(status, sink) as bad:
        _sb, cfg = sandbox_config(sandboxes, "peoplevox", tmp_path, base_url=bad.url)
        connector = connector_for(cfg, clock)
        with pytest.raises(ForeignOrigin) as caught:
            connector.client.read_page("GetData", "Item types", page=1)
        assert bad.received and b"Authenticate" in bad.received[0].body
    assert_nothing_reached(sink, caught.value)


@pytest.mark.parametrize("status", STATUSES)
def test_generic_token_and_rma_never_reach_another_origin_and_the_rma_is_not_pushed(
    status: int, sink: HostileServer, sandboxes: dict[str, Sandbox], tmp_path: Any
) -> None:
    with redirector(status, sink) as bad:
        sb = sandbox(sandboxes, "generic")
        cfg = sb.merchant_config(tmp_path, warehouse_extra={"rma_url": f"{bad.url}/rmas"})
        result = sb.run_cycle(cfg, policy=POLICY)
        token = sb.warehouse.token
        assert any(r.headers.get(sb.warehouse.auth_header.lower()) == token for r in bad.received)
    assert sink.received == []
    assert result.counts.pushed == 0 and sb.warehouse.rmas == {}


def test_a_same_origin_redirect_is_followed_with_the_credentials_and_the_body(
    clock: FakeClock,
) -> None:
    with HostileServer(
        sequence(
            redirect(307, "/moved?page=2"), redirect(303, "/result"), reply(200, {"done": True})
        )
    ) as server:
        http = HttpClient(
            "t",
            server.url,
            clock=clock,
            policy=POLICY,
            headers={"X-Api-Key": "generic-token-123456"},
        )
        result = http.request("POST", "/rmas", json_body={"rma": 1}, idempotent=False)
    assert result.data == {"done": True}
    first, moved, final = server.received
    assert (moved.method, moved.target, moved.body) == ("POST", "/moved?page=2", first.body)
    assert (final.method, final.target, final.body) == ("GET", "/result", b"")
    assert all(r.headers["x-api-key"] == "generic-token-123456" for r in server.received)


def test_a_redirect_loop_ends_after_a_few_hops_as_a_permanent_error(clock: FakeClock) -> None:
    with HostileServer(redirect(302, "/again")) as server:
        http = HttpClient("t", server.url, clock=clock, policy=POLICY)
        with pytest.raises(PermanentError, match="redirects"):
            http.request("GET", "/start")
    assert 2 <= len(server.received) <= 5


def test_an_absolute_link_to_another_origin_is_refused_before_sending(
    sink: HostileServer, clock: FakeClock
) -> None:
    http = HttpClient(
        "t",
        "http://127.0.0.1:9/api",
        clock=clock,
        policy=POLICY,
        headers={"X-Authorization": LOOP_KEY},
    )
    for link in (
        f"{sink.url}/api/returns?cursor=x",
        f"http://localhost:{sink.port}/",
        f"http://127.0.0.1:9\\@127.0.0.1:{sink.port}/",
        f"http://127.0.0.1:9@127.0.0.1:{sink.port}/",
        "ftp://127.0.0.1:9/x",
    ):
        with pytest.raises(ForeignOrigin):
            http.request("GET", link)
    assert sink.received == []


def test_a_link_on_an_extra_configured_origin_is_allowed(
    sink: HostileServer, clock: FakeClock
) -> None:
    http = HttpClient(
        "t", "http://127.0.0.1:9/rmas", origins=[f"{sink.url}/receipts"], clock=clock, policy=POLICY
    )
    assert http.request("GET", f"{sink.url}/receipts?page=2").data["ok"] is True


def test_origins_compare_scheme_host_and_default_port() -> None:
    assert origin_of("https://API.example.com/x") == origin_of("https://api.example.com:443/y")
    assert origin_of("http://example.com") != origin_of("https://example.com")
    assert origin_of("http://example.com:8080") != origin_of("http://example.com")
    assert str(origin_of("https://u:p@example.com/a?b=c")) == "https://example.com:443"


def test_messages_never_carry_a_query_string_or_user_info() -> None:
    text = scrub("GET https://user:pw@host/a?token=SECRET failed; url: /b?key=SECRET2 (x)")
    assert "SECRET" not in text and "pw@" not in text


def test_a_connection_error_message_has_no_query_string_or_credential(clock: FakeClock) -> None:
    http = HttpClient(
        "t", "http://127.0.0.1:9", clock=clock, policy=POLICY, headers={"X-Authorization": LOOP_KEY}
    )
    with pytest.raises(Exception) as caught:
        http.request("GET", "/list?api_key=QUERYSECRET")
    assert "QUERYSECRET" not in str(caught.value) and LOOP_KEY not in str(caught.value)


def test_an_error_body_echoing_the_key_is_masked_in_the_message(clock: FakeClock) -> None:
    def echo(req: Received, sock: Any) -> None:
        reply(400, {"message": f"bad key {req.headers['x-authorization']}"})(req, sock)

    with HostileServer(echo) as server:
        http = HttpClient(
            "t", server.url, clock=clock, policy=POLICY, headers={"X-Authorization": LOOP_KEY}
        )
        with pytest.raises(PermanentError) as caught:
            http.request("GET", "/x")
    assert LOOP_KEY not in str(caught.value) and "bad key" in str(caught.value)


def test_an_unusable_configured_url_fails_each_request_with_a_typed_error(clock: FakeClock) -> None:
    http = HttpClient("t", "http://127.0.0.1:99999/api", clock=clock, policy=POLICY)
    with pytest.raises(PermanentError, match="configured URL"):
        http.request("GET", "/x")
