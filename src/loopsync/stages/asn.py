"""Loop's ASN report within the body cap: it does not paginate, so one answer holds a
whole window, and a busy day (20,000 returned lines) passes the HTTP layer's cap.

Contract: `asn_parts` reads one planned window and yields it as parts, each read once
and in time order. A window whose answer passes the cap (`ResponseTooLarge`) is read
again as two halves, and so on, at most `MAX_SPLITS` times deep and never below
`MIN_PART`; the request count per window is bounded (at most 2^(MAX_SPLITS+1) - 1, and
only when every part is too large). A part still too large at that floor is yielded
with no rows and the reason, so the stage records it once and moves past it instead of
failing the same window in every cycle. The cap itself is the operator's
(`loop.max_body`): raising it for one endpoint would let one answer take that much
memory per merchant.

Which timestamp Loop's `from`/`to` filter on, and whether times of day are honoured,
is UNCONFIRMED (docs/api/loop.md); a report that ignored the time of day would end at
the floor, recorded, rather than loop forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from loopsync.errors import ResponseTooLarge
from loopsync.ports import LoopApi
from loopsync.timeutil import iso
from loopsync.windows import Window

MIN_PART = timedelta(minutes=1)  # the shortest `asn.window` the config accepts
MAX_SPLITS = 4  # a one-day window ends in parts of 90 minutes at the finest (31 requests)


@dataclass(frozen=True)
class AsnPart:
    """One part of a planned ASN window: its rows, or None with why it was not read."""

    window: Window
    rows: list[Any] | None
    refused: str = ""


def halves(window: Window, depth: int) -> tuple[Window, Window] | None:
    """The two halves to read instead of `window` (read at `depth` splits), or None when
    it is as small as it may get."""
    half = (window.end - window.start) / 2
    if depth >= MAX_SPLITS or half < MIN_PART:
        return None
    middle = window.start + half
    return Window(window.start, middle), Window(middle, window.end)


def asn_parts(loop: LoopApi, window: Window, depth: int = 0) -> Iterator[AsnPart]:
    """`window`'s ASN rows, part by part (see the module docstring)."""
    try:
        rows = loop.asn_report(window.start, window.end)
    except ResponseTooLarge as exc:
        split = halves(window, depth)
        if split is None:
            yield AsnPart(window, None, str(exc))
            return
        for part in split:
            yield from asn_parts(loop, part, depth + 1)
        return
    yield AsnPart(window, rows)


def refused_text(part: AsnPart) -> str:
    """The problem recorded for a part that could not be read at the floor."""
    return (
        f"ASN report {iso(part.window.start)} -> {iso(part.window.end)} not read "
        f"({part.refused}), even in parts of {part.window.end - part.window.start}; its "
        "tracking numbers are skipped (loop.max_response_mb raises the cap)"
    )
