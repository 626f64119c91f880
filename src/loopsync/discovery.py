"""What `loopsync discover` and `check-config --connect` find out, and how it is shown.

Pure functions first (read Loop's destinations, render the `destinations:` block); the
two read-only walks after them take a Loop client and a connector already built (the CLI
builds them from the merchant's configuration).

Loop: `GET /destinations` (scope Destinations (Read); no pagination; HTTP 500 when one
destination has no address, as Loop documents: loop-api.md section 7). A Loop
destination is mapped to the warehouse id of the same name when there is one, to the
only location when the warehouse has one, to what the file already maps it to first of
all; else the block says `REPLACE-ME` and lists the choices: a person decides, nothing
is guessed.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from loopsync.connectors.base import Location, Locations, WarehouseConnector
from loopsync.errors import AuthError, PermanentError, RemoteError, TransientError, Unreadable
from loopsync.loop_client import LoopClient
from loopsync.models import identifier, printable

PLACEHOLDER = "REPLACE-ME"
NO_ADDRESS_STATUS = 500  # Loop's documented answer when a destination has no address
_INDENT = "  "


@dataclass(frozen=True)
class LoopDestination:
    id: str
    name: str
    type: str  # warehouse | donate
    enabled: bool


@dataclass(frozen=True)
class Discovery:
    merchant: str
    warehouse_kind: str
    destinations: tuple[LoopDestination, ...]
    locations: Locations
    current: Mapping[str, str]


def read_destinations(rows: list[dict[str, object]]) -> tuple[LoopDestination, ...]:
    """Loop's destination objects -> typed; Unreadable naming the field of a bad one."""
    out: list[LoopDestination] = []
    for row in rows:
        if not isinstance(row, dict):
            raise Unreadable("destinations[]: not an object")
        ident = identifier(row.get("id"), "destinations[].id")
        if ident is None:
            raise Unreadable("destinations[].id: missing or not an id")
        name, kind = row.get("name"), row.get("type")
        out.append(
            LoopDestination(
                ident,
                printable(name, 200) if isinstance(name, str) else "",
                kind if isinstance(kind, str) else "",
                row.get("enabled") is not False,
            )
        )
    return tuple(out)


def choose(
    dest: LoopDestination, locations: Locations, current: Mapping[str, str]
) -> Location | None:
    """The location `dest` maps to, or None when a person must choose (see the docstring)."""
    if dest.id in current:
        known = {loc.id: loc for loc in locations.items}
        return known.get(current[dest.id], Location(current[dest.id]))
    named = [loc for loc in locations.items if loc.name and loc.name.lower() == dest.name.lower()]
    if len(named) == 1:
        return named[0]
    if len(locations.items) == 1:
        return locations.items[0]
    return None


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar: JSON's escapes are YAML's, so a line break or a control
    character in a remote's id stays inside the quotes."""
    return json.dumps(text)


def _one_line(text: str) -> str:
    """Remote text shown in a comment or on a terminal: no line break can start a line of
    its own in the block a person pastes, no control character reaches the terminal."""
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def destinations_block(found: Discovery) -> list[str]:
    """The `destinations:` block to paste under `warehouse:` (lines, indented for it)."""
    lines = [
        f"{_INDENT}destinations:"
        + f"{'':<{max(1, 34 - len(_INDENT) - 13)}}# Loop destination id -> "
        + found.locations.what
    ]
    choices = _one_line(
        ", ".join(f"{loc.id} ({loc.name})" if loc.name else loc.id for loc in found.locations.items)
    )
    for dest in found.destinations:
        if dest.type == "donate" or not dest.enabled:
            why = "a donate destination" if dest.type == "donate" else "disabled in Loop"
            name = _one_line(dest.name)
            lines.append(f"{_INDENT * 2}# {_quoted(dest.id)}: {name} ({why}: not mapped)")
            continue
        loc = choose(dest, found.locations, found.current)
        if loc is None:
            hint = (
                f"choose one of: {choices}"
                if choices
                else f"the {found.locations.what} id (ask the warehouse)"
            )
            lines.append(
                f"{_INDENT * 2}{_quoted(dest.id)}: {PLACEHOLDER}   # {_one_line(dest.name)}: {hint}"
            )
        else:
            target = _one_line(f" -> {loc.name}" if loc.name else "")
            lines.append(
                f"{_INDENT * 2}{_quoted(dest.id)}: {_quoted(loc.id)}"
                f"   # {_one_line(dest.name)}{target}"
            )
    if not found.destinations:
        lines.append(f"{_INDENT * 2}# Loop lists no destinations")
    return lines


def render(found: Discovery) -> str:
    """The whole report for one merchant: both lists, then the block."""
    lines = [f"{found.merchant}: Loop destinations (GET /destinations)"]
    lines.extend(
        f"  {d.id:>8}  {d.name}  [{d.type or '?'}{'' if d.enabled else ', disabled'}]"
        for d in found.destinations
    )
    if not found.destinations:
        lines.append("  (none)")
    loc = found.locations
    lines.append(f"{found.merchant}: {loc.what}s ({found.warehouse_kind})")
    if not loc.offered:
        lines.append(f"  {loc.note}")
    lines.extend(f"  {item.id}  {item.name}".rstrip() for item in loc.items)
    if loc.offered and not loc.items:
        lines.append("  (none)")
    if loc.offered and loc.note:
        lines.append(f"  ({loc.note})")
    lines = [_one_line(line) for line in lines]
    lines.append(f"{found.merchant}: paste under `warehouse:`")
    lines.extend(destinations_block(found))
    return "\n".join(lines) + "\n"


# -- the read-only walks ----------------------------------------------------------------------


def discover(
    merchant: str, loop: LoopClient, connector: WarehouseConnector, current: Mapping[str, str]
) -> Discovery:
    """Loop's destinations and the warehouse's locations (RemoteError propagates)."""
    try:
        rows = loop.destinations()
    except TransientError as exc:
        if exc.status != NO_ADDRESS_STATUS:
            raise
        raise PermanentError(
            "loop",
            f"{exc} (Loop answers 500 to GET /destinations when a "
            "destination has no address: give each one an address in "
            "Loop's admin)",
            status=exc.status,
        ) from None
    destinations = read_destinations(rows)
    return Discovery(merchant, connector.kind, destinations, connector.list_locations(), current)


@dataclass(frozen=True)
class AccessCheck:
    system: str  # loop, shiphero, ...
    ok: bool
    refused: bool  # credentials refused (as opposed to unreachable, an error answer)
    detail: str


def check_loop(loop: LoopClient, now: datetime) -> AccessCheck:
    """Loop's key, with one read-only call the sync itself needs (scope Returns): the
    first page of open returns updated in the last minute. Loop answers 401 both for a
    wrong key and for a key without the scope."""

    def call() -> str:
        pages = loop.iter_returns(now - timedelta(minutes=1), now, "open")
        try:
            next(iter(pages), None)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()
        return "credentials accepted (Detailed Returns List read)"

    return _check("loop", call)


def check_warehouse(connector: WarehouseConnector) -> AccessCheck:
    return _check(connector.kind, connector.check_access)


def _check(system: str, call: Callable[[], str]) -> AccessCheck:
    try:
        detail = str(call())
    except AuthError as exc:
        return AccessCheck(system, False, True, f"refused: {exc}")
    except RemoteError as exc:
        return AccessCheck(system, False, False, f"failed: {exc}")
    except Unreadable as exc:
        return AccessCheck(system, False, False, f"answer not understood: {exc}")
    return AccessCheck(system, True, False, detail)
