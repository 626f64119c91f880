"""Realistic Loop returns, shaped like the Detailed Returns List (loop-api.md §2).

String ids, decimal strings for money, ISO `...Z` timestamps, one line item per returned
unit (so a return of two identical shirts lists the SKU twice), Shopify-like order ids.
Deterministic for a given `random.Random`, and fast: benchmarks make 100,000 returns, so
the hot path draws with `rng.random()` and reuses preformatted strings.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Product:
    sku: str
    title: str
    cents: int
    barcode: str

    @property
    def tax_cents(self) -> int:
        return self.cents * 7 // 100


# A small catalog so SKUs repeat across returns (and within one).
CATALOG: tuple[Product, ...] = (
    Product("TEE-BLK-S", "Classic Tee - Black / S", 2800, "850012340011"),
    Product("TEE-BLK-M", "Classic Tee - Black / M", 2800, "850012340028"),
    Product("TEE-WHT-L", "Classic Tee - White / L", 2800, "850012340035"),
    Product("HOOD-GRY-M", "Everyday Hoodie - Grey / M", 6400, "850012340042"),
    Product("HOOD-GRY-XL", "Everyday Hoodie - Grey / XL", 6400, "850012340059"),
    Product("JEAN-IND-32", "Slim Jean - Indigo / 32", 8900, "850012340066"),
    Product("JEAN-IND-34", "Slim Jean - Indigo / 34", 8900, "850012340073"),
    Product("SNK-WHT-9", "Court Sneaker - White / 9", 11000, "850012340080"),
    Product("SNK-WHT-10", "Court Sneaker - White / 10", 11000, "850012340097"),
    Product("SOCK-3PK", "Merino Socks 3-Pack", 2400, "850012340103"),
    Product("CAP-NVY", "Wool Cap - Navy", 3200, "850012340110"),
    Product("DRS-RED-S", "Wrap Dress - Red / S", 9800, "850012340127"),
    Product("DRS-RED-M", "Wrap Dress - Red / M", 9800, "850012340134"),
    Product("BAG-TOTE", "Canvas Tote", 4500, ""),  # some products carry no barcode
    Product("JKT-OLV-L", "Field Jacket - Olive / L", 15800, "850012340158"),
)

# (return_reason, parent_return_reason)
REASONS: tuple[tuple[str, str], ...] = (
    ("Too small", "Size"),
    ("Too large", "Size"),
    ("Changed my mind", "Other"),
    ("Damaged on arrival", "Quality"),
    ("Not as described", "Quality"),
    ("Wrong item received", "Fulfillment"),
    ("Arrived too late", "Fulfillment"),
    ("Didn't like the color", "Style"),
)
COMMENTS = (
    "",
    "",
    "",
    "Fits weird in the shoulders",
    "Seam came apart after one wash",
    "Ordered two sizes, keeping one",
    "Gift — recipient already had it",
)

FIRST_NAMES = ("emma", "liam", "olivia", "noah", "ava", "mason", "sophia", "lucas", "mia")
LAST_NAMES = ("smith", "johnson", "garcia", "brown", "lee", "dubois", "kowalski", "nguyen")
# A few customers have non-ASCII names (UTF-8 local parts), as real shops do.
NON_ASCII_NAMES = (("zoë", "müller"), ("josé", "nuñez"), ("björn", "søren"), ("chloé", "łukasz"))
NON_ASCII_SHARE = 0.04
EMAIL_DOMAINS = ("example.com", "mail.example.org", "example.net")

# (outcome of the return, outcome of each line item)
OUTCOMES: tuple[tuple[str, str], ...] = (
    ("refund", "refund"),
    ("refund", "refund"),
    ("credit", "credit"),
    ("exchange", "exchange"),
    ("exchange+refund", "refund"),
    ("upsell", "exchange"),
)
CARRIERS = ("USPS", "UPS", "FedEx")
LABEL_STATUSES = ("new", "pre_transit", "in_transit", "out_for_delivery", "delivered")
NO_LABEL_SHARE = 0.05  # returns without a label yet (keep-item, label pending)
UNIT_COUNT_WEIGHTS = ((1, 55), (2, 25), (3, 12), (4, 8))
SAME_PRODUCT_SHARE = 0.4  # chance the next unit repeats the previous SKU
DEFAULT_STATE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("open", 80),
    ("closed", 8),
    ("cancelled", 4),
    ("expired", 4),
    ("review", 4),
)

FIRST_RETURN_ID = 40_000_001
FIRST_ORDER_NUMBER = 1001
LINE_ID_FACTOR = 10  # line item ids are return_id * 10 + k (k = 1..4)
DEFAULT_AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_returns(
    n: int,
    *,
    start: datetime,
    end: datetime,
    rng: random.Random,
    destinations: Sequence[str] = ("12", "13"),
    states_weights: Sequence[tuple[str, int]] = DEFAULT_STATE_WEIGHTS,
    first_id: int = FIRST_RETURN_ID,
) -> list[dict[str, Any]]:
    """`n` returns created (and updated) between `start` and `end`, with consecutive ids
    from `first_id` (pass the next free id when seeding one emulator twice).

    `updated_at` never passes `end`, so a window [start, end] on either filter holds all.
    """
    if end < start:
        raise ValueError("end is before start")
    pick_state = _weighted(states_weights)
    start_s, end_s = _epoch(start), _epoch(end)
    out = []
    with _gc_paused():
        for rid in range(first_id, first_id + n):
            created = start_s + int(rng.random() * (end_s - start_s + 1))
            # Most returns change within days of creation; never after `end`.
            updated = min(created + int(rng.expovariate(1 / 86_400)), end_s)
            out.append(
                _build(rng, rid, created, updated, pick_state(rng), _pick(rng, destinations), None)
            )
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hundreds of thousands of new dicts trigger collection after collection, which
    finds nothing to free; pausing it makes 100k returns ~30% faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def make_return(
    *,
    rng: random.Random | None = None,
    return_id: int | str = FIRST_RETURN_ID,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    state: str = "open",
    destination: str = "12",
    units: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One return for tests. Either timestamp defaults to the other (both missing:
    DEFAULT_AT). `units` fixes the number of line items; `overrides` replace top-level
    fields after generation (datetimes are written in Loop's ISO form)."""
    rid = int(return_id)
    rng = rng or random.Random(rid)
    created = created_at or updated_at or DEFAULT_AT
    updated = updated_at or created
    ret = _build(rng, rid, _epoch(created), _epoch(updated), state, destination, units)
    ret["created_at"], ret["updated_at"] = _iso(created), _iso(updated)  # keep sub-seconds
    for key, value in overrides.items():
        ret[key] = _iso(value) if isinstance(value, datetime) else value
    return ret


