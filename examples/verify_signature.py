"""A 3PL's check of loopsync's signed RMA POST (generic connector, `signing_secret` set).

Standard library only; copy it into your receiver. Call `verify(...)` with the raw request
before parsing the body, and answer 401 when it returns a reason.

The canonical string loopsync signs (HMAC-SHA256 with the shared secret, lowercase hex,
sent as `X-Loopsync-Signature: sha256=<hex>`)::

    b"v1\\n" + timestamp + b"\\n" + METHOD + b"\\n" + request_target + b"\\n" + body

- timestamp: the `X-Loopsync-Timestamp` header as sent (Unix seconds, ASCII digits);
- METHOD: upper case, e.g. POST;
- request_target: the path exactly as on the HTTP request line, with `?query` if any
  (e.g. `/rmas`); in WSGI that is RAW_URI / REQUEST_URI, not a decoded PATH_INFO;
- body: the exact body bytes, before any JSON parsing.

Reject a timestamp more than `tolerance` seconds from your clock (a replay), and compare
in constant time (`hmac.compare_digest`). Within the tolerance, a captured request can be
replayed only as the same RMA POST, which is idempotent by RMA number.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE = 300  # seconds: five minutes either side of the receiver's clock


def verify(
    secret: bytes,
    method: str,
    request_target: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE,
) -> str | None:
    """None when the request is authentic and fresh, else why it must be refused (401)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stamp = lowered.get("x-loopsync-timestamp", "")
    given = lowered.get("x-loopsync-signature", "")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        return "missing or malformed X-Loopsync-Timestamp"
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance:
        return "timestamp outside the allowed window (replayed or clock skew)"
    message = b"\n".join(
        [
            b"v1",
            stamp.encode("ascii"),
            method.upper().encode("ascii"),
            request_target.encode("utf-8"),
            body,
        ]
    )
    expected = "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii")):
        return "signature does not match"
    return None
