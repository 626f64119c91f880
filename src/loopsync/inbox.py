"""Webhook events, from the listener to the ledger: store, then handle on a worker.

`WebhookService.receive` (called on the listener's request thread) decides with the pure
`webhooks.intake`, then commits the accepted event to the merchant's inbox (synchronous
FULL, so it survives a power cut too) and only then lets the listener answer 2xx. It
never handles anything itself: it wakes the merchant's worker thread.

A worker (one thread per merchant, started on demand) takes the merchant's gate, the
in-process lock `serve` takes around every scheduled cycle too, so an event is never
handled while that merchant's cycle runs or another event is being handled; `run_merchant`
then takes the merchant's file lock as every run does (a cron run elsewhere: LockHeld,
tried again later). Handling a return is `import --return-id`'s path (runner): read that
return from Loop, push, poll and act on it alone; the live cursor never moves, and the
ledger makes a repeat change nothing. A ShipHero event names its RMA: the return linked to
it is handled the same way; an RMA loopsync does not know is left to polling. Several
events for one return are handled once.

An event is marked handled after its run ends; a crash before that leaves it unhandled,
and `start()` (serve's start) finishes every unhandled event of every merchant, as does
`run` (cron) after each merchant's cycle (`finish_stored`).

Polling stays the truth: `poll_due` lets a scheduled cycle be skipped only while webhooks
are healthy and `webhooks.poll_every` is set, and `after_cycle` counts the Loop returns a
scheduled cycle found first while Loop's webhooks were healthy ("missed by webhooks").
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from loopsync import telemetry, webhooks
from loopsync.config import MerchantConfig
from loopsync.errors import LockHeld, StateError, StateUnwritable, UnknownReturn
from loopsync.state import InboxRow, Store, state_error
from loopsync.state.folder import check_state_folder
from loopsync.state.runs import WEBHOOK_MODE
from loopsync.timeutil import Clock, SystemClock, iso, parse_timestamp

log = structlog.get_logger("loopsync.webhooks")

RETRY_SECONDS = 30.0  # an event that could not be handled (lock held, state busy) waits this
BATCH = 100
STORE_ATTEMPTS = 3
PRUNE_AFTER = timedelta(days=30)

# handle(cfg, return_id, stop, clock) -> outcome text, or None when stopped before the end
# (left unhandled); raises LockHeld/StateError to be tried again later
Handler = Callable[[MerchantConfig, str, threading.Event, Clock], str | None]


def import_one(
    cfg: MerchantConfig, return_id: str, stop: threading.Event, clock: Clock
) -> str | None:
    """The default handler: `import --return-id`'s path, recorded as a "webhook" run."""
    from loopsync.runner import run_merchant

    try:
        result = run_merchant(
            cfg, clock=clock, stop=stop, mode=WEBHOOK_MODE, import_return_id=return_id
        )
    except UnknownReturn:
        return "not found in Loop"
    if result.stopped:
        return None  # not handled: finished after a restart
    return "ok" if not result.stage_errors and not result.counts.errors else "errors"


