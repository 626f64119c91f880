"""Typed events the core emits for whoever watches (the metrics module), with no exporter
imported here: the core stays free of prometheus-client.

Contract: `emit(event)` hands a frozen event to every subscriber, synchronously, on the
emitting thread; a subscriber that raises is dropped from that call's delivery, never the
caller's problem (telemetry must not break a request). Without subscribers `emit` costs
one list read. Events carry bounded values only (a system name, a status code, a stage,
seconds): never a return id, a URL or a message.

The merchant a thread works for is set with `merchant_scope(name)` (the serve job wraps
each cycle in one) and read by `current_merchant()`; `http.py` does not know merchants.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum


class WaitCause(StrEnum):
    LIMITER = "limiter"  # loopsync's own client-side budget (RateLimiter)
    SERVER = "server"  # the remote throttled: 429, ShipHero code 30, PeopleVox throttle


@dataclass(frozen=True)
class RequestDone:
    """One HTTP attempt ended: `status` is the answer's code, None when none came."""

    system: str
    status: int | None
    seconds: float
    merchant: str = ""


@dataclass(frozen=True)
class ThrottleWait:
    """A request waited before being sent (again) because of a rate limit."""

    system: str
    seconds: float
    cause: WaitCause
    merchant: str = ""


@dataclass(frozen=True)
class CycleDone:
    """One merchant's cycle ended. `ok`: no stage error; `failed_stages`: stage names."""

    merchant: str
    ended_epoch: float
    seconds: float
    ok: bool
    failed_stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class CycleStarted:
    """A scheduled cycle got its worker `late_seconds` after it was due (serve's pool)."""

    merchant: str
    late_seconds: float


@dataclass(frozen=True)
class WebhookReceived:
    """A webhook request answered: accepted, duplicate, or the refusal's reason."""

    merchant: str  # "unknown" when the path names no configured merchant
    source: str
    outcome: str


Event = RequestDone | ThrottleWait | CycleDone | CycleStarted | WebhookReceived
Subscriber = Callable[[Event], None]

_subscribers: list[Subscriber] = []
_lock = threading.Lock()
_local = threading.local()


def subscribe(fn: Subscriber) -> None:
    with _lock:
        if fn not in _subscribers:
            _subscribers.append(fn)


def unsubscribe(fn: Subscriber) -> None:
    with _lock, contextlib.suppress(ValueError):
        _subscribers.remove(fn)


def emit(event: Event) -> None:
    for fn in tuple(_subscribers):  # a copy: subscribe() may run meanwhile
        try:
            fn(event)
        except Exception:  # noqa: BLE001, S112 - telemetry never fails the work it watches
            continue


def current_merchant() -> str:
    return str(getattr(_local, "merchant", ""))


@contextlib.contextmanager
def merchant_scope(merchant: str) -> Iterator[None]:
    previous = current_merchant()
    _local.merchant = merchant
    try:
        yield
    finally:
        _local.merchant = previous
