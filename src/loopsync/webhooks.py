"""Webhook intake, the pure part: signatures, event parsing, the intake decision.

Three senders, each checked over the RAW body before anything is parsed, in constant time
(`hmac.compare_digest`), with the merchant's webhook secret (`webhooks:` in its file):

- Loop (`POST /webhooks/loop/<merchant>`): `X-Loop-Signature` = base64(HMAC-SHA256(raw
  body, secret)). The body is the return object plus `topic` and `trigger`; only `id`
  (the return id) and the timestamps are read (docs/api/loop.md, "Webhooks"). Loop sends
  no event id: the dedup key is the body's SHA-256. Loop documents no delivery timestamp
  either; the newest of the return's `updated_at`/`edited_at`/`created_at` stands in, and
  an event older than `webhooks.max_age` is refused (Loop retries a failed delivery 5
  times with backoff and honours a `Retry-After` of up to 30 minutes, so a genuine event
  is never hours old). The payload's state is never trusted: handling reads the return
  from Loop again, so a replayed event can at most cause one more read.
- ShipHero (`POST /webhooks/shiphero/<merchant>`): `x-shiphero-hmac-sha256` =
  base64(HMAC-SHA256(raw body, secret)), the secret `webhook_create` showed once. The body
  ("Return Update") names the return by `return_id` (legacy int) and `return_uuid`; the
  dedup key is the body's SHA-256, never `x-shiphero-message-id`: that header is not
  signed, so a captured delivery replayed under new ids would be a new event each time.
  Its `created_at` is the return's, not the event's: no age check (a replay only makes
  loopsync poll that RMA once more).
- The generic 3PL (`POST /webhooks/generic/<merchant>`): the generic connector's request
  signature (`loopsync.connectors.generic`, `examples/verify_signature.py`):
  `X-Loopsync-Signature: sha256=<hex HMAC-SHA256 of "v1\\n" + timestamp + "\\n" + METHOD +
  "\\n" + request target + "\\n" + body>` and `X-Loopsync-Timestamp` (Unix seconds), refused
  when more than 5 minutes from our clock. Body: `{"event_id": "...", "rma_number": "..."}`
  (the RMA number is the Loop return id); the dedup key is `event_id`.

Every parser raises only `Unreadable` (errors.py) on any body; `intake` turns a request into
an `Accept` (store this event) or a `Refuse` (status and reason), never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from loopsync.errors import Unreadable
from loopsync.models import identifier, numeric_id, remote_timestamp

PATH_PREFIX = "/webhooks/"
MAX_BODY = 1024 * 1024  # bytes: a Loop return payload is a few kB; far above, never needed
GENERIC_TOLERANCE = timedelta(minutes=5)  # the generic connector's documented window
DEFAULT_MAX_AGE = timedelta(hours=24)
LOOP_HEADER = "X-Loop-Signature"
SHIPHERO_HEADER = "x-shiphero-hmac-sha256"
GENERIC_HEADER = "X-Loopsync-Signature"
GENERIC_TIMESTAMP = "X-Loopsync-Timestamp"
# A key never used by any merchant: an unknown merchant's request is checked against it, so
# it costs the same time as a wrong signature.
_DECOY_KEY = hashlib.sha256(b"loopsync webhook decoy").digest()


class Source(StrEnum):
    """Who sent a webhook; the URL's second part."""

    LOOP = "loop"
    SHIPHERO = "shiphero"
    GENERIC = "generic"


class Refusal(StrEnum):
    """Why a request was refused (counted per merchant, shown by `status`)."""

    METHOD = "method"  # 405
    TOO_LARGE = "too_large"  # 413
    LENGTH = "length"  # 411: no Content-Length and not chunked
    CONTENT_TYPE = "content_type"  # 415
    # 401, as a bad signature: a different status would tell which merchants exist
    UNKNOWN = "unknown"  # no such merchant or sender, or no secret for this sender
    UNSIGNED = "unsigned"  # 401
    BAD_SIGNATURE = "bad_signature"  # 401
    UNREADABLE = "unreadable"  # 400: signed, but not an event loopsync can use
    STALE = "stale"  # 400: signed, older than the allowed age (a replay)
    BUSY = "busy"  # 503: too many requests being read at once
    STORE = "store"  # 503: the state file could not record it (the sender retries)


STATUS: Mapping[Refusal, int] = {
    Refusal.METHOD: 405,
    Refusal.TOO_LARGE: 413,
    Refusal.LENGTH: 411,
    Refusal.CONTENT_TYPE: 415,
    Refusal.UNKNOWN: 401,
    Refusal.UNSIGNED: 401,
    Refusal.BAD_SIGNATURE: 401,
    Refusal.UNREADABLE: 400,
    Refusal.STALE: 400,
    Refusal.BUSY: 503,
    Refusal.STORE: 503,
}


