"""One paging helper for every remote walk (Loop's list, ShipHero connections, PeopleVox
and Xoro pages, the generic receipt feed).

A remote decides how many pages there are, and a broken or hostile one never says "last
page": the same token forever, ever-new tokens, a "next" link without a cursor, a server
that ignores the page parameter and serves page 1 again. `PageWalk` follows any of them
to a bounded end and says why it ended (`WalkEnd`):

- `COMPLETE`: the remote said this was the last page.
- `CAPPED`: `max_pages` pages read and the remote still says there are more. The last
  page's `next_token` is kept, so a caller that checkpoints can resume there.
- `REPEATED`: the next token was already fetched in this walk (or the page's content is
  the previous page's again): following it would loop forever.
- `NO_CURSOR`: the remote says there are more pages but gives nothing to fetch them with.
- `STOPPED`: the stop event was set between two pages (shutdown).

The walk never raises for these; the caller decides what an unfinished walk means (keep a
window open, drop a poll, end a look-up). `record_walk` keeps the last unfinished end of
each named walk in the store's `kv` (key `walk:<name>`) so `loopsync status` can say why a
cursor does not move, and clears it when the walk completes again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import structlog

from loopsync.errors import PaginationStopped
from loopsync.timeutil import iso

log = structlog.get_logger("loopsync.paging")

T = TypeVar("T")

# Generous: 10,000 pages of 250 Loop returns is 2.5 million returns in one 120-day window;
# a remote that still says "more" after that is looping.
DEFAULT_MAX_PAGES = 10_000
WALK_KEY_PREFIX = "walk:"


class WalkEnd(Enum):
    COMPLETE = "complete"
    CAPPED = "page_cap"
    REPEATED = "repeated_token"
    NO_CURSOR = "no_cursor"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Step(Generic[T]):
    """What one fetched page says: its items, whether the remote says more pages follow,
    and the token to fetch the next one with (None when it gave none).

    `fingerprint`: for walks whose tokens are page numbers (always new), something that
    identifies the page's content; the same content twice in a row means the remote
    ignores the page parameter."""

    items: T
    more: bool
    token: Hashable | None = None
    fingerprint: Hashable | None = None


@dataclass(frozen=True)
class Fetched(Generic[T]):
    """One page as the walk yields it. `next_token`: the page after this one (a resume
    point), None when the walk ends here for any reason but the page cap or a stop."""

    items: T
    token: Hashable | None  # the token that fetched this page (None: the first)
    next_token: Hashable | None
    number: int  # 1-based within this walk


@dataclass(frozen=True)
class WalkResult:
    name: str
    outcome: WalkEnd
    pages: int
    resume: Hashable | None = None  # where a later walk may resume (CAPPED, STOPPED)

    @property
    def complete(self) -> bool:
        return self.outcome is WalkEnd.COMPLETE

    def error(self, system: str) -> PaginationStopped:
        """The error for a caller that cannot use an unfinished walk."""
        return PaginationStopped(
            self.outcome.value,
            f"{self.name}: walk ended after {self.pages} pages "
            f"({self.outcome.value}); the listing is incomplete",
            system=system,
        )


class PageWalk(Generic[T]):
    """Iterate the pages of one walk; `result` says how it ended once iteration stops.

    `fetch(token)` reads one page (token None: the first page, unless `first` is given).
    The stop event is checked before every page but the first."""

    def __init__(
        self,
        fetch: Callable[[Any], Step[T]],
        *,
        name: str,
        first: Hashable | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        stop: threading.Event | None = None,
        **log_fields: Any,
    ) -> None:
        if max_pages < 1:
            raise ValueError(f"max_pages must be >= 1: {max_pages}")
        self.fetch = fetch
        self.name = name
        self.first = first
        self.max_pages = max_pages
        self.stop = stop
        self.log_fields = log_fields
        self.result: WalkResult | None = None

    def __iter__(self) -> Iterator[Fetched[T]]:
        seen: set[Hashable] = {self.first} if self.first is not None else set()
        token = self.first
        previous_print: Hashable | None = None
        for number in range(1, self.max_pages + 1):
            if number > 1 and self.stop is not None and self.stop.is_set():
                self._end(WalkEnd.STOPPED, number - 1, token)
                return
            step = self.fetch(token)
            outcome: WalkEnd | None = None
            if not step.more:
                outcome = WalkEnd.COMPLETE
            elif step.token is None:
                outcome = WalkEnd.NO_CURSOR
            elif step.token in seen or (
                step.fingerprint is not None and step.fingerprint == previous_print
            ):
                outcome = WalkEnd.REPEATED
            elif number == self.max_pages:
                outcome = WalkEnd.CAPPED
            resumable = outcome is None or outcome is WalkEnd.CAPPED
            next_token = step.token if resumable else None
            if outcome is not None:
                # Set before the last page is handed over: a caller that stops reading
                # there (a generator closed early) still finds the result.
                self._end(outcome, number, next_token)
            yield Fetched(step.items, token, next_token, number)
            if outcome is not None:
                return
            assert step.token is not None
            seen.add(step.token)
            previous_print = step.fingerprint
            token = step.token

    def _end(self, outcome: WalkEnd, pages: int, resume: Hashable | None) -> None:
        self.result = WalkResult(self.name, outcome, pages, resume)
        if outcome is not WalkEnd.COMPLETE:
            log.warning(
                "paging.walk_unfinished",
                walk=self.name,
                outcome=outcome.value,
                pages=pages,
                **self.log_fields,
            )


def walk_items(fetch: Callable[[Any], Step[list[Any]]], **kw: Any) -> tuple[list[Any], WalkResult]:
    """Every item of a walk, and how it ended."""
    walk: PageWalk[list[Any]] = PageWalk(fetch, **kw)
    items: list[Any] = []
    for page in walk:
        items.extend(page.items)
    assert walk.result is not None
    return items, walk.result


# -- what status shows ---------------------------------------------------------------------


class KeyValue(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


def walk_record(result: WalkResult, previous: Any, at: datetime) -> dict[str, Any] | None:
    """The kv value after `result` (pure): None once the walk completes; otherwise the
    outcome, when it first and last happened and how many walks in a row ended so."""
    if result.complete:
        return None
    same = isinstance(previous, dict) and previous.get("outcome") == result.outcome.value
    return {
        "outcome": result.outcome.value,
        "pages": result.pages,
        "last_at": iso(at),
        "since": previous.get("since", iso(at)) if same else iso(at),
        "times": int(previous.get("times", 0)) + 1 if same else 1,
    }


def record_walk(kv: KeyValue, result: WalkResult | None, at: datetime) -> None:
    """Keep (or clear) the walk's unfinished end where `loopsync status` reads it. A walk
    stopped by shutdown is not news."""
    if result is None or result.outcome is WalkEnd.STOPPED:
        return
    key = WALK_KEY_PREFIX + result.name
    previous = kv.get(key)
    if previous is None and result.complete:
        return  # the common case costs one read, no write
    kv.set(key, walk_record(result, previous, at))
