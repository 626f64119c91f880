"""Read ahead one item of an iterator in a background thread.

Ingest uses it so the next page of returns is on its way over the network while the
current one is validated and written to SQLite; the fetch and the store then overlap
instead of adding up. Nothing is lost by reading ahead: the checkpoint still moves only
after a page is stored, so a page fetched but not stored is simply fetched again.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(source: Iterable[T], *, name: str = "prefetch") -> Iterator[T]:
    """Yield what `source` yields, in order, while a thread already produces the next item.

    Exceptions from `source` are raised here, in the consumer, at the point in the
    sequence where they happened. When the consumer stops early (break, return, an
    exception of its own), the thread is told to stop and is joined: it finishes the
    item it is producing (one page request, bounded by the HTTP timeout) and exits.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=1)
    cancelled = threading.Event()

    def put(item: object) -> bool:
        while not cancelled.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Raised(exc))
            return
        put(_DONE)

    # The thread's log lines carry the consumer's bound context (merchant, run id).
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(produce,), name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        cancelled.set()
        worker.join()
