"""Pure: PeopleVox rows -> typed models, and a Loop return -> RA header and item rows.

No I/O here. A row that cannot be read raises `errors.Unreadable` naming the row and
column, so the RA is held with its reason. Column names: docs/api/peoplevox.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from loopsync.connectors.base import PushRequest
from loopsync.connectors.peoplevox.settings import ReturnsColumns, ReturnsData, reason_key
from loopsync.errors import Unreadable
from loopsync.models import (
    MAX_YEAR,
    MIN_YEAR,
    ItemStatus,
    LoopReturn,
    ReturnLine,
    RmaRef,
    RmaStatus,
    guarded,
    identifier,
    whole_number,
)
from loopsync.rules import normalize_status

log = structlog.get_logger("loopsync.peoplevox")


_TRUE_WORDS = frozenset({"yes", "y", "true", "1"})
_FALSE_WORDS = frozenset({"no", "n", "false", "0"})


@dataclass(frozen=True)
class ItemLine:
    """One RA item row: a SKU with its units, reason code and comments."""

    line_number: int
    sku: str
    quantity: int
    reason: str
    comment: str


def header_row(req: PushRequest, located: dict[str, Any]) -> dict[str, str]:
    """The RA header row of a Loop return on its located sales order."""
    ret = req.ret
    return {
        "ReturnAuthorizationNumber": ret.id,
        "SalesOrderNumber": str(located.get("sales_order_number", "")),
        "ReturnTrackingNumber": tracking_number(ret, req.asn_rows),
        "ReturnSenderName": ret.customer or "",
        "ReturnAuthorizationComments": f"Loop return {ret.id}"
        + (f" for order {ret.order_name}" if ret.order_name else ""),
        "SiteReference": req.destination,
        "CustomerPurchaseOrderReferenceNumber": str(located.get("customer_po_reference", "")),
        "ExternalReference": ret.order_name or "",
    }


def item_lines(ret: LoopReturn, reason_code: Callable[[str, str], str]) -> list[ItemLine]:
    """One line per SKU, in the order the SKUs first appear on the Loop return; its reason
    is the first of its Loop lines' reasons that `reason_code` maps to a code."""
    by_sku: dict[str, list[ReturnLine]] = defaultdict(list)
    for line in ret.line_items:
        if line.sku:
            by_sku[line.sku].append(line)
    out = []
    for number, (sku, loop_lines) in enumerate(by_sku.items(), start=1):
        comments = dict.fromkeys(li.comment.strip() for li in loop_lines if li.comment.strip())
        codes = (reason_code(li.return_reason, li.parent_return_reason) for li in loop_lines)
        reason = next((code for code in codes if code), "")
        out.append(ItemLine(number, sku, len(loop_lines), reason, " | ".join(comments)))
    return out


def reason_codes(rows: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The `Return reasons` export as a lookup: each code by its description and by
    itself (a merchant may map a Loop reason to either), keys as `reason_key` folds them."""
    codes: dict[str, str] = {}
    for row in rows:
        code = row.get("Code", "")
        if code:
            codes[reason_key(row.get("Description", ""))] = code
            codes[reason_key(code)] = code
    return codes


def loop_order_value(ret: LoopReturn, loop_field: str) -> str:
    """The Loop value matched against the sales order reference ('#1001' -> '1001')."""
    value = getattr(ret, loop_field) or ""
    return value.lstrip("#").strip() if loop_field == "order_name" else value.strip()


def tracking_number(ret: LoopReturn, asn_rows: Sequence[Mapping[str, Any]]) -> str:
    """The return's tracking number, else the first one on its Loop ASN rows."""
    if ret.tracking_number:
        return ret.tracking_number
    return next((str(row["tracking_number"]) for row in asn_rows if row.get("tracking_number")), "")


def item_row(ra_number: str, line: ItemLine) -> dict[str, str]:
    return {
        "ReturnAuthorizationNumber": ra_number,
        "ItemCode": line.sku,
        "ReturnAuthorizationItemLineNumber": str(line.line_number),
        "ReturnReason": line.reason,
        "ReturnAuthorizationItemComments": line.comment,
        "Quantity": str(line.quantity),
    }


def next_date_cursor(
    cursor: datetime | None, seen: Iterable[datetime], now: datetime
) -> datetime | None:
    """Where the returns sweep starts next time: the newest report date seen, never past
    our clock (`now`, naive UTC). A date after `now` is left out, not trusted: one row dated
    2099 would otherwise blind the sweep for good. Report dates are tenant-local, so a
    tenant east of UTC has recent rows that look future; leaving them out only re-reads
    them (the safe side)."""
    candidates = [d for d in seen if d <= now]
    if cursor is not None:
        candidates.append(min(cursor, now))
    return max(candidates, default=None)


def parse_report_date(text: str, date_format: str) -> datetime | None:
    """A report date (ISO or the configured format, tenant-local and naive); None if blank
    or unreadable, or outside MIN_YEAR..MAX_YEAR (it feeds the sweep cursor, which date
    arithmetic on year 1 would overflow)."""
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        return None
    # Report dates are tenant-local and naive by PeopleVox's design: compared naive.
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, date_format)):  # noqa: DTZ007 - see above
        try:
            when = parse(text).replace(tzinfo=None)
        except (ValueError, OverflowError):
            continue
        if MIN_YEAR <= when.year <= MAX_YEAR:
            return when
        break
    log.warning("peoplevox.unreadable_date", value=text[:40].encode("ascii", "replace").decode())
    return None


def disposition(reusable_words: Iterable[str]) -> str | None:
    """'Is reusable' over a SKU's rows: any 'no' wins, since a unit is not resellable."""
    words = {w.strip().lower() for w in reusable_words if w.strip()}
    if words & _FALSE_WORDS:
        return "not reusable"
    if words & _TRUE_WORDS:
        return "reusable"
    return None


