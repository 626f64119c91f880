"""Plain data that crosses module boundaries: a Loop return as loopsync sees it, an RMA
reference, and a warehouse's receipt status. No I/O here.

Also the field readers every parser of remote data uses (`identifier`, `numeric_id`,
`whole_number`, `remote_timestamp`, `check_tree`) and `guarded`, which makes a parser
total: it returns a valid record or raises `Unreadable` naming the field, never anything
else (a wrong type, a timestamp whose UTC conversion overflows, a lone surrogate that
SQLite or a request body cannot encode, a structure nested thousands deep).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from loopsync import jsonio
from loopsync.errors import Unreadable
from loopsync.redaction import clip
from loopsync.timeutil import parse_timestamp

# The one "unreadable record" error (errors.Unreadable); the old name stays importable.
MalformedReturn = Unreadable

MAX_ID_DIGITS = 20  # Loop ids are 64-bit integers
MAX_IDENTIFIER = 255  # SKUs, order and destination ids, tracking numbers, status words
MAX_UNITS = 10**9  # a count beyond this is garbage (and would not fit a JSON dump)
MAX_DEPTH = 64  # nesting of a remote object; Loop's are 4 deep
MAX_INT_BITS = 1024  # ~300 digits; json.dumps refuses ints over 4,300 digits
# Years a remote timestamp may carry: outside them the record is garbage, and date
# arithmetic on it (lookbacks, windows) would overflow.
MIN_YEAR, MAX_YEAR = 1971, 9000
REPLACEMENT = "\ufffd"  # what bytes that were not UTF-8 became when the answer was decoded
# Refused in identifiers: C0 controls (NUL, ...), DEL, C1 controls, line separators, lone
# surrogates (SQLite and request bodies cannot encode them) and U+FFFD (bytes that were
# not UTF-8).
_BAD_IN_IDENTIFIER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffd]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Removed from free text (titles, comments, names), which is only carried along: control
# characters other than tab and line breaks are invalid in XML and break CSV readers.
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

P = ParamSpec("P")
R = TypeVar("R")


def guarded(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a parser of remote data total: an error it did not mean to raise (TypeError,
    KeyError, AttributeError, OverflowError, RecursionError, UnicodeError, a ValueError
    from a conversion) becomes `Unreadable` naming `what`. Other errors (a remote error
    raised while reading, MemoryError) pass through."""

    def wrap(parse: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(parse)
        def guard(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return parse(*args, **kwargs)
            except Unreadable:
                raise
            except (
                ArithmeticError,
                AttributeError,
                LookupError,
                RecursionError,
                TypeError,
                UnicodeError,
                ValueError,
            ) as exc:
                raise Unreadable(
                    f"{what}: cannot be read ({type(exc).__name__}: {printable(str(exc), 200)})"
                ) from None

        return guard

    return wrap


def printable(text: str, limit: int = 1000) -> str:
    """`text` safe for a log line, a table or a terminal: lone surrogates escaped, cut to
    `limit` characters."""
    text = clip(text, limit, "")  # redacted before the cut: no secret prefix survives
    if not text.isascii() and _SURROGATE.search(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def identifier(value: Any, what: str) -> str | None:
    """A remote's identifier field (SKU, order name, status word, ...) as text; None when
    absent or blank. Unreadable naming `what` for a wrong type, an oversized value, a
    control character (NUL, ...), a lone surrogate, or bytes that were not UTF-8 (free
    text is only cleaned, see `free_text`: it is only carried along)."""
    if value is None:
        return None
    if type(value) is str:  # the common case first: ingest calls this ~10 times a return
        text = value.strip()
        if len(text) <= MAX_IDENTIFIER and not _BAD_IN_IDENTIFIER.search(text):
            return text or None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unreadable(f"{what} is a {type(value).__name__}, not text", field=what)
    if isinstance(value, int) and value.bit_length() > 64 * 8:
        raise Unreadable(f"{what} is a number too long to be an identifier", field=what)
    text = str(value).strip()
    if len(text) > MAX_IDENTIFIER:
        raise Unreadable(
            f"{what} is {len(text)} characters long (at most {MAX_IDENTIFIER})", field=what
        )
    if REPLACEMENT in text:
        raise Unreadable(f"{what} is not valid UTF-8", field=what)
    if _SURROGATE.search(text):
        raise Unreadable(f"{what} holds a lone surrogate (not text)", field=what)
    if _BAD_IN_IDENTIFIER.search(text):
        raise Unreadable(f"{what} holds a control character", field=what)
    return text or None


def numeric_id(value: Any, what: str) -> str:
    """An id that must be a number (Loop return ids): ASCII digits only, at most
    MAX_ID_DIGITS. `str.isdigit()` is not enough: "１００２" and "1001²" pass it."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unreadable(f"{what} missing or not numeric: a {type(value).__name__}", field=what)
    if isinstance(value, int) and (value < 0 or value.bit_length() > 70):
        raise Unreadable(
            f"{what} {value if value < 0 else 'too large'} is not a Loop id", field=what
        )
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise Unreadable(f"{what} missing or not numeric: {printable(text, 40)!r}", field=what)
    if len(text) > MAX_ID_DIGITS:
        raise Unreadable(
            f"{what} is {len(text)} characters long (at most {MAX_ID_DIGITS}): "
            f"{clip(text, 40, '...')}",
            field=what,
        )
    return text


def safe_numeric_id(value: Any) -> str | None:
    """`numeric_id`, or None when it is not one (for naming a record in a problem)."""
    try:
        return numeric_id(value, "id")
    except Unreadable:
        return None


def whole_number(value: Any, what: str, *, minimum: int = 0, exact: bool = False) -> int:
    """The one quantity parser. A count from a remote: an int, a whole float (1.0) or such
    text ("2", "2.0"), at most MAX_UNITS. `exact`: the remote's contract says integer
    (the generic 3PL's), so only an int or ASCII digits are read and 1.0 or "2.0" is
    refused. Unreadable naming `what` for anything else, or below `minimum`."""
    number: Any = value
    if isinstance(value, str):
        text = value.strip()
        try:
            # ASCII only: float() would read "１" (a full-width digit) as 1, and isdigit()
            # would pass "²".
            if exact:
                number = int(text) if text.isascii() and text.isdigit() else None
            else:
                number = float(text) if text and text.isascii() else None
        except ValueError:
            number = None
    if isinstance(number, float) and number.is_integer() and not exact:
        number = int(number)
    if (
        isinstance(number, bool)
        or not isinstance(number, int)
        or not (minimum <= number <= MAX_UNITS)
    ):
        raise Unreadable(
            f"{what} {printable(repr(value), 60)} is not a whole number >= {minimum}", field=what
        )
    return number


def remote_timestamp(value: Any, what: str, *, assume_utc: bool = False) -> datetime:
    """A remote's timestamp as aware UTC. Unreadable naming `what` for a wrong type, no
    zone (unless `assume_utc`), a conversion that overflows (`0001-01-01T00:00:00+01:00`),
    or a year outside MIN_YEAR..MAX_YEAR."""
    name = what.rstrip(":")
    if not isinstance(value, str) or len(value) > 64:
        shown = (
            printable(repr(value), 40)
            if isinstance(value, str | int | float)
            else f"a {type(value).__name__}"
        )
        raise Unreadable(f"{what} not an ISO-8601 timestamp: {shown}", field=name)
    try:
        when = parse_timestamp(value, assume_utc=assume_utc)
    except (ValueError, OverflowError) as exc:
        raise Unreadable(f"{what} {printable(str(exc), 120)}", field=name) from None
    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise Unreadable(
            f"{what} {printable(value, 40)!r} is out of range (years {MIN_YEAR}..{MAX_YEAR})",
            field=name,
        )
    return when


def free_text(value: Any, what: str = "text") -> str:
    """Free text that is only carried along (title, comment, name): any JSON scalar as
    text, control characters other than tab and line breaks removed. Unreadable naming
    `what` for a lone surrogate, which no request body or table can encode."""
    if value is None:
        return ""
    text = value if type(value) is str else str(value)
    if not text.isascii() or not text.isprintable():
        if _SURROGATE.search(text):
            raise Unreadable(f"{what} holds a lone surrogate (not text)", field=what)
        text = _CONTROL_IN_TEXT.sub("", text)
    return text


_JSON_SCALARS = frozenset({int, float, bool, type(None)})  # str is checked apart


def check_tree(value: Any, what: str) -> None:
    """Refuse a decoded JSON value loopsync could not store or send on: nested deeper
    than MAX_DEPTH, a lone surrogate in any key or text, an int of absurd length, or a
    value that is not JSON. Iterative, so a structure nested thousands deep cannot
    exhaust the stack. Costs ~5 us for a Loop return (ingest's hot path)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise Unreadable(
                f"{what}: {_path(path[:3])}... is nested more than {MAX_DEPTH} deep",
                field=_path(path[:1]),
            )
        pairs = node.items() if type(node) is dict else enumerate(node)
        for key, child in pairs:
            if type(key) is not str or not key.isascii():  # rare: checked out of line
                _check_key(key, type(node) is dict, path, what)
            kind = type(child)
            if kind is str:
                if not child.isascii():  # rare: checked out of line
                    _check_text(child, (*path, key), what)
            elif kind is dict or kind is list:
                stack.append((child, (*path, key)))
            elif kind is int and child.bit_length() > MAX_INT_BITS:
                raise Unreadable(
                    f"{what}: {_path((*path, key))} is a number too long to store",
                    field=_path((*path, key)),
                )
            elif kind not in _JSON_SCALARS:
                raise Unreadable(
                    f"{what}: {_path((*path, key))} is a {kind.__name__}, which is not JSON",
                    field=_path((*path, key)),
                )


def checked_json(value: Any, what: str) -> bytes:
    """`value` as compact JSON bytes (`jsonio.dumps`), refused as `check_tree` refuses:
    the ingest's one pass over a Loop return both checks it and makes its snapshot.

    The fast path costs one orjson dump: it refuses a lone surrogate anywhere, a field
    name that is not text and an int past 64 bits, and the count of `{` and `[` in what
    it wrote bounds the nesting. Anything it does not settle (a refusal, many
    containers) goes through `check_tree` for the exact reason, then the standard
    library's dump (an int of 65 to MAX_INT_BITS bits is fine). A tuple, an Enum or a
    UUID, which no JSON decoder makes, pass as the JSON orjson writes for them."""
    try:
        data = jsonio.dumps_fast(value)
    except TypeError:
        data = None
    if data is None or data.count(b"{") + data.count(b"[") > MAX_DEPTH:
        check_tree(value, what)
        try:
            data = jsonio.dumps(value)
        except (TypeError, ValueError) as exc:  # check_tree passed: a type it lets by
            raise Unreadable(f"{what}: not JSON ({printable(str(exc), 80)})") from None
    return data


def _check_text(text: str, path: tuple[Any, ...], what: str) -> None:
    if _SURROGATE.search(text):
        raise Unreadable(
            f"{what}: {_path(path)} holds a lone surrogate (not text): {printable(text, 40)!r}",
            field=_path(path),
        )


def _check_key(key: Any, in_object: bool, path: tuple[Any, ...], what: str) -> None:
    """A field name must be text without a lone surrogate (list indexes pass)."""
    if type(key) is str:
        if _SURROGATE.search(key):
            raise Unreadable(
                f"{what}: {_path(path)} has a field name with a lone "
                f"surrogate (not text): {printable(key, 40)!r}",
                field=_path(path),
            )
    elif in_object:
        raise Unreadable(
            f"{what}: {_path(path)} has a field name that is not text: {printable(repr(key), 40)}",
            field=_path(path),
        )


def _path(path: tuple[Any, ...]) -> str:
    """('line_items', 0, 'sku') -> 'line_items[0].sku'; the top level is '(top)'."""
    out = ""
    for key in path:
        out += f"[{key}]" if type(key) is int else (f".{key}" if out else str(key))
    return printable(out, 120) or "(top)"


@guarded("Loop ASN row")
def parse_asn_row(row: Any) -> dict[str, Any]:
    """A Loop ASN report row, checked: keyed on the numeric `id` (the return id); only
    `tracking_number` is taken from it. Unreadable naming the field otherwise."""
    if not isinstance(row, dict):
        raise Unreadable(f"not an object: {printable(type(row).__name__)}")
    rid = row.get("id")
    if rid is None:
        raise Unreadable("id is missing", field="id")
    text = numeric_id(rid, "id")
    try:
        check_tree(row, "ASN row")
        tracking = identifier(row.get("tracking_number"), "tracking_number")
        identifier(row.get("return_line_item_id"), "return_line_item_id")
        updated = row.get("updated_at")
        if updated is not None and not isinstance(updated, str):
            raise Unreadable(
                f"updated_at is a {type(updated).__name__}, not text", field="updated_at"
            )
    except Unreadable as exc:
        raise Unreadable(f"return {text}: {exc}", field=exc.field) from None
    # Stored in a text column: a number there would not fit SQLite's INTEGER.
    return {**row, "tracking_number": tracking}


def asn_row_problem(row: Any) -> str | None:
    """Why a Loop ASN report row cannot be used, or None (see `parse_asn_row`, whose
    checked row is the one to store)."""
    try:
        parse_asn_row(row)
    except Unreadable as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ReturnLine:
    """One Loop line item. Loop lists one line item per returned unit."""

    line_item_id: str
    sku: str | None
    title: str = ""
    return_reason: str = ""
    parent_return_reason: str = ""
    comment: str = ""
    barcode: str = ""
    outcome: str = ""


@dataclass(frozen=True)
class LoopReturn:
    id: str
    state: str
    updated_at: datetime
    created_at: datetime | None
    order_id: str | None  # Loop's order id
    provider_order_id: str | None  # Shopify order id (ShipHero partner_order_id)
    order_name: str | None  # e.g. "#1001"
    order_number: str | None
    customer: str | None
    destination_id: str | None
    carrier: str | None
    tracking_number: str | None
    line_items: tuple[ReturnLine, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # `raw` as compact JSON, made while checking it (the stored snapshot; None: not made)
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    def units_by_sku(self) -> dict[str, int]:
        """Expected units per SKU (lines without a SKU are not counted)."""
        return dict(Counter(li.sku for li in self.line_items if li.sku))

    @property
    def expected_units(self) -> int:
        return sum(self.units_by_sku().values())

    @classmethod
    @guarded("Loop return")
    def from_api(cls, raw: Any) -> LoopReturn:
        """Normalise a Detailed Returns List object. Raises Unreadable with a reason.

        Everything that can refuse the object is `return_facts`; what is added here
        (the line items and the free text) cannot fail once it has passed."""
        facts = return_facts(raw)
        return cls(
            id=facts.id,
            state=facts.state,
            updated_at=facts.updated_at,
            created_at=facts.created_at,
            customer=free_text(raw.get("customer")) or None,
            line_items=tuple(
                _return_line(i, li) for i, li in enumerate(raw.get("line_items") or [])
            ),
            raw=raw,
            encoded=facts.encoded,
            **{key: identifier(raw.get(key), key) for key in _RETURN_IDS},
        )


# The identifier fields of a Loop return (each checked by `identifier`).
_RETURN_IDS = (
    "order_id",
    "provider_order_id",
    "order_name",
    "order_number",
    "destination_id",
    "carrier",
    "tracking_number",
)


@dataclass(frozen=True, slots=True)
class ReturnFacts:
    """What the ingest stores of a Loop return: the indexed columns and the snapshot
    (`raw` as compact JSON), once the whole object has passed every check
    `LoopReturn.from_api` makes."""

    id: str
    state: str
    updated_at: datetime
    created_at: datetime | None
    destination_id: str | None
    order_name: str | None
    raw: dict[str, Any]
    encoded: bytes


@guarded("Loop return")
def return_facts(raw: Any) -> ReturnFacts:
    """Check a Detailed Returns List object as `LoopReturn.from_api` does (it is built on
    this), without building its line items: the ingest's hot path, which stores the
    object and reads the lines only when it pushes. Raises Unreadable with a reason.

    Free text (titles, reasons, the customer) is not read here: after `checked_json`
    nothing in it can refuse it (a lone surrogate, an absurd number or nesting is
    refused there), and it is only carried along."""
    if not isinstance(raw, dict):
        raise Unreadable(f"return is not an object: {type(raw).__name__}")
    rid = numeric_id(raw.get("id"), "return id")
    try:
        # The whole object is stored and parts of it are sent on: refuse what SQLite
        # or a request body could not take, here rather than at the insert.
        encoded = checked_json(raw, "in the object")
        state = raw.get("state")
        if not isinstance(state, str) or identifier(state, "state") is None:
            raise Unreadable("state missing", field="state")
        state = identifier(state, "state") or ""
        if raw.get("updated_at") in (None, ""):
            raise Unreadable("updated_at not an ISO-8601 timestamp: ''", field="updated_at")
        updated = remote_timestamp(raw.get("updated_at"), "updated_at")
        created = None
        if raw.get("created_at"):
            created = remote_timestamp(raw["created_at"], "created_at")
        items = raw.get("line_items") or []
        if not isinstance(items, list):
            raise Unreadable("line_items is not a list", field="line_items")
        for i, li in enumerate(items):
            _line_ids(i, li)
        ids = {key: identifier(raw.get(key), key) for key in _RETURN_IDS}
    except Unreadable as exc:
        raise Unreadable(f"return {rid}: {exc}", field=exc.field) from None
    return ReturnFacts(
        rid,
        state.lower(),
        updated,
        created,
        ids["destination_id"],
        ids["order_name"],
        raw,
        encoded,
    )


def _line_ids(i: int, li: Any) -> tuple[str, str | None]:
    """A line item's (line_item_id, sku); Unreadable when it has no usable id."""
    if not isinstance(li, dict):
        raise Unreadable(f"line item {i} is not an object", field="line_items")
    lid = identifier(li.get("line_item_id"), f"line item {i}: line_item_id")
    if lid is None:
        raise Unreadable(f"line item {i} has no line_item_id", field="line_item_id")
    return lid, identifier(li.get("sku"), f"line item {i}: sku")


def _return_line(i: int, li: Any) -> ReturnLine:
    lid, sku = _line_ids(i, li)
    return ReturnLine(
        line_item_id=lid,
        sku=sku,
        title=free_text(li.get("title")),
        return_reason=free_text(li.get("return_reason")),
        parent_return_reason=free_text(li.get("parent_return_reason")),
        comment=free_text(li.get("return_comment")),
        barcode=free_text(li.get("barcode")),
        outcome=free_text(li.get("outcome")),
    )


@dataclass(frozen=True)
class RmaRef:
    """What loopsync keeps about a warehouse RMA to poll it later.

    `rma_id` is the warehouse's id; `extra` holds connector-specific handles (ShipHero
    legacy id and order id, PeopleVox RA number, Xoro ASN number, ...). JSON-safe only.
    """

    return_id: str
    rma_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemStatus:
    sku: str
    expected: int
    received: int
    condition: str | None = None  # the warehouse's word (damaged, worn, grade B, ...)
    disposition: str | None = None  # the warehouse's word (restock, reusable, scrap, ...)
    note: str = ""


@dataclass(frozen=True)
class RmaStatus:
    """A warehouse's view of one RMA, normalised. `status` is the warehouse's own word;
    the merchant's status rules decide what it means."""

    return_id: str
    rma_id: str
    status: str
    expected_units: int
    received_units: int
    items: tuple[ItemStatus, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            self.status,
            self.expected_units,
            self.received_units,
            tuple((i.sku, i.expected, i.received, i.condition, i.disposition) for i in self.items),
        )