class Gates:
    """One in-process lock per merchant: its scheduled cycle and its webhook handling."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def of(self, merchant: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(merchant, threading.Lock())


class WebhookService:
    """The intake and the workers of one `serve` process."""

    def __init__(
        self,
        configs: Callable[[], Sequence[MerchantConfig]],
        *,
        clock: Clock | None = None,
        handler: Handler = import_one,
        stop: threading.Event | None = None,
    ) -> None:
        self.configs = configs
        self.clock = clock or SystemClock()
        self.handler = handler
        self.stop = stop or threading.Event()
        self.gates = Gates()
        self._lock = threading.Lock()
        self._wake: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._refused: dict[str, Counter[str]] = {}
        self._last_accepted: dict[tuple[str, webhooks.Source], datetime] = {}
        self._last_poll: dict[str, datetime] = {}
        self.started = False

    def find(self, merchant: str) -> MerchantConfig | None:
        return next((c for c in self.configs() if c.merchant == merchant), None)

    # -- intake (the listener's thread) ---------------------------------------------------
    def secret_of(self, source: webhooks.Source, merchant: str) -> str | None:
        cfg = self.find(merchant)
        if cfg is None:
            return None
        secret = {
            webhooks.Source.LOOP: cfg.webhooks.loop_secret,
            webhooks.Source.SHIPHERO: cfg.webhooks.shiphero_secret,
            webhooks.Source.GENERIC: cfg.webhooks.generic_secret,
        }[source]
        return secret.value if secret is not None else None

    def receive(self, request: webhooks.Request) -> webhooks.Accept | webhooks.Refuse:
        """Decide, and store an accepted event before returning (the 2xx waits for it)."""
        cfg = self.find(request.merchant)
        max_age = cfg.webhooks.max_age if cfg is not None else webhooks.DEFAULT_MAX_AGE
        decision = webhooks.intake(request, self.secret_of, self.clock.now(), max_age)
        if isinstance(decision, webhooks.Accept) and cfg is not None:
            decision = self._store(cfg, decision)
        self._count(request.source, decision)
        return decision

    def refused(self, source: str, merchant: str | None, reason: webhooks.Refusal) -> None:
        """A refusal the listener made before `receive` (size, type, method)."""
        known = merchant if merchant is not None and self.find(merchant) else None
        self._count(source, webhooks.Refuse(reason, known))

    def _store(
        self, cfg: MerchantConfig, accept: webhooks.Accept
    ) -> webhooks.Accept | webhooks.Refuse:
        ev = accept.event
        store = self._open_for_intake(cfg)
        if store is None:
            return webhooks.Refuse(webhooks.Refusal.STORE, cfg.merchant)
        try:
            store.conn.execute("PRAGMA synchronous=FULL")  # this commit survives a power cut
            new = store.inbox.record(
                key=ev.dedup_key,
                source=str(ev.source),
                topic=ev.topic,
                subject=ev.subject,
                alt_subject=ev.alt_subject,
                body_hash=ev.body_hash,
                occurred_at=iso(ev.occurred_at),
            )
        except sqlite3.Error as exc:
            log.error(
                "webhook.not_stored",
                merchant=cfg.merchant,
                error=str(state_error(cfg.state_path, exc)),
            )
            return webhooks.Refuse(webhooks.Refusal.STORE, cfg.merchant)
        finally:
            with contextlib.suppress(sqlite3.Error):
                store.close()
        if new:  # a duplicate (a retry, or a captured delivery replayed) proves no health
            with self._lock:
                self._last_accepted[cfg.merchant, ev.source] = self.clock.now()
        log.info(
            "webhook.accepted" if new else "webhook.duplicate",
            merchant=cfg.merchant,
            source=str(ev.source),
            topic=ev.topic,
            subject=ev.subject,
        )
        if new:
            self.wake(cfg.merchant)
        return accept if new else webhooks.Accept(accept.merchant, ev, duplicate=True)

    def _open_for_intake(self, cfg: MerchantConfig) -> Store | None:
        """The merchant's state, tried STORE_ATTEMPTS times: two first opens of a new file
        at once (the intake and a cycle) can find each other's schema write busy, which
        SQLite reports at once instead of waiting. None: answered 503 (the sender retries)."""
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return _open(cfg, self.clock)
            except StateUnwritable as exc:  # its volume is missing: no retry will help
                log.error("webhook.not_stored", merchant=cfg.merchant, error=str(exc))
                return None
            except StateError as exc:
                if attempt == STORE_ATTEMPTS:
                    log.error("webhook.not_stored", merchant=cfg.merchant, error=str(exc))
                else:
                    self.clock.sleep(0.2 * attempt)
        return None

    def _count(self, source: str, decision: webhooks.Accept | webhooks.Refuse) -> None:
        if isinstance(decision, webhooks.Accept):
            outcome = "duplicate" if decision.duplicate else "accepted"
            merchant: str | None = decision.merchant
        else:
            outcome, merchant = str(decision.reason), decision.merchant
            if merchant is not None:
                # written down by its worker at its next wake-up (an event, or within
                # RETRY_SECONDS) or at a stop: a flood of forgeries costs no write each
                with self._lock:
                    self._refused.setdefault(merchant, Counter())[outcome] += 1
        known = source if source in set(webhooks.Source) else "other"
        telemetry.emit(telemetry.WebhookReceived(merchant or "unknown", known, outcome))

    # -- workers ---------------------------------------------------------------------------
    def start(self) -> None:
        """Serve's start: every merchant's unhandled events are finished."""
        self.started = True
        for cfg in self.configs():
            self.wake(cfg.merchant)

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            events, threads = list(self._wake.values()), list(self._threads.values())
        for ev in events:
            ev.set()
        for t in threads:
            t.join(timeout=5)
        for cfg in self.configs():  # counts still in memory would die with the process
            try:
                self._flush_refusals(cfg)
            except StateError as exc:
                log.warning("webhook.refusals_lost", merchant=cfg.merchant, error=str(exc))

    def wake(self, merchant: str) -> None:
        if not self.started:
            return
        with self._lock:
            event = self._wake.setdefault(merchant, threading.Event())
            if merchant not in self._threads and not self.stop.is_set():
                thread = threading.Thread(
                    target=self._work,
                    args=(merchant, event),
                    name=f"webhooks-{merchant}",
                    daemon=True,
                )
                self._threads[merchant] = thread
                thread.start()
        event.set()

    def _work(self, merchant: str, event: threading.Event) -> None:
        while not self.stop.is_set():
            event.wait(RETRY_SECONDS)
            event.clear()
            if self.stop.is_set():
                return
            cfg = self.find(merchant)
            if cfg is None:
                continue  # removed by a reload: its events wait for it to come back
            try:
                self.drain(cfg)
            except Exception as exc:  # noqa: BLE001 - a worker never dies; polling goes on
                log.error("webhook.worker_failed", merchant=merchant, error=type(exc).__name__)

    def drain(self, cfg: MerchantConfig) -> int:
        """Handle the merchant's unhandled events (under its gate); how many were handled."""
        with self.gates.of(cfg.merchant):
            try:
                return self._drain_locked(cfg)
            except (LockHeld, StateError) as exc:  # tried again on the next wake-up
                log.info("webhook.deferred", merchant=cfg.merchant, reason=str(exc))
                return 0

    def _drain_locked(self, cfg: MerchantConfig) -> int:
        handled = 0
        self._flush_refusals(cfg)
        while not self.stop.is_set():
            with self._opened(cfg) as store:
                rows = store.inbox.unhandled(BATCH)
                targets = _targets(store, rows)
            if not rows:
                return handled
            for rid, keys in targets.items():
                outcome = self._handle(cfg, rid)
                if outcome is None:
                    return handled  # stopping: the rest waits for the next start
                with self._opened(cfg) as store:
                    store.inbox.mark_handled(keys, outcome)
                handled += len(keys)
                log.info("webhook.handled", merchant=cfg.merchant, subject=rid, outcome=outcome)
        return handled

    def _handle(self, cfg: MerchantConfig, rid: str | None) -> str | None:
        """One return's events; a failure no retry will cure is its outcome (polling is
        the safety net), so a poison event is not run again every RETRY_SECONDS."""
        if rid is None:
            return "unknown RMA (left to polling)"
        try:
            return self.handler(cfg, rid, self.stop, self.clock)
        except (LockHeld, StateError):
            raise  # tried again at the next wake-up
        except Exception as exc:  # noqa: BLE001 - recorded on the event; polling goes on
            log.error("webhook.handling_failed", merchant=cfg.merchant, error=type(exc).__name__)
            return f"failed: {type(exc).__name__}"

    def _flush_refusals(self, cfg: MerchantConfig) -> None:
        with self._lock:
            counts = self._refused.pop(cfg.merchant, None)
        if counts:
            with self._opened(cfg) as store:
                store.inbox.add_refusals(counts)

    @contextlib.contextmanager
    def _opened(self, cfg: MerchantConfig) -> Iterator[Store]:
        store = _open(cfg, self.clock)
        try:
            yield store
        except sqlite3.Error as exc:
            raise state_error(cfg.state_path, exc) from None
        finally:
            with contextlib.suppress(sqlite3.Error):
                store.close()

    # -- the scheduled cycle -----------------------------------------------------------------
    def poll_due(self, cfg: MerchantConfig) -> bool:
        """Run this scheduled cycle? (webhooks.poll_due, on what this process saw). The
        webhooks count as healthy only while every sender with a secret is: the least
        recent of their last accepted events decides."""
        with self._lock:
            last_poll = self._last_poll.get(cfg.merchant)
            seen = [self._last_accepted.get((cfg.merchant, s)) for s in configured(cfg)]
        last_accepted = None if not seen or None in seen else min(t for t in seen if t)
        return webhooks.poll_due(
            now=self.clock.now(),
            last_poll=last_poll,
            last_accepted=last_accepted,
            healthy_within=cfg.webhooks.healthy_within,
            poll_every=cfg.webhooks.poll_every,
        )

    def scheduled(self, run_cycle: Callable[..., None]) -> Callable[..., None]:
        """serve's job for a merchant: skipped while `poll_due` says so, else run under
        the merchant's gate (`cycle`)."""

        def job(cfg: MerchantConfig, stop: threading.Event, next_due: Any = None) -> None:
            if not self.poll_due(cfg):
                log.info("serve.poll_later", merchant=cfg.merchant, reason="webhooks healthy")
                return
            with self.cycle(cfg):
                run_cycle(cfg, stop, next_due=next_due)

        return job

    @contextlib.contextmanager
    def cycle(self, cfg: MerchantConfig) -> Iterator[None]:
        """Around a scheduled cycle: the merchant's gate, then the returns it found first
        while Loop's webhooks were healthy are counted (`after_cycle`)."""
        with self.gates.of(cfg.merchant):
            began = self.clock.now()
            with self._lock:
                self._last_poll[cfg.merchant] = began
            yield
            try:
                self.after_cycle(cfg, began)
            except (StateError, sqlite3.Error) as exc:
                log.warning("webhook.missed_not_counted", merchant=cfg.merchant, error=str(exc))

    def after_cycle(self, cfg: MerchantConfig, began: datetime) -> int:
        with self._opened(cfg) as store:
            # every merchant's inbox is pruned, whichever senders it has
            store.inbox.prune(iso(began - PRUNE_AFTER) or "")
            if cfg.webhooks.loop_secret is None:
                return 0
            last = store.inbox.last_accepted("loop")
            if not webhooks.healthy(_when(last), began, cfg.webhooks.healthy_within):
                return 0
            added = store.inbox.note_missed(store.inbox.first_seen_since(iso(began) or ""))
        if added:
            log.warning("webhook.missed", merchant=cfg.merchant, returns=added)
        return added


