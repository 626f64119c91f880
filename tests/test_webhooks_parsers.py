"""Property tests for the webhook intake's pure part: every parser of a received body
returns an event or raises Unreadable, the signature checks accept exactly what the
secret signed, and the intake decision never raises whatever arrives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import webhooks
from loopsync.errors import Unreadable

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SECRET = "a-webhook-secret-123"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
# objects that look like each sender's body, with hostile values in the fields read
field_values = (
    st.none()
    | st.integers()
    | st.text(max_size=80)
    | st.just("2026-06-01T11:00:00Z")
    | st.just("\ud800")
    | st.just("1" * 5000)
    | st.lists(st.integers(), max_size=2)
)
loop_like = st.fixed_dictionaries(
    {},
    optional={
        "id": field_values,
        "topic": field_values,
        "trigger": field_values,
        "updated_at": field_values,
        "edited_at": field_values,
        "created_at": field_values,
    },
)
shiphero_like = st.fixed_dictionaries(
    {},
    optional={
        "return_id": field_values,
        "return_uuid": field_values,
        "webhook_type": field_values,
    },
)
generic_like = st.fixed_dictionaries(
    {}, optional={"event_id": field_values, "rma_number": field_values, "topic": field_values}
)


def encode(value: object) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def parses_or_unreadable(parse, body: bytes) -> None:
    try:
        event = parse(body)
    except Unreadable:
        return
    assert isinstance(event, webhooks.WebhookEvent)
    assert event.subject and len(event.dedup_key) <= 220 and len(event.topic) <= 100


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300) | json_values.map(encode) | loop_like.map(encode))
def test_loop_parser_returns_an_event_or_raises_unreadable(body):
    parses_or_unreadable(webhooks.parse_loop, body)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300) | json_values.map(encode) | shiphero_like.map(encode))
def test_shiphero_parser_returns_an_event_or_raises_unreadable(body):
    parses_or_unreadable(webhooks.parse_shiphero, body)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300) | json_values.map(encode) | generic_like.map(encode))
def test_generic_parser_returns_an_event_or_raises_unreadable(body):
    parses_or_unreadable(webhooks.parse_generic, body)


def test_a_body_nested_thousands_deep_is_unreadable_not_a_crash():
    body = b"[" * 100_000 + b"]" * 100_000
    for parse in (webhooks.parse_loop, webhooks.parse_shiphero, webhooks.parse_generic):
        parses_or_unreadable(parse, body)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40), st.binary(max_size=200), st.binary(max_size=200))
def test_base64_signature_accepts_exactly_the_signed_body(secret, body, other):
    sig = webhooks.hmac_b64(secret, body)
    assert webhooks.check_b64(secret, body, sig)
    if other != body:
        assert not webhooks.check_b64(secret, other, sig)
    assert not webhooks.check_b64(secret + "x", body, sig)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120) | st.none(), st.binary(max_size=100))
def test_base64_signature_check_never_raises_on_any_header(header, body):
    assert webhooks.check_b64(SECRET, body, header) in (True, False)


header_maps = st.dictionaries(
    st.sampled_from(
        [
            "x-loop-signature",
            "x-shiphero-hmac-sha256",
            "x-shiphero-message-id",
            "x-loopsync-signature",
            "x-loopsync-timestamp",
            "content-type",
        ]
    ),
    st.text(max_size=60),
    max_size=5,
)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["loop", "shiphero", "generic", "other", ""]),
    st.sampled_from(["acme", "nobody", ""]),
    header_maps,
    st.binary(max_size=200) | loop_like.map(encode),
)
def test_intake_decides_any_request_without_raising_and_never_accepts_it_unsigned(
    source, merchant, headers, body
):
    def secret_of(src, name):
        return SECRET if name == "acme" else None

    request = webhooks.Request(source, merchant, f"/webhooks/{source}/{merchant}", headers, body)
    decision = webhooks.intake(request, secret_of, NOW)
    assert isinstance(decision, webhooks.Accept | webhooks.Refuse)
    # random headers never carry a valid HMAC of the body under the secret
    assert isinstance(decision, webhooks.Refuse)
    if merchant != "acme":
        assert decision.reason in (webhooks.Refusal.UNKNOWN,) and decision.merchant is None


@settings(max_examples=60, deadline=None)
@given(loop_like.map(encode))
def test_a_correctly_signed_loop_body_is_accepted_unless_unreadable_or_stale(body):
    request = webhooks.Request(
        "loop",
        "acme",
        "/webhooks/loop/acme",
        {"x-loop-signature": webhooks.hmac_b64(SECRET, body)},
        body,
    )
    decision = webhooks.intake(request, lambda s, m: SECRET, NOW)
    if isinstance(decision, webhooks.Refuse):
        assert decision.reason in (webhooks.Refusal.UNREADABLE, webhooks.Refusal.STALE)
    else:
        assert decision.event.dedup_key == "loop:" + webhooks.body_hash(body)


@settings(max_examples=60, deadline=None)
@given(header_maps, st.binary(max_size=100))
def test_generic_signature_check_never_raises(headers, body):
    request = webhooks.Request("generic", "acme", "/webhooks/generic/acme", headers, body)
    result = webhooks.check_generic(SECRET, request, NOW)
    assert result is None or isinstance(result, webhooks.Refusal)
    assert result is not None  # no random header is the right signature


def test_generic_signature_within_five_minutes_is_accepted_outside_refused():
    body = b'{"event_id": "e1", "rma_number": "1001"}'
    path = "/webhooks/generic/acme"
    for skew, expected in ((0, None), (299, None), (301, webhooks.Refusal.STALE)):
        stamp = str(int((NOW - timedelta(seconds=skew)).timestamp()))
        headers = {
            "x-loopsync-timestamp": stamp,
            "x-loopsync-signature": webhooks.sign_generic(SECRET, stamp, "POST", path, body),
        }
        request = webhooks.Request("generic", "acme", path, headers, body)
        assert webhooks.check_generic(SECRET, request, NOW) is expected


def test_generic_scheme_matches_the_documented_verifier():
    """examples/verify_signature.py (what a 3PL runs) accepts what we check, and back."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "verify_signature", Path(__file__).resolve().parent.parent / "examples/verify_signature.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body, path, stamp = b'{"event_id": "e1"}', "/webhooks/generic/acme", str(int(NOW.timestamp()))
    sig = webhooks.sign_generic(SECRET, stamp, "POST", path, body)
    headers = {"X-Loopsync-Timestamp": stamp, "X-Loopsync-Signature": sig}
    assert module.verify(SECRET.encode(), "POST", path, headers, body, now=NOW.timestamp()) is None


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=60))
def test_split_path_names_a_source_and_merchant_or_nothing(path):
    parts = webhooks.split_path(path)
    assert parts is None or (all(parts) and "/" not in "".join(parts))


