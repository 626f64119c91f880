"""The one small interface between the engine and any warehouse.

The engine never imports a connector module; it asks `connector_class(kind)` and talks to
the instance through `WarehouseConnector`. A connector:

- `locate(req)`: read-only; finds what the warehouse needs before an RMA can exist (the
  ShipHero order, the PeopleVox sales order, ...). Raises `NotReady(reason)` to have the
  engine wait and try again on a later cycle, or `Rejected` to give up on this return.
- `find_rma(req, located)`: read-only; the RMA for this Loop return if the warehouse
  already has one. The engine calls it before every create (the state that would say it
  exists may be lost), after a create refused (a refusal may still have created it), and,
  for watch-only connectors (`creates_rmas = False`), instead of creating.
- `prepare(reqs)` (optional, read-only): the look-ups `locate` and `find_rma` will need
  for the next returns of a push, in a few batched requests. Each answer is used once, by
  the `locate`/`find_rma` of its own return and only soon after; any return it did not
  settle is looked up alone as before, so a batch answer cut short or refused costs
  requests, never correctness. The engine prepares only returns never tried (no create
  intent in the ledger): a lost create is always looked up afresh.
- `create_rma(req, located)`: the side effect. Raises `Rejected` when the warehouse refuses
  the record, `OutcomeUnknown` when the answer was lost. Any other error is taken as an
  unknown outcome too (looked up before a repeat), except `AuthError` (nothing ran).
- `match_key(ret)`: None when the RMA is found by the Loop return id; else the weaker key
  (an order number) that the engine checks for ambiguity before linking.
  the record, `OutcomeUnknown` when the answer was lost.
- Every reader of warehouse data returns a valid record or raises `Unreadable` (from
  `loopsync.errors`, re-exported here) with a reason naming the field; `poll` puts such a
  reason in `PollResult.errors` for that RMA alone. `models.guarded` makes a parser total.
- `poll(rmas)`: read-only; the current status of many RMAs in few requests.
  `PollResult.commit()` runs after the engine has stored the statuses (a folder connector
  archives the files it read there, never before).
  The engine hands `poll` at most POLL_CHUNK RMAs a call, or every open RMA at once when
  the connector sets `polls_all_at_once` (its read is one sweep whatever the batch: a
  date-window listing, an incremental report), and raises `PollStopped` if told to stop.
- `list_locations()` (optional, read-only; `loopsync discover`): the warehouse's ids that
  `destinations:` maps Loop destinations to (ShipHero warehouses, PeopleVox sites, Xoro
  stores). The default says the API does not offer such a list.
- `check_access()` (read-only; `loopsync check-config --connect`): one call proving the
  credentials; raises `AuthError` when they are refused. The default lists locations.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from loopsync.configkit import Section

# Re-exported for connector authors (they live in errors.py with every error raised on purpose).
from loopsync.errors import NotReady, PollStopped, Unreadable
from loopsync.http import DEFAULT_MAX_BODY, RetryPolicy
from loopsync.models import LoopReturn, RmaRef, RmaStatus
from loopsync.rules import GradingRules, StatusRules
from loopsync.timeutil import Clock

__all__ = [
    "ConnectorContext",
    "KeyValue",
    "Location",
    "Locations",
    "MemoryKeyValue",
    "NotReady",
    "PollResult",
    "PollStopped",
    "Prepared",
    "PushRequest",
    "Unreadable",
    "WarehouseConnector",
    "WarehouseSettings",
]


@dataclass(frozen=True)
class WarehouseSettings:
    kind: str
    base_url: str
    destinations: dict[str, str]  # Loop destination id -> warehouse id / site reference
    statuses: StatusRules
    grading: GradingRules
    order_wait: timedelta  # keep retrying NotReady this long, then report
    poll_batch: int  # RMAs per poll request where the API allows batching
    timeout: float
    connector: Any  # the connector's own parsed settings
    deadline: float | None = None  # whole request (HttpClient's default when None)
    max_body: int = DEFAULT_MAX_BODY  # answer bytes after decompression


@dataclass(frozen=True)
class PushRequest:
    """Everything a connector gets to create (or find) the RMA for one Loop return."""

    ret: LoopReturn
    destination: str  # mapped warehouse id / site for ret.destination_id
    asn_rows: tuple[dict[str, Any], ...] = ()  # Loop ASN report rows of this return


@dataclass
class PollResult:
    statuses: dict[str, RmaStatus]  # by Loop return id
    errors: dict[str, str] = field(default_factory=dict)  # by Loop return id: why unreadable
    on_commit: Callable[[], None] | None = None
    problems: list[str] = field(default_factory=list)  # unreadable data of no one RMA

    def commit(self) -> None:
        if self.on_commit is not None:
            self.on_commit()


@dataclass(frozen=True)
class Location:
    """One place the warehouse receives returns at: a value for `destinations:`."""

    id: str
    name: str = ""


@dataclass(frozen=True)
class Locations:
    """What `list_locations` found: `offered` False when the API has no such list, with
    `note` saying so (or saying what about the list is UNCONFIRMED)."""

    what: str  # "ShipHero warehouse", "PeopleVox site", ...
    items: tuple[Location, ...] = ()
    offered: bool = True
    note: str = ""


T = TypeVar("T")

# A prepared look-up older than this is not trusted: the return is looked up again. The
# push uses one within LOOKAHEAD returns of reading it, a minute or two unless the
# warehouse's limits hold it up.
PREPARED_FOR = 600.0  # seconds


class Prepared(Generic[T]):
    """What a connector's `prepare` read for coming returns, by Loop return id: each
    answer is taken once, and only within PREPARED_FOR seconds of being read."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._answers: dict[str, tuple[float, T]] = {}

    def clear(self) -> None:
        self._answers.clear()

    def put(self, return_id: str, answer: T) -> None:
        self._answers[return_id] = (self.clock.monotonic(), answer)

    def peek(self, return_id: str) -> T | None:
        found = self._answers.get(return_id)
        return None if found is None else found[1]

    def take(self, return_id: str) -> T | None:
        found = self._answers.pop(return_id, None)
        if found is None or self.clock.monotonic() - found[0] > PREPARED_FOR:
            return None
        return found[1]


