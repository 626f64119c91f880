"""Issue 14 §6: the generic 3PL signature covers timestamp, method, path and body, and the
documented receiver (examples/verify_signature.py) verifies what the connector sends and
refuses replays and tampering."""

import hashlib
import hmac
import importlib.util
import json
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors.generic.wire_http import canonical_string, request_target, sign
from loopsync.errors import AuthError
from loopsync.sandbox.generic import GenericEmulator
from loopsync.sandbox.server import ApiServer, Recorder
from loopsync.testing import FakeClock
from tests.test_generic import connector, deliver, http_connector, request

ROOT = Path(__file__).resolve().parents[1]


def _receiver():
    spec = importlib.util.spec_from_file_location(
        "verify_signature", ROOT / "examples" / "verify_signature.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify = _receiver().verify


@pytest.fixture
def threepl(clock):
    emu = GenericEmulator(clock=clock)
    emu.recorder = Recorder()
    server = ApiServer(emu).start()
    emu.url = server.url
    yield emu
    server.stop()


def _sent(emu):
    post = emu.recorder.calls("generic", method="POST")[-1]
    return post, {k: v for k, v in post.headers.items()}


def test_example_receiver_verifies_exactly_what_the_connector_sends(threepl, clock):
    deliver(http_connector(threepl, clock), request())
    post, headers = _sent(threepl)
    secret = threepl.signing_secret.encode()
    assert verify(secret, "POST", "/rmas", headers, post.body, now=clock.now().timestamp()) is None
    assert threepl.bad_signatures == []


def test_receiver_refuses_a_replay_with_an_old_timestamp(threepl, clock):
    deliver(http_connector(threepl, clock), request())
    post, headers = _sent(threepl)
    later = clock.now().timestamp() + 301
    assert (
        verify(threepl.signing_secret.encode(), "POST", "/rmas", headers, post.body, now=later)
        is not None
    )


def test_receiver_refuses_tampered_body_path_method_or_timestamp(threepl, clock):
    deliver(http_connector(threepl, clock), request())
    post, headers = _sent(threepl)
    secret, now = threepl.signing_secret.encode(), clock.now().timestamp()
    body = json.loads(post.body)
    body["lines"][0]["quantity"] += 1
    tampered = json.dumps(body, separators=(",", ":")).encode()
    assert verify(secret, "POST", "/rmas", headers, tampered, now=now) is not None
    assert verify(secret, "POST", "/rmas/other", headers, post.body, now=now) is not None
    assert verify(secret, "PUT", "/rmas", headers, post.body, now=now) is not None
    shifted = {**headers, "X-Loopsync-Timestamp": str(int(now) - 1)}
    assert verify(secret, "POST", "/rmas", shifted, post.body, now=now) is not None
    assert verify(b"another-secret", "POST", "/rmas", headers, post.body, now=now) is not None


def test_body_only_signature_of_the_old_scheme_is_refused(threepl, clock):
    deliver(http_connector(threepl, clock), request())
    post, headers = _sent(threepl)
    old = (
        "sha256=" + hmac.new(threepl.signing_secret.encode(), post.body, hashlib.sha256).hexdigest()
    )
    assert (
        verify(
            threepl.signing_secret.encode(),
            "POST",
            "/rmas",
            {**headers, "X-Loopsync-Signature": old},
            post.body,
            now=clock.now().timestamp(),
        )
        is not None
    )


def test_sandbox_3pl_refuses_a_captured_post_replayed_later(threepl, clock):
    req = request()
    deliver(http_connector(threepl, clock), req)
    post, headers = _sent(threepl)
    del threepl.rmas[req.ret.id]
    clock.advance(600)
    replay = {
        k: v
        for k, v in headers.items()
        if k.lower()
        in ("x-api-key", "x-loopsync-timestamp", "x-loopsync-signature", "content-type")
    }
    answer = requests.post(f"{threepl.url}/rmas", data=post.body, headers=replay, timeout=10)
    assert answer.status_code == 401 and "stale" in answer.json()["error"]
    assert req.ret.id not in threepl.rmas


def test_sandbox_3pl_refuses_a_sender_whose_clock_is_far_off(threepl, clock):
    skewed = FakeClock(clock.now())
    skewed.advance(-3600)
    conn = connector(threepl.warehouse_config(threepl.url), skewed, env=threepl.secret_env())
    with pytest.raises(AuthError):
        deliver(conn, request())
    assert not threepl.rmas


def test_signature_covers_the_query_of_rma_url(threepl, clock):
    conf = threepl.warehouse_config(threepl.url)
    conf["rma_url"] = f"{threepl.url}/rmas?tenant=acme%20east"
    conn = connector(conf, clock, env=threepl.secret_env())
    deliver(conn, request())
    post, headers = _sent(threepl)
    secret, now = threepl.signing_secret.encode(), clock.now().timestamp()
    assert threepl.bad_signatures == []
    assert verify(secret, "POST", "/rmas?tenant=acme%20east", headers, post.body, now=now) is None
    assert verify(secret, "POST", "/rmas", headers, post.body, now=now) is not None


def test_request_target_is_the_request_line_path():
    assert request_target("https://3pl.example/api/rmas") == "/api/rmas"
    assert request_target("https://3pl.example") == "/"
    assert request_target("https://3pl.example/rmas?a=1&b=x%20y") == "/rmas?a=1&b=x%20y"


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=200),
    stamp=st.integers(min_value=0, max_value=10**10),
    path=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).map(
        lambda p: "/" + p
    ),
    flip=st.integers(min_value=0),
)
def test_any_signed_request_verifies_and_any_changed_byte_does_not(body, stamp, path, flip):
    secret = "a-shared-signing-secret"
    headers = {
        "X-Loopsync-Timestamp": str(stamp),
        "X-Loopsync-Signature": sign(secret, str(stamp), "post", path, body),
    }
    assert verify(secret.encode(), "POST", path, headers, body, now=stamp) is None
    assert canonical_string(str(stamp), "post", path, body).endswith(b"\n" + body)
    if body:
        i = flip % len(body)
        changed = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        assert verify(secret.encode(), "POST", path, headers, changed, now=stamp) is not None