def _build(
    rng: random.Random,
    rid: int,
    created: int,
    updated: int,
    state: str,
    destination: str,
    units: int | None,
) -> dict[str, Any]:
    """One return dict; times are epoch seconds."""
    order_number = FIRST_ORDER_NUMBER + (rid - FIRST_RETURN_ID) % 9_000_000  # one order each
    outcome, line_outcome = _pick(rng, OUTCOMES)
    first, last = _customer_name(rng)
    products = _units(rng, units or _pick_units(rng))
    product_cents = sum(p.cents for p in products)
    tax_cents = sum(p.tax_cents for p in products)
    handling_fee = 500 if rng.random() < 0.25 else 0
    payout = product_cents + tax_cents - handling_fee
    exchange_cents = product_cents if outcome in ("exchange", "upsell") else 0
    carrier, tracking, label_status = _label(rng)
    created_iso = _iso_s(created)
    line_items = [
        _line_item(rng, rid * LINE_ID_FACTOR + k, p, line_outcome, created_iso)
        for k, p in enumerate(products, start=1)
    ]
    return {
        "id": str(rid),
        "state": state,
        "created_at": created_iso,
        "updated_at": _iso_s(updated),
        "edited_at": None,
        "total": _money(product_cents + tax_cents),
        "outcome": outcome,
        "order_id": str(90_000_000 + order_number),
        "order_name": f"#{order_number}",
        "provider_order_id": str(5_400_000_000_000 + order_number * 1000 + rng.randrange(1000)),
        "order_number": str(order_number),
        "provider_order_number": str(order_number),
        "customer": f"{first}.{last}@{_pick(rng, EMAIL_DOMAINS)}",
        "origin_country": "United States",
        "origin_country_code": "US",
        "multi_currency": False,
        "currency": "USD",
        "return_product_total": _money(product_cents),
        "return_discount_total": "0.00",
        "return_tax_total": _money(tax_cents),
        "return_total": _money(product_cents + tax_cents),
        "return_credit_total": _money(payout if outcome == "credit" else 0),
        "exchange_product_total": _money(exchange_cents),
        "exchange_discount_total": "0.00",
        "exchange_tax_total": "0.00",
        "exchange_total": _money(exchange_cents),
        "exchange_credit_total": "0.00",
        "gift_card": _money(payout if outcome == "credit" else 0),
        "gift_card_order_name": None,
        "gift_card_order_id": None,
        "handling_fee": _money(handling_fee),
        "refund": _money(payout if "refund" in outcome else 0),
        "upsell": "0.00",
        "line_items": line_items,
        "exchanges": _exchanges(line_items[0], products[0]) if exchange_cents else [],
        "carrier": carrier,
        "tracking_number": tracking,
        "label_status": label_status,
        "label_url": f"https://labels.example.com/{rid}.pdf" if tracking else None,
        "label_rate": "7.95" if tracking else None,
        "label_updated_at": created_iso if tracking else None,
        "status_page_url": f"https://returns.example.com/status/{rid}",
        "destination_id": int(destination),
        "return_method": "mail" if tracking else "keep_item",
        "package_reference": None,
    }


