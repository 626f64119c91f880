"""Read ahead one item of an iterator in a background thread.

Ingest uses it so the next page of returns is on its way over the network while the
current one is validated and written to SQLite; the fetch and the store then overlap
instead of adding up. Nothing is lost by reading ahead: the checkpoint still moves only
after a page is stored, so a page fetched but not stored is simply fetched again.

Reading ahead pays only while fetching waits on the network: decoding a page holds the
interpreter lock as storing one does, so with a server that answers at once the two
threads only take turns, and the hand-offs cost more than they save (a first pull from a
local server: 66 us a return inline, 82 with the thread; BENCHMARKS.md, 1b).
`read_ahead_when_waiting` reads inline until a fetch has waited, then ahead.
"""

from __future__ import annotations

import contextvars
import enum
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# A fetch that left its thread idle this long (wall time less the thread's CPU time) was
# waiting on the network: reading ahead would have hidden it. A local server answers a
# page of 250 returns in about 1 ms; Loop, and the sandbox's emulator, take 10 ms or more.
READ_AHEAD_MIN_WAIT = 0.005


class _End(enum.Enum):
    """The producer's last word: the source is exhausted."""

    DONE = enum.auto()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Handoff(Generic[T]):
    """A one-item queue between the producing thread and the consumer, which the consumer
    can cancel: the producer then stops at its next item instead of blocking forever."""

    def __init__(self) -> None:
        self.items: queue.Queue[T | _Raised | _End] = queue.Queue(maxsize=1)
        self.cancelled = threading.Event()

    def put(self, item: T | _Raised | _End) -> bool:
        while not self.cancelled.is_set():
            try:
                self.items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                if not self.put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self.put(_Raised(exc))
            return
        self.put(_End.DONE)


def prefetched(source: Iterable[T], *, name: str = "prefetch") -> Iterator[T]:
    """Yield what `source` yields, in order, while a thread already produces the next item.

    Exceptions from `source` are raised here, in the consumer, at the point in the
    sequence where they happened. When the consumer stops early (break, return, an
    exception of its own), the thread is told to stop and is joined: it finishes the
    item it is producing (one page request, bounded by the HTTP timeout) and exits.
    """
    handoff: _Handoff[T] = _Handoff()
    # The thread's log lines carry the consumer's bound context (merchant, run id).
    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run, args=(handoff.produce, source), name=name, daemon=True
    )
    worker.start()
    try:
        while True:
            item = handoff.items.get()
            if item is _End.DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        handoff.cancelled.set()
        worker.join()


def read_ahead_when_waiting(
    source: Iterable[T],
    *,
    name: str = "prefetch",
    min_wait: float = READ_AHEAD_MIN_WAIT,
    wall: Callable[[], float] = time.perf_counter,
    cpu: Callable[[], float] = time.thread_time,
) -> Iterator[T]:
    """Yield what `source` yields, in order: in this thread while each item comes without
    waiting, then through `prefetched` from the first item whose fetch left this thread
    idle `min_wait` seconds or more. Errors are raised where `source` raised them, as
    `prefetched` does. `wall` and `cpu` are the clocks (tests)."""
    items = iter(source)
    while True:
        began, used = wall(), cpu()
        try:
            item = next(items)
        except StopIteration:
            return
        waited = (wall() - began) - (cpu() - used)
        yield item
        if waited >= min_wait:
            yield from prefetched(items, name=name)
            return