def _open(cfg: MerchantConfig, clock: Clock) -> Store:
    """The merchant's state, its folder checked first as every writer does: a missing
    volume is StateUnwritable, never a new folder and file on the container's own disk
    (an event "stored" there would be lost with it)."""
    check_state_folder(cfg.state_path, cfg.file)
    return Store(cfg.state_path, clock)


def finish_stored(cfg: MerchantConfig, stop: threading.Event) -> int:
    """`run` (cron, after its cycle): handle the events a `serve` stored but did not
    handle (stopped or killed first), as its next start would; without a serve they
    waited forever ("not handled yet"). A held lock or a state fault defers them to the
    next run (`drain`). How many were handled."""
    try:
        return WebhookService(lambda: [cfg], clock=SystemClock(stop), stop=stop).drain(cfg)
    except Exception as exc:  # noqa: BLE001 - one merchant's events never stop the others
        log.error("webhook.not_finished", merchant=cfg.merchant, error=type(exc).__name__)
        return 0


def configured(cfg: MerchantConfig) -> list[webhooks.Source]:
    """The senders this merchant has a webhook secret for."""
    return [webhooks.Source(name) for name in cfg.webhooks.senders()]


def _when(text: str | None) -> datetime | None:
    return parse_timestamp(text, assume_utc=True) if text else None


def _targets(store: Store, rows: list[InboxRow]) -> dict[str | None, list[str]]:
    """Event keys by the Loop return to handle (None: a ShipHero RMA loopsync lacks)."""
    out: dict[str | None, list[str]] = {}
    for row in rows:
        rid: str | None = row.subject
        if row.source == webhooks.Source.SHIPHERO:
            rid = store.rmas.find(row.subject) or (
                store.rmas.find(row.alt_subject) if row.alt_subject else None
            )
        out.setdefault(rid, []).append(row.key)
    return out