def _line_item(
    rng: random.Random, line_item_id: int, product: Product, outcome: str, returned_at: str
) -> dict[str, Any]:
    reason, parent_reason = _pick(rng, REASONS)
    return {
        "line_item_id": str(line_item_id),
        "provider_line_item_id": str(13_000_000_000_000 + line_item_id),
        **_LINE_TEMPLATES[product.sku],
        "refund": _money(product.cents + product.tax_cents)
        if outcome in ("refund", "credit")
        else "0.00",
        "returned_at": returned_at,
        "exchange_variant": None,
        "return_reason": reason,
        "parent_return_reason": parent_reason,
        "return_comment": _pick(rng, COMMENTS),
        "barcode": product.barcode,
        "outcome": outcome,
        "provider_restock_location_id": "61234567890",
    }


def _line_template(index: int, product: Product) -> dict[str, str]:
    """The per-product fields of a line item, formatted once."""
    return {
        "product_id": str(7_000_000_000 + index),
        "variant_id": str(44_000_000_000 + index),
        "sku": product.sku,
        "title": product.title,
        "price": _money(product.cents),
        "discount": "0.00",
        "tax": _money(product.tax_cents),
    }


def _units(rng: random.Random, count: int) -> list[Product]:
    """One product per returned unit; a unit may repeat the previous unit's product."""
    products = [_pick(rng, CATALOG)]
    for _ in range(count - 1):
        same = rng.random() < SAME_PRODUCT_SHARE
        products.append(products[-1] if same else _pick(rng, CATALOG))
    return products


def _exchanges(line_item: dict[str, Any], product: Product) -> list[dict[str, Any]]:
    return [
        {
            "exchange_id": str(int(line_item["line_item_id"]) + 500_000_000),
            "product_id": line_item["product_id"],
            "variant_id": line_item["variant_id"],
            "sku": product.sku,
            "title": product.title,
            "price": _money(product.cents),
            "discount": "0.00",
            "tax": "0.00",
            "total": _money(product.cents),
        }
    ]


def _label(rng: random.Random) -> tuple[str | None, str | None, str | None]:
    """(carrier, tracking number, label status); a few returns have no label yet."""
    if rng.random() < NO_LABEL_SHARE:
        return None, None, None
    carrier = _pick(rng, CARRIERS)
    if carrier == "USPS":
        tracking = f"9400{rng.randrange(10**17, 10**18)}"
    elif carrier == "UPS":
        tracking = f"1Z{rng.randrange(16**15, 16**16):X}"
    else:
        tracking = str(rng.randrange(10**11, 10**12))
    return carrier, tracking, _pick(rng, LABEL_STATUSES)


def _customer_name(rng: random.Random) -> tuple[str, str]:
    if rng.random() < NON_ASCII_SHARE:
        return _pick(rng, NON_ASCII_NAMES)
    return _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)


def _weighted(weights: Sequence[tuple[T, int]]) -> Callable[[random.Random], T]:
    """A function rng -> value drawn with the given integer weights (one rng.random())."""
    values = [value for value, _ in weights]
    cumulative = list(itertools.accumulate(w for _, w in weights))
    if not values or cumulative[-1] <= 0:
        raise ValueError("weights must contain a positive weight")
    total = cumulative[-1]

    def pick(rng: random.Random) -> T:
        return values[bisect.bisect_right(cumulative, rng.random() * total)]

    return pick


def _pick(rng: random.Random, seq: Sequence[T]) -> T:
    """rng.choice, cheaper (one rng.random() call); hot in the 100k benchmark."""
    return seq[int(rng.random() * len(seq))]


@functools.lru_cache(maxsize=65_536)  # few distinct sums: cached, it stops being a hot spot
def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _epoch(dt: datetime) -> int:
    return int((dt - _EPOCH).total_seconds())


@functools.lru_cache(maxsize=4096)
def _day(epoch_day: int) -> str:
    return (_EPOCH + timedelta(days=epoch_day)).strftime("%Y-%m-%d")


def _iso_s(epoch_seconds: int) -> str:
    """'2026-04-02T17:35:49Z'; the date part is cached (strftime is the hot spot)."""
    day, second = divmod(epoch_seconds, 86_400)
    hour, rest = divmod(second, 3600)
    return f"{_day(day)}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Built once at import, from the helpers above.
_pick_units = _weighted(UNIT_COUNT_WEIGHTS)
_LINE_TEMPLATES = {p.sku: _line_template(i, p) for i, p in enumerate(CATALOG)}