class KeyValue(Protocol):
    """A connector's own small persistent state (cursors, caches), kept in the store."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


class MemoryKeyValue:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value


@dataclass
class ConnectorContext:
    merchant: str
    clock: Clock
    stop: threading.Event = field(default_factory=threading.Event)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    kv: KeyValue = field(default_factory=MemoryKeyValue)
    dry_run: bool = False


class WarehouseConnector(ABC):
    kind: ClassVar[str]
    default_base_url: ClassVar[str]
    creates_rmas: ClassVar[bool] = True
    # True: every open RMA in one poll call, so the sweep it reads is read once per cycle.
    polls_all_at_once: ClassVar[bool] = False
    # Default status words per action; the merchant's `warehouse.statuses` replaces a list.
    default_statuses: ClassVar[dict[str, list[str]]]
    default_flag_conditions: ClassVar[list[str]] = ["damaged"]

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        self.settings = settings
        self.ctx = ctx

    @classmethod
    @abstractmethod
    def parse_settings(cls, section: Section) -> Any:
        """Read the connector's own keys from `warehouse` (consume them; the core calls
        `section.done()` afterwards so unknown keys fail)."""

    @abstractmethod
    def locate(self, req: PushRequest) -> dict[str, Any]: ...

    @abstractmethod
    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None: ...

    def prepare(self, reqs: Sequence[PushRequest]) -> None:  # noqa: B027 - optional hook
        """Read-only: batch the coming returns' look-ups (see the module docstring)."""

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        raise NotImplementedError(f"{self.kind} does not create RMAs (creates_rmas=False)")

    @abstractmethod
    def poll(self, rmas: Sequence[RmaRef]) -> PollResult: ...

    def rma_label(self, ref: RmaRef) -> str:
        """How the RMA is named in the note on the Loop return."""
        return f"{self.kind} RMA {ref.rma_id}"

    @property
    def weak_matching(self) -> bool:
        """True when `match_key` can return a key (so the engine looks for ambiguity)."""
        return False

    def match_key(self, ret: LoopReturn) -> str | None:
        """None when `find_rma` matches by the Loop return id itself (one RMA per return
        by construction). A connector matching by anything weaker (an order number)
        returns the key it matches on: open returns sharing a key are ambiguous, so the
        engine reports them for a person and links or acts on none of them."""
        return None

    def list_locations(self) -> Locations:
        """Read-only: the warehouse's ids for `destinations:` (see the module docstring)."""
        return Locations(
            f"{self.kind} location",
            offered=False,
            note="not offered by this API: ask the warehouse which id to use",
        )

    def check_access(self) -> str:
        """Read-only: one call with the configured credentials; a line saying what it saw.
        Raises AuthError when they are refused (and any RemoteError it meets)."""
        found = self.list_locations()
        if not found.offered:
            return f"no read-only call to check ({found.note})"
        return f"credentials accepted ({len(found.items)} {found.what}(s) listed)"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and files."""