@dataclass(frozen=True)
class WebhookEvent:
    """One authentic event: what the inbox stores (no personal data; not the body)."""

    source: Source
    dedup_key: str  # unique per merchant: "<source>:<event id or body sha256>"
    topic: str
    subject: str  # Loop: the return id; ShipHero: its return id(s); generic: the RMA number
    body_hash: str
    occurred_at: datetime | None = None
    alt_subject: str | None = None  # ShipHero: the legacy id when the uuid is the subject


@dataclass(frozen=True)
class Request:
    """What the listener read: the path's parts, the headers (lower-cased names), body."""

    source: str
    merchant: str
    target: str  # the request target as on the request line (the generic signature)
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Accept:
    merchant: str
    event: WebhookEvent
    duplicate: bool = False  # already in the inbox: answered 2xx, changes nothing


@dataclass(frozen=True)
class Refuse:
    reason: Refusal
    merchant: str | None = None  # known merchants are counted

    @property
    def status(self) -> int:
        return STATUS[self.reason]


# -- paths and headers -----------------------------------------------------------------------


def split_path(path: str) -> tuple[str, str] | None:
    """`/webhooks/<source>/<merchant>` -> (source, merchant); None for anything else."""
    if not path.startswith(PATH_PREFIX):
        return None
    parts = path.removeprefix(PATH_PREFIX).split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def json_content(value: str | None) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`)."""
    return (value or "").split(";", 1)[0].strip().lower() == "application/json"


CHUNKED = -1  # `framing`: the body comes in chunks


def framing(lengths: Sequence[str], transfer_encoding: str | None, cap: int) -> int | Refusal:
    """How to read a body, from its headers: its length, CHUNKED, or a refusal. One
    Content-Length of ASCII digits, or `Transfer-Encoding: chunked` alone; both at once
    (a request-smuggling trick), neither, or anything else is refused."""
    if transfer_encoding is not None:
        if lengths or transfer_encoding.strip().lower() != "chunked":
            return Refusal.LENGTH
        return CHUNKED
    text = lengths[0].strip() if len(lengths) == 1 else ""
    if not (text.isascii() and text.isdigit() and len(text) < 16):
        return Refusal.LENGTH
    return Refusal.TOO_LARGE if int(text) > cap else int(text)


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- signatures ------------------------------------------------------------------------------


def hmac_b64(secret: str | bytes, body: bytes) -> str:
    """base64(HMAC-SHA256(body, secret)): Loop's and ShipHero's scheme."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode("ascii")


def check_b64(secret: str | bytes, body: bytes, given: str | None) -> bool:
    """Does `given` (the header, base64) sign `body`? Compared as bytes in constant time;
    a header that is not base64 is compared anyway (same time), and fails."""
    expected = hmac.new(
        secret.encode("utf-8") if isinstance(secret, str) else secret, body, hashlib.sha256
    ).digest()
    try:
        provided = base64.b64decode((given or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        provided = b""
    return hmac.compare_digest(provided, expected)


def canonical_string(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """What the generic scheme signs: version, timestamp, method, request target, body
    (the generic connector signs its RMA POST with this same string)."""
    head = f"v1\n{timestamp}\n{method.upper()}\n{path}\n"
    return head.encode("utf-8") + body


def sign_generic(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), canonical_string(timestamp, method, path, body), hashlib.sha256
    ).hexdigest()
    return f"sha256={digest}"


def check_generic(secret: str, request: Request, now: datetime) -> Refusal | None:
    """None when the generic signature is valid and its timestamp is within 5 minutes."""
    stamp = request.headers.get(GENERIC_TIMESTAMP.lower(), "")
    given = request.headers.get(GENERIC_HEADER.lower())
    if given is None:
        return Refusal.UNSIGNED
    expected = sign_generic(secret, stamp, "POST", request.target, request.body)
    good = hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))
    if not good:
        return Refusal.BAD_SIGNATURE
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return Refusal.BAD_SIGNATURE
    if abs(now.timestamp() - int(stamp)) > GENERIC_TOLERANCE.total_seconds():
        return Refusal.STALE
    return None


# -- parsers (remote data: Unreadable, never anything else) ----------------------------------


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Unreadable(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{what} is a {type(value).__name__}, not an object")
    return value


def _text(value: Any, what: str, limit: int = 100) -> str:
    text = identifier(value, what) or ""
    return text[:limit]


def parse_loop(body: bytes) -> WebhookEvent:
    """A Loop webhook body -> its event (the return id and its newest timestamp)."""
    doc = _object(body, "Loop webhook")
    rid = numeric_id(doc.get("id"), "Loop webhook id")
    stamps = [
        remote_timestamp(doc[k], f"Loop webhook {k}:")
        for k in ("updated_at", "edited_at", "created_at")
        if doc.get(k) is not None
    ]
    digest = body_hash(body)
    return WebhookEvent(
        Source.LOOP,
        f"loop:{digest}",
        _text(doc.get("trigger") or doc.get("topic"), "Loop webhook trigger") or "return",
        rid,
        digest,
        max(stamps) if stamps else None,
    )


def parse_shiphero(body: bytes) -> WebhookEvent:
    """A ShipHero "Return Update" body -> its event (the return's uuid and legacy id),
    keyed by what the signature covers: the body."""
    doc = _object(body, "ShipHero webhook")
    uuid = identifier(doc.get("return_uuid"), "ShipHero webhook return_uuid")
    legacy = identifier(doc.get("return_id"), "ShipHero webhook return_id")
    if uuid is None and legacy is None:
        raise Unreadable("ShipHero webhook names no return", field="return_id")
    digest = body_hash(body)
    return WebhookEvent(
        Source.SHIPHERO,
        f"shiphero:{digest}",
        _text(doc.get("webhook_type"), "ShipHero webhook_type") or "Return Update",
        (uuid or legacy or "")[:200],
        digest,
        None,
        legacy[:200] if uuid and legacy else None,
    )


def parse_generic(body: bytes) -> WebhookEvent:
    """A generic 3PL receipt event -> its event (the RMA number is the Loop return id)."""
    doc = _object(body, "3PL webhook")
    event_id = identifier(doc.get("event_id"), "3PL webhook event_id")
    if event_id is None:
        raise Unreadable("3PL webhook has no event_id", field="event_id")
    rma = numeric_id(doc.get("rma_number"), "3PL webhook rma_number")
    return WebhookEvent(
        Source.GENERIC,
        f"generic:{event_id[:200]}",
        _text(doc.get("topic"), "3PL webhook topic") or "receipt",
        rma,
        body_hash(body),
    )


# -- the decision ----------------------------------------------------------------------------


# (source, merchant) -> the secret, or None when the merchant or its secret is unknown
SecretOf = Callable[[Source, str], str | None]


def intake(
    request: Request, secret_of: SecretOf, now: datetime, max_age: timedelta = DEFAULT_MAX_AGE
) -> Accept | Refuse:
    """Is this request an authentic, fresh event for a known merchant? Pure."""
    try:
        source = Source(request.source)
    except ValueError:
        return Refuse(Refusal.UNKNOWN)
    secret = secret_of(source, request.merchant)
    known = request.merchant if secret is not None else None
    refusal = _signature(source, secret, request, now)
    if refusal is not None:
        return Refuse(refusal, known)
    assert secret is not None  # _signature refuses UNKNOWN without one
    try:
        event = _parse(source, request)
    except Unreadable:
        return Refuse(Refusal.UNREADABLE, known)
    if event.occurred_at is not None and now - event.occurred_at > max_age:
        return Refuse(Refusal.STALE, known)
    return Accept(request.merchant, event)


def _signature(
    source: Source, secret: str | None, request: Request, now: datetime
) -> Refusal | None:
    if source is Source.GENERIC:
        if secret is None:
            check_generic(_DECOY_KEY.hex(), request, now)  # the same work as a known one
            return Refusal.UNKNOWN
        return check_generic(secret, request, now)
    header = LOOP_HEADER if source is Source.LOOP else SHIPHERO_HEADER
    given = request.headers.get(header.lower())
    good = check_b64(secret if secret is not None else _DECOY_KEY, request.body, given)
    if secret is None:
        return Refusal.UNKNOWN
    if given is None:
        return Refusal.UNSIGNED
    return None if good else Refusal.BAD_SIGNATURE


def _parse(source: Source, request: Request) -> WebhookEvent:
    if source is Source.LOOP:
        return parse_loop(request.body)
    if source is Source.SHIPHERO:
        return parse_shiphero(request.body)
    return parse_generic(request.body)


# -- health (pure) ---------------------------------------------------------------------------


def healthy(last_accepted: datetime | None, now: datetime, within: timedelta) -> bool:
    """Webhooks are healthy while an event was accepted within `within`."""
    return last_accepted is not None and now - last_accepted <= within


def poll_due(
    *,
    now: datetime,
    last_poll: datetime | None,
    last_accepted: datetime | None,
    healthy_within: timedelta,
    poll_every: timedelta | None,
) -> bool:
    """Should a scheduled cycle run now? Always, unless webhooks are healthy and a
    longer `poll_every` is set and has not passed since the last cycle: polling stays the
    truth, only less often."""
    if poll_every is None or last_poll is None:
        return True
    if not healthy(last_accepted, now, healthy_within):
        return True
    return now - last_poll >= poll_every