def pick_condition(conditions: Sequence[str], flag_conditions: frozenset[str]) -> str | None:
    """A SKU received over several rows keeps the condition the flag rules care about,
    else its latest one."""
    present = [c.strip() for c in conditions if c.strip()]
    flagged = [c for c in present if normalize_status(c) in flag_conditions]
    chosen = flagged or present
    return chosen[-1] if chosen else None


@guarded("PeopleVox returns rows")
def rma_status_from_rows(
    ref: RmaRef,
    rows: Sequence[Mapping[str, str]],
    cols: ReturnsColumns,
    flag_conditions: frozenset[str] = frozenset(),
) -> RmaStatus:
    """One RA's rows of the returns data -> RmaStatus. Expected units come from the RA as
    created (`ref.extra["expected"]`); received units, condition and reusability from rows.
    Unreadable naming the row and column when a row cannot be read."""
    expected = {str(sku): int(n) for sku, n in (ref.extra.get("expected") or {}).items()}
    received: dict[str, int] = defaultdict(int)
    conditions: dict[str, list[str]] = defaultdict(list)
    reusable: dict[str, list[str]] = defaultdict(list)
    for n, row in enumerate(rows, start=1):
        # A row that cannot be read holds the RA back (Unreadable): guessing a bad quantity
        # as 0, or skipping a row without an item code, would flag it as short.
        sku = identifier(row.get(cols.item_code), f"row {n}: {cols.item_code}")
        if not sku:
            raise Unreadable(f"row {n}: no {cols.item_code}", field=cols.item_code)
        text = row.get(cols.quantity) or ""
        text = text.strip() if isinstance(text, str) else text
        received[sku] += whole_number(text, f"row {n}: quantity") if text else 0
        conditions[sku].append(
            identifier(row.get(cols.condition), f"row {n}: {cols.condition}") or ""
        )
        reusable[sku].append(identifier(row.get(cols.reusable), f"row {n}: {cols.reusable}") or "")
    skus = list(dict.fromkeys([*expected, *received]))
    items = tuple(
        ItemStatus(
            sku=sku,
            expected=expected.get(sku, 0),
            received=received.get(sku, 0),
            condition=pick_condition(conditions[sku], flag_conditions),
            disposition=disposition(reusable[sku]),
        )
        for sku in skus
    )
    status = next(
        (
            s
            for n, row in enumerate(rows, start=1)
            if (s := identifier(row.get(cols.rma_status), f"row {n}: {cols.rma_status}"))
        ),
        "",
    )
    if not status:
        raise Unreadable(f"no {cols.rma_status} on any row", field=cols.rma_status)
    return RmaStatus(
        return_id=ref.return_id,
        rma_id=ref.rma_id,
        status=status,
        expected_units=sum(i.expected for i in items),
        received_units=sum(i.received for i in items),
        items=items,
    )


# -- the returns data sweep (poll) ---------------------------------------------------------


def stored_date_cursor(raw: Any, now: datetime) -> datetime | None:
    """The sweep's date cursor as stored, pulled back to `now` (naive UTC) if it was
    stored in the future (before the clamp, one row dated 2099 set it there for good).
    None when absent or unreadable: sweep everything once, as on a first poll."""
    try:
        stored = datetime.fromisoformat(raw).replace(tzinfo=None) if raw else None
    except (TypeError, ValueError):
        return None
    if stored is not None and stored > now:
        log.warning(
            "peoplevox.date_cursor_pulled_back", was=stored.isoformat(), now=now.isoformat()
        )
        return now
    return stored


def report_dates(rows: Iterable[Mapping[str, str]], data: ReturnsData) -> list[datetime]:
    """The readable report dates of these rows."""
    return [
        d
        for row in rows
        if (d := parse_report_date(row.get(data.columns.date, ""), data.date_format))
    ]


def changed_ras(rows: Iterable[Mapping[str, str]], data: ReturnsData, since: datetime) -> set[str]:
    """RA numbers with a row dated `since` or later, or undated (read, to be safe).
    Filtered here too: a service that ignores the filter sends the whole report."""
    cols = data.columns
    return {
        row.get(cols.rma_number, "")
        for row in rows
        if (d := parse_report_date(row.get(cols.date, ""), data.date_format)) is None or d >= since
    }


def ra_statuses(
    numbers: Iterable[str],
    by_number: Mapping[str, RmaRef],
    rows: Iterable[Mapping[str, str]],
    cols: ReturnsColumns,
    flag_conditions: frozenset[str],
    unread: Mapping[str, str],
) -> tuple[dict[str, RmaStatus], dict[str, str]]:
    """By Loop return id: the status of each RA in `numbers` that has rows, and why the
    others are held: not read this cycle (`unread`: read in full next cycle), or rows
    that cannot be read (held, with the reason, until the data is fixed)."""
    grouped: dict[str, list[Mapping[str, str]]] = defaultdict(list)
    for row in rows:
        grouped[row.get(cols.rma_number, "")].append(row)
    statuses: dict[str, RmaStatus] = {}
    errors = {
        by_number[n].return_id: f"PeopleVox RA {n} not read this cycle: {why}"
        for n, why in unread.items()
    }
    for n in sorted(numbers):
        if grouped.get(n):
            try:
                statuses[by_number[n].return_id] = rma_status_from_rows(
                    by_number[n], grouped[n], cols, flag_conditions
                )
            except ValueError as exc:
                errors[by_number[n].return_id] = f"PeopleVox RA {n}: {exc}"
    return statuses, errors
