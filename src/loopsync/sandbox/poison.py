"""Poison Loop returns for the sandbox: records whose fields no reader may trust, as the
real API or a hand-edited import can serve them (issue 15, "a poison record holds back only
itself"). Each is an open return to a mapped destination, otherwise ordinary, so a reader
that took the bad field at face value would push it.

    for name, raw in loop_poison_returns(first_id=48_000_001, at=now):
        sandbox.loop.add_poison_return(raw, at=now)

The kinds are data (`LOOP_POISON`): a name and how it spoils an ordinary return. Warehouse
poison lives with each emulator (`WarehouseEmulator.poison`), since it is each API's own
shape that carries it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from loopsync.sandbox.seed import make_return

FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


def _overflowing_timestamps(raw: dict[str, Any]) -> None:
    # Both convert to UTC outside datetime's range: OverflowError, not ValueError.
    raw["created_at"] = "0001-01-01T00:00:00+01:00"
    raw["updated_at"] = "9999-12-31T23:59:59-01:00"


def _full_width_id(raw: dict[str, Any]) -> None:
    # str.isdigit() and int() accept it; an RMA numbered so is a different RMA.
    raw["id"] = str(raw["id"]).translate(FULL_WIDTH_DIGITS)


def _lone_surrogate_sku(raw: dict[str, Any]) -> None:
    # JSON may carry "\ud800"; UTF-8 (SQLite, a request body) cannot.
    for line in raw["line_items"]:
        line["sku"] = f"{line['sku']}\ud800"


LOOP_POISON: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
    ("overflowing timestamps", _overflowing_timestamps),
    ("full-width digits id", _full_width_id),
    ("lone surrogate in a SKU", _lone_surrogate_sku),
)


def loop_poison_returns(
    *, first_id: int, at: datetime, rng: random.Random | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(kind name, raw list-shaped return) for each kind of `LOOP_POISON`, with ids from
    `first_id` (pick a range no seeded return uses)."""
    out = []
    for n, (name, spoil) in enumerate(LOOP_POISON):
        raw = make_return(
            rng=rng or random.Random(first_id + n),
            return_id=first_id + n,
            created_at=at,
            updated_at=at,
            state="open",
            destination="12",
        )
        spoil(raw)
        out.append((name, raw))
    return out
