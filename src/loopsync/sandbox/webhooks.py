"""The sandbox's webhook sender: the emulated Loop, ShipHero and generic 3PL tell a
receiver what changed, signed, as the real ones do, from background threads.

What is sent (one `WebhookEvent` per change, serialised once: the bytes signed are the
bytes sent, every attempt and every duplicate alike):

- Loop (loop-api.md §8): topic `return`, triggers `return.created`, `return.updated`,
  `return.closed`; the body is the return object plus `topic`, `trigger`, `shop_id`.
  `X-Loop-Signature: base64(HMAC-SHA256(raw body, secret))`. Loop retries a non-2xx
  answer 5 times (6 attempts) with exponential backoff and jitter, and honours a
  `Retry-After` of up to 30 minutes (it fails the webhook for a longer one).
- ShipHero (wms-apis.md "Webhook Return Update"): `webhook_type: "Return Update"` when a
  return is created or changes; `x-shiphero-hmac-sha256: base64(HMAC-SHA256(raw body,
  secret))` and an `x-shiphero-message-id` (the same on every attempt of one event);
  5 retries. ShipHero expects the answer within 10 s (the per-attempt timeout).
- The generic 3PL: a receipt event `{"event": "receipt", "event_id", "rma_number",
  "receipts": [...]}` signed by the generic connector's documented request scheme
  (`X-Loopsync-Timestamp`, `X-Loopsync-Signature: sha256=<hex HMAC of "v1\\n" ts "\\n"
  POST "\\n" target "\\n" body>`), the timestamp taken at each attempt so a late retry
  is not refused as stale.

Contract:

- `WebhookSender.emit` never blocks and never raises: emulators call it under their lock,
  in the middle of handling a request. An event goes into a bounded queue; when the queue
  is full (a receiver down for long) it is dropped and counted (`overflow`), as a real
  sender gives up: polling is the worker's safety net either way.
- Faults are data (`WebhookFaults`), drawn when an event is emitted from an RNG seeded by
  the caller, so one seed and one sequence of events give the same faults: an event is
  lost (never sent), duplicated (sent twice), delayed (sent up to `max_delay` seconds late,
  after events emitted later: reordering), or forged (an extra delivery with an altered
  body signed with a wrong secret, as an attacker would send; it is never retried).
- Delivery goes only to the configured URL: redirects are not followed, the secret never
  leaves the process except as a signature, and no secret is in a repr or a count.
- Time comes from the injected Clock: due times and backoff are `clock.monotonic()`
  seconds; a FakeClock advanced by a test is seen within POLL_SECONDS.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import random
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit

from loopsync.timeutil import Clock

QUEUE_LIMIT = 10_000  # deliveries waiting at once; more are dropped (counted)
POLL_SECONDS = 0.05  # how often a waiting worker re-reads the clock (a FakeClock moves)
ANSWER_LIMIT = 64 * 1024  # bytes of a receiver's answer read (and thrown away)


class Source(StrEnum):
    """Who sends: each has its own signature scheme and retry count."""

    LOOP = "loop"
    SHIPHERO = "shiphero"
    GENERIC = "generic"


LOOP_SIGNATURE = "X-Loop-Signature"
SHIPHERO_SIGNATURE = "x-shiphero-hmac-sha256"
SHIPHERO_MESSAGE_ID = "x-shiphero-message-id"
GENERIC_SIGNATURE = "X-Loopsync-Signature"
GENERIC_TIMESTAMP = "X-Loopsync-Timestamp"
# Retries after the first attempt: Loop documents 5 (6 attempts), ShipHero 5; the generic
# 3PL is ours to define and does as Loop does.
RETRIES = {Source.LOOP: 5, Source.SHIPHERO: 5, Source.GENERIC: 5}


# -- pure: signatures -------------------------------------------------------------------


def base64_hmac(secret: str, body: bytes) -> str:
    """base64(HMAC-SHA256(body, secret)): Loop's and ShipHero's scheme."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def generic_signature(secret: str, *, timestamp: int, method: str, target: str, body: bytes) -> str:
    """The generic connector's request signature (its module docstring)."""
    message = f"v1\n{timestamp}\n{method.upper()}\n{target}\n".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    source: Source, secret: str, body: bytes, *, target: str, timestamp: int, message_id: str
) -> dict[str, str]:
    """The headers that sign `body` as `source` signs it (`target`: the request target,
    path and query, as on the request line; `timestamp`: Unix seconds)."""
    if source is Source.LOOP:
        return {LOOP_SIGNATURE: base64_hmac(secret, body)}
    if source is Source.SHIPHERO:
        return {SHIPHERO_SIGNATURE: base64_hmac(secret, body), SHIPHERO_MESSAGE_ID: message_id}
    return {
        GENERIC_TIMESTAMP: str(timestamp),
        GENERIC_SIGNATURE: generic_signature(
            secret, timestamp=timestamp, method="POST", target=target, body=body
        ),
    }


def request_target(url: str) -> str:
    split = urlsplit(url)
    return (split.path or "/") + (f"?{split.query}" if split.query else "")