@settings(max_examples=80, deadline=None)
@given(
    st.none() | st.integers(0, 10_000),
    st.none() | st.integers(0, 10_000),
    st.integers(60, 7200),
    st.none() | st.integers(60, 86_400),
)
def test_polling_is_only_ever_deferred_while_webhooks_are_healthy(
    poll_ago, accepted_ago, healthy_within, poll_every
):
    def ago(seconds):
        return None if seconds is None else NOW - timedelta(seconds=seconds)

    due = webhooks.poll_due(
        now=NOW,
        last_poll=ago(poll_ago),
        last_accepted=ago(accepted_ago),
        healthy_within=timedelta(seconds=healthy_within),
        poll_every=None if poll_every is None else timedelta(seconds=poll_every),
    )
    healthy = accepted_ago is not None and accepted_ago <= healthy_within
    if not healthy or poll_every is None or poll_ago is None:
        assert due
    else:
        assert due == (poll_ago >= poll_every)


class _NoSocket:
    def settimeout(self, seconds: float) -> None:
        pass


def body_reader(data: bytes, cap: int = 1000):
    import io

    from loopsync import web
    from loopsync.testing import FakeClock

    return web._BodyReader(io.BufferedReader(io.BytesIO(data)), _NoSocket(), cap, FakeClock())


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_chunked_reader_returns_a_body_or_a_refusal_or_drops_the_connection(data):
    try:
        result = body_reader(data).chunked()
    except ConnectionError:
        return  # cut short or a line too long: the connection is closed, nothing stored
    assert isinstance(result, bytes | webhooks.Refusal)
    if isinstance(result, bytes):
        assert len(result) <= 1000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=80), max_size=8))
def test_chunked_reader_reassembles_any_chunking_and_refuses_past_the_cap(chunks):
    wire = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    body = b"".join(chunks)
    assert body_reader(wire, cap=1000).chunked() == body
    if body:
        assert body_reader(wire, cap=len(body) - 1).chunked() is webhooks.Refusal.TOO_LARGE


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=3), st.none() | st.text(max_size=20))
def test_framing_is_one_length_within_the_cap_chunked_alone_or_refused(lengths, encoding):
    how = webhooks.framing(lengths, encoding, 1000)
    if isinstance(how, webhooks.Refusal):
        assert how in (webhooks.Refusal.LENGTH, webhooks.Refusal.TOO_LARGE)
    elif how == webhooks.CHUNKED:
        assert encoding is not None and not lengths
    else:
        assert encoding is None and len(lengths) == 1 and 0 <= how <= 1000
        assert lengths[0].strip() == str(how) or lengths[0].strip().lstrip("0") == str(how)
