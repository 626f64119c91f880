"""Issue 15 §2: the HTTP layer survives the real internet. Real misbehaving servers on
127.0.0.1 (tests/hostile.py): cut bodies, bad chunking, bad gzip, drips (body, status
line and headers), decompression bombs, huge Content-Length; and every `requests`
exception, each of which must come out as a typed RemoteError."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.errors import (
    DeadlineExceeded,
    OutcomeUnknown,
    PermanentError,
    RemoteError,
    ResponseTooLarge,
    TransientError,
)
from loopsync.http import HttpClient, RetryPolicy, parse_json
from loopsync.testing import FakeClock
from tests.hostile import (
    HostileServer,
    bad_chunks,
    bad_gzip,
    cut_body,
    drip,
    gzip_bomb,
    gzip_bomb_bytes,
    gzipped,
    huge_length,
    reply,
    response_bytes,
)

POLICY = RetryPolicy(attempts=2, base=0.01, cap=0.02)


def client(server: HostileServer, clock: FakeClock, **kw: Any) -> HttpClient:
    return HttpClient("t", server.url, clock=clock, policy=POLICY, **kw)


@pytest.mark.parametrize(
    "responder",
    [cut_body(), bad_chunks(), bad_gzip(), reply(200, b"xx", {"Content-Encoding": "br"})],
    ids=["cut body", "bad chunks", "bad gzip", "unknown encoding"],
)
def test_a_broken_answer_is_transient_for_a_read_and_unknown_for_a_write(
    responder: Any, clock: FakeClock
) -> None:
    with HostileServer(responder) as server:
        http = client(server, clock)
        with pytest.raises(TransientError) as read:
            http.request("GET", "/x")
        with pytest.raises(OutcomeUnknown):
            http.request("POST", "/x", json_body={"a": 1}, idempotent=False)
    assert not isinstance(read.value, OutcomeUnknown)


def test_gzip_and_deflate_answers_are_read(clock: FakeClock) -> None:
    for encoding in ("gzip", "deflate"):
        with HostileServer(gzipped({"rows": list(range(100))}, encoding=encoding)) as server:
            assert client(server, clock).request("GET", "/x").data == {"rows": list(range(100))}


def test_a_body_dripping_a_byte_at_a_time_is_cut_off_at_the_deadline(clock: FakeClock) -> None:
    body = json.dumps({"returns": ["x" * 200]}).encode()
    payload = response_bytes(200, body)
    head_len = payload.index(b"\r\n\r\n") + 4
    with HostileServer(
        lambda req, sock: (sock.sendall(payload[:head_len]), drip(body, every=0.1)(req, sock))
    ) as server:
        http = client(server, clock, timeout=(2.0, 5.0), deadline=1.0)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            http.request("GET", "/x")
        elapsed = time.monotonic() - started
        # cut once and not retried in the call: the drip alone would take 20 s
        assert len(server.received) == 1
    assert elapsed < 10


def test_a_status_line_and_headers_dripping_are_cut_off_at_the_deadline(clock: FakeClock) -> None:
    with HostileServer(drip(response_bytes(200, b"{}", {"X-Pad": "p" * 300}), every=0.1)) as server:
        http = client(server, clock, timeout=(2.0, 5.0), deadline=1.0)
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="deadline"):
            http.request("POST", "/x", json_body={}, idempotent=False)
        assert time.monotonic() - started < 12
        assert len(server.received) == 1  # a write whose answer was lost is not repeated


def test_a_gzip_bomb_is_refused_without_the_memory(clock: FakeClock) -> None:
    inflated = 256 * 1024 * 1024
    assert len(gzip_bomb_bytes(256)) < inflated // 500
    with HostileServer(gzip_bomb(256)) as server:
        http = client(server, clock, max_body=4 * 1024 * 1024)
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge, match="larger than"):
                http.request("GET", "/x")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # far below the 256 MiB it inflates to
    assert len(server.received) == 1  # not retried: the same answer would come again


def test_the_default_cap_refuses_a_single_member_bomb_too(clock: FakeClock) -> None:
    with HostileServer(gzip_bomb(40, members=False)) as server:
        with pytest.raises(ResponseTooLarge):
            client(server, clock).request("GET", "/x")


def test_a_huge_content_length_is_refused_before_reading(clock: FakeClock) -> None:
    with HostileServer(huge_length()) as server:
        http = client(server, clock, timeout=(2.0, 30.0))
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge):
            http.request("GET", "/x")
        assert time.monotonic() - started < 10  # did not wait for the promised body


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"1" * 50_000,
        b'\xff\xfe{"a": 1}',
        b'{"a": "\\ud800"',
        b'{"a": NaN',
    ],
    ids=["deep", "long number", "bad utf-8", "cut escape", "nan"],
)
def test_a_hostile_json_body_never_escapes_as_an_exception(body: bytes, clock: FakeClock) -> None:
    with HostileServer(reply(200, body)) as server:
        result = client(server, clock).request("GET", "/x")
    assert result.status == 200 and result.text


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_parse_json_returns_a_value_or_none_for_any_text(text: str) -> None:
    try:
        expected = json.loads(text)
    except Exception:
        expected = None
    assert parse_json(text) == expected or parse_json(text) != parse_json(text)  # NaN


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=1, max_value=60_000))
def test_parse_json_survives_any_nesting_depth(depth: int) -> None:
    value = parse_json("[" * depth + "]" * depth)
    assert value is None or isinstance(value, list)


class RaisingSession(requests.Session):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls += 1
        raise self.exc


REQUESTS_ERRORS = [
    requests.exceptions.ChunkedEncodingError("bad chunk"),
    requests.exceptions.ContentDecodingError("bad gzip"),
    requests.exceptions.TooManyRedirects("loop"),
    requests.exceptions.InvalidURL("http://x:99999/?token=SECRET"),
    requests.exceptions.InvalidHeader("bad header"),
    requests.exceptions.InvalidSchema("gopher"),
    requests.exceptions.MissingSchema("no scheme"),
    requests.exceptions.InvalidJSONError("NaN"),
    requests.exceptions.SSLError("handshake"),
    requests.exceptions.ProxyError("proxy"),
    requests.exceptions.ReadTimeout("slow"),
    requests.exceptions.StreamConsumedError("gone"),
    requests.exceptions.RetryError("retries"),
    requests.exceptions.UnrewindableBodyError("body"),
    requests.exceptions.RequestException("anything"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ConnectionResetError("reset"),
]


@pytest.mark.parametrize("exc", REQUESTS_ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("idempotent", [True, False])
def test_every_requests_exception_becomes_a_typed_remote_error(
    exc: BaseException, idempotent: bool, clock: FakeClock
) -> None:
    http = HttpClient(
        "t", "http://127.0.0.1:9", session=RaisingSession(exc), clock=clock, policy=POLICY
    )
    with pytest.raises(RemoteError) as caught:
        http.request("POST", "/x?token=SECRET", idempotent=idempotent)
    err = caught.value
    assert "SECRET" not in str(err)
    assert isinstance(err, TransientError | PermanentError)
    if not idempotent and isinstance(err, TransientError):
        # a write that may have been received is never blindly repeated
        assert isinstance(err, OutcomeUnknown)


def test_a_body_with_a_lone_surrogate_is_a_permanent_error_not_a_crash(clock: FakeClock) -> None:
    with HostileServer(reply(200)) as server:
        with pytest.raises(PermanentError):
            client(server, clock).request("POST", "/x", data="caf\ud800", idempotent=False)


def test_an_https_origin_that_does_not_speak_tls_is_a_transient_error(clock: FakeClock) -> None:
    with HostileServer(reply(200)) as server:
        # Short timeouts only make the test quick: the handshake never completes.
        http = HttpClient(
            "t", f"https://127.0.0.1:{server.port}", clock=clock, policy=POLICY, timeout=(0.5, 0.5)
        )
        with pytest.raises(TransientError):
            http.request("GET", "/x")


def test_an_unknown_charset_is_read_as_utf8_not_a_crash(clock: FakeClock) -> None:
    with HostileServer(
        reply(200, b'{"a": "\xc3\xa9"}', {"Content-Type": "application/json; charset=nope"})
    ) as server:
        assert client(server, clock).request("GET", "/x").data == {"a": "é"}


def test_the_new_errors_are_drawn_in_the_error_tree() -> None:
    from loopsync import errors

    for cls in (errors.ForeignOrigin, errors.ResponseTooLarge, errors.DeadlineExceeded):
        assert f"── {cls.__name__}" in (errors.__doc__ or "")