def forged_body(body: bytes) -> bytes:
    """What an attacker sends: the event with one field changed (here the state or status
    a worker would act on), so a receiver that skipped the check would act on a lie."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return body + b" "
    for key in ("state", "status", "event"):
        if key in data:
            data[key] = "closed" if key == "state" else "complete"
            break
    data["forged"] = True
    return json.dumps(data).encode()


# -- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """Where one source's events go (one merchant's intake), and the secret they are
    signed with."""

    source: Source
    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WebhookEvent:
    source: Source
    topic: str  # Loop's trigger, "Return Update", "receipt"
    subject: str  # the Loop return id or RMA number the event is about
    body: bytes
    message_id: str


@dataclass(frozen=True)
class WebhookFaults:
    """Shares of emitted events that meet each fault (0 to 1), drawn independently."""

    lose: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    max_delay: float = 2.0  # seconds a delayed event waits at most
    forge: float = 0.0

    NAMES: ClassVar[tuple[str, ...]] = ("lose", "duplicate", "delay", "max_delay", "forge")

    def __post_init__(self) -> None:
        for name in ("lose", "duplicate", "delay", "forge"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"webhook fault {name}={value!r}: a share from 0 to 1")
        if not 0.0 <= self.max_delay <= 3600:
            raise ValueError(f"webhook fault max_delay={self.max_delay!r}: 0 to 3600 seconds")

    @classmethod
    def parse(cls, text: str) -> WebhookFaults:
        """`lose=0.1,duplicate=0.1,delay=0.2,max_delay=3,forge=0.05` (any subset, or "")."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in cls.NAMES:
                raise ValueError(f"webhook fault {part!r}: use name=value, names {cls.NAMES}")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"webhook fault {part!r}: {value!r} is not a number") from None
        return cls(**values)


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry timing. Real senders wait minutes between retries (Loop's exact backoff is
    UNCONFIRMED); the sandbox waits seconds so a test or a demo sees every retry."""

    base: float = 0.5  # seconds before the first retry; doubles each time, with jitter
    cap: float = 8.0
    retry_after_cap: float = 1800.0  # Loop: a longer Retry-After fails the webhook
    timeout: float = 10.0  # ShipHero: the answer must come within 10 s
    workers: int = 2  # deliveries in flight at once

    def backoff(self, retry: int, rng: random.Random) -> float:
        return min(self.cap, self.base * 2.0 ** (retry - 1)) * (0.5 + rng.random() / 2)


@dataclass(frozen=True)
class DeliveryPlan:
    """What the faults decided for one event (pure: `plan_delivery`)."""

    copies: int  # 0 lost, 1, or 2 duplicated
    delay: float  # seconds before the first copy goes
    forged: bool


def plan_delivery(faults: WebhookFaults, rng: random.Random) -> DeliveryPlan:
    """Draw one event's faults. Always four draws, so one fault's share does not shift
    the others' draws: a seed means the same faults whatever the shares."""
    lose, dup, delay, forge = (rng.random() for _ in range(4))
    late = rng.uniform(0.0, faults.max_delay)
    copies = 0 if lose < faults.lose else 2 if dup < faults.duplicate else 1
    return DeliveryPlan(copies, late if delay < faults.delay else 0.0, forge < faults.forge)


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    event: WebhookEvent = field(compare=False)
    target: WebhookTarget = field(compare=False)
    forged: bool = field(compare=False, default=False)
    attempt: int = field(compare=False, default=0)


# -- the sender -------------------------------------------------------------------------


