"""JSON on the ingest hot path: orjson where it gives the standard library's answer,
the standard library where it would not. The one module that imports orjson.

Contract: `loads` returns exactly what `json.loads` returns, and raises where it raises
(a `ValueError`, or what the standard library raises for text nested too deep); `dumps`
gives compact JSON bytes (UTF-8, no spaces) of any value `json.dumps` can encode with
`ensure_ascii=False`, and raises `TypeError` or `ValueError` for any it cannot.

orjson decodes and encodes a page of Loop returns in about half and a tenth of the
standard library's time (BENCHMARKS.md, 1), but it differs in three places, each sent to
the standard library here:

- an integer beyond 64 bits: orjson's decoder turns it into a float (an id would lose
  digits) and its encoder refuses it. `loads` looks for a number token of 19 or more
  digits first (one scan of the text, about 2 us a return) and lets the standard
  library decode such text; `dumps` encodes again on refusal.
- text orjson refuses (a lone surrogate escape, NaN, a value nested over 1,024 deep):
  the standard library decides, as it did before orjson.
- a value orjson would encode in its own way (a datetime, a dataclass, a str subclass):
  passed through to the standard library, which refuses what is not JSON.

One difference is kept: `dumps` writes NaN and the infinities (which are not JSON) as
`null`, as orjson does; the standard library would write `NaN`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# A number token (after `[`, `,` or `:`, maybe spaces and a minus) of 19+ digits may not fit
# 64 bits. Found by mapping every digit to "0" and anything else to "x" (bytes.translate,
# C speed) and looking for 19 zeros; a run inside a string (a USPS tracking number) is
# told apart by what precedes it.
_DIGIT_MARKS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_LONG_RUN = b"0" * 19
_BEFORE_NUMBER = frozenset(b"[,:")
_SPACE = frozenset(b" \t\r\n")
_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def may_hold_long_int(text: str | bytes) -> bool:
    """Whether `text` may hold an integer token of 19 or more digits (a cheap test: text
    that is not JSON may say yes; a long integer never says no). About 2 us a Loop
    return."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    marks = data.translate(_DIGIT_MARKS)
    at = marks.find(_LONG_RUN)
    while at >= 0:
        i = at - 1
        if i >= 0 and data[i] == 0x2D:  # "-"
            i -= 1
        while i >= 0 and data[i] in _SPACE:
            i -= 1
        if i < 0 or data[i] in _BEFORE_NUMBER:
            return True
        at = marks.find(_LONG_RUN, at + len(_LONG_RUN))
    return False


def loads(text: str | bytes) -> Any:
    """`json.loads(text)`, faster for the common case (see the module docstring)."""
    if not may_hold_long_int(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library decides: it accepts some of what orjson refuses
    return json.loads(text)


def dumps_fast(value: Any) -> bytes:
    """orjson's compact JSON; TypeError for anything it refuses (a lone surrogate, a key
    that is not text, an int past 64 bits, a value orjson would encode its own way).
    For a caller that has its own slow path; `dumps` is the whole answer."""
    return orjson.dumps(value, option=_OPTIONS)


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8 (non-ASCII kept as is); TypeError or ValueError for a value
    that is not JSON (a lone surrogate, a key that is not text, a set, ...)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        pass  # an int past 64 bits, a subclass, a datetime: the standard library decides
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValueError(f"not JSON text: {exc.reason}") from None
    except RecursionError:
        raise ValueError("nested too deep to encode") from None