class WebhookSender:
    """Sends the emulators' events to `targets` from `policy.workers` daemon threads.

    `stats()` counts: emitted, lost, duplicated, delayed, forged, overflow, attempts,
    unanswered (attempts that got no answer), delivered (2xx), retried, failed (given up
    after the retries, or told to wait too long); per forged delivery one of
    forged_refused (a non-2xx answer), forged_unanswered, forged_accepted (a receiver that
    took a forgery: a bug there)."""

    def __init__(
        self,
        clock: Clock,
        targets: Iterable[WebhookTarget] = (),
        *,
        faults: WebhookFaults | None = None,
        seed: int = 0,
        policy: DeliveryPolicy | None = None,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.clock = clock
        self.faults = faults or WebhookFaults()
        self.policy = policy or DeliveryPolicy()
        self.queue_limit = queue_limit
        self._targets: list[WebhookTarget] = list(targets)
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._heap: list[_Pending] = []
        self._cond = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._in_flight = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- configuration ----------------------------------------------------------------------
    def add_target(self, target: WebhookTarget) -> None:
        with self._cond:
            self._targets.append(target)

    def targets(self, source: Source | None = None) -> list[WebhookTarget]:
        with self._cond:
            return [t for t in self._targets if source is None or t.source is source]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> WebhookSender:
        with self._cond:
            if self._threads:
                return self
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._work, name=f"sandbox-webhooks-{n}", daemon=True)
                for n in range(max(1, self.policy.workers))
            ]
        for thread in self._threads:
            thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending (what is still queued is dropped) and wait for the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait (real seconds) until nothing is queued or in flight; False on timeout.
        With a FakeClock the caller advances time itself for delayed events."""
        end = threading.Event()
        waited = 0.0
        while waited < timeout:
            with self._cond:
                if not self._heap and not self._in_flight:
                    return True
            end.wait(POLL_SECONDS)
            waited += POLL_SECONDS
        return False

    def stats(self) -> Counter[str]:
        with self._cond:
            return Counter(self._counts)

    # -- emitting ----------------------------------------------------------------------------
    def emit(self, source: Source, topic: str, subject: str, payload: Mapping[str, Any]) -> None:
        """Queue one event for every target of `source`. Never blocks, never raises."""
        try:
            body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        except (TypeError, ValueError):  # a poison record no JSON holds: not sent
            with self._cond:
                self._counts["unencodable"] += 1
            return
        with self._cond:
            targets = [t for t in self._targets if t.source is source]
            if not targets:
                return
            event = WebhookEvent(source, topic, subject, body, f"sbx-{next(self._ids)}")
            self._counts["emitted"] += 1
            plan = plan_delivery(self.faults, self._rng)
            self._count_plan(plan)
            now = self.clock.monotonic()
            for target in targets:
                for _ in range(plan.copies):
                    self._push(_Pending(now + plan.delay, 0, event, target))
                if plan.forged:
                    self._push(_Pending(now + plan.delay, 0, event, target, forged=True))
            self._cond.notify_all()

    def _count_plan(self, plan: DeliveryPlan) -> None:
        for name, hit in (
            ("lost", plan.copies == 0),
            ("duplicated", plan.copies == 2),
            ("delayed", plan.delay > 0),
            ("forged", plan.forged),
        ):
            self._counts[name] += hit

    def _push(self, item: _Pending) -> None:
        """Queue under the lock; a full queue drops the delivery (counted)."""
        if len(self._heap) >= self.queue_limit:
            self._counts["overflow"] += 1
            return
        heapq.heappush(self._heap, replace(item, seq=next(self._seq)))

    # -- delivering --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                self._deliver(item)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _next(self) -> _Pending | None:
        with self._cond:
            while not self._stopping:
                now = self.clock.monotonic()
                if self._heap and self._heap[0].due <= now:
                    self._in_flight += 1
                    return heapq.heappop(self._heap)
                wait = None if not self._heap else min(self._heap[0].due - now, POLL_SECONDS)
                # Nothing due: wait for an emit, or re-read the clock soon (it may be fake).
                self._cond.wait(POLL_SECONDS if wait is None else max(wait, 0.001))
            return None

    def _deliver(self, item: _Pending) -> None:
        event, target = item.event, item.target
        body, secret = event.body, target.secret
        if item.forged:
            body, secret = forged_body(body), "forged-" + secret[::-1]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"loopsync-sandbox-{event.source}-webhooks",
            **signed_headers(
                event.source,
                secret,
                body,
                target=request_target(target.url),
                timestamp=int(self.clock.now().timestamp()),
                message_id=event.message_id,
            ),
        }
        status, retry_after = post(target.url, body, headers, timeout=self.policy.timeout)
        with self._cond:
            self._counts["attempts"] += 1
            self._counts["unanswered"] += status is None
            self._settle(item, status, retry_after)

    def _settle(self, item: _Pending, status: int | None, retry_after: float | None) -> None:
        """Count the answer; queue a retry when one is due (under the lock)."""
        ok = status is not None and 200 <= status < 300
        if item.forged:
            # Refused: the receiver answered and said no; unanswered: nobody listened.
            verdict = "accepted" if ok else "unanswered" if status is None else "refused"
            self._counts[f"forged_{verdict}"] += 1
            return
        if ok:
            self._counts["delivered"] += 1
            return
        retry = item.attempt + 1
        if retry > RETRIES[item.event.source] or self._stopping:
            self._counts["failed"] += 1
            return
        if retry_after is not None and retry_after > self.policy.retry_after_cap:
            self._counts["failed"] += 1  # Loop fails a webhook asked to wait that long
            return
        wait = self.policy.backoff(retry, self._rng)
        if retry_after is not None:
            wait = max(wait, retry_after)
        self._counts["retried"] += 1
        self._push(replace(item, due=self.clock.monotonic() + wait, attempt=retry))
        self._cond.notify_all()


def post(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout: float
) -> tuple[int | None, float | None]:
    """One POST; (status, Retry-After seconds) or (None, None) when no answer came
    (refused, reset, timed out). Redirects are not followed: a 3xx is an answer."""
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        return None, None
    cls = http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
    conn = cls(split.hostname, split.port, timeout=timeout)
    try:
        conn.request("POST", request_target(url), body=body, headers=dict(headers))
        answer = conn.getresponse()
        answer.read(ANSWER_LIMIT)
        return answer.status, _retry_after(answer.getheader("Retry-After"))
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After of whole seconds; an HTTP date or garbage: None."""
    text = (value or "").strip()
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return float(text)
    return None
