"""The one HTTP path every remote client uses: origins, redirects, deadlines, size caps,
rate limits, retries and the mapping of every transport fault to a typed remote error.

Retries go through tenacity: 429 and throttle answers wait for the server's hint
(Retry-After, capped) or back off exponentially with jitter, as do 5xx, timeouts and
connection resets. A non-idempotent request is retried only when it certainly did not
take effect (429, or the connection was never made); otherwise it raises OutcomeUnknown
and the caller looks the effect up before repeating it.

Security: credentials never leave the configured origin(s) (scheme, host, port).
`requests` never follows a redirect itself. A redirect within an allowed origin is
followed (at most `max_redirects` hops) by rebuilding the request, so the session's
credentials go with it; 303 turns the request into a GET, 301/302/307/308 keep the method
and body (an API write is re-sent where the server moved it, never silently turned into
a GET that "succeeds" without creating anything). A redirect anywhere else raises
ForeignOrigin naming the target origin (never its path or query) and nothing is sent
there. An absolute URL handed to `request()` (a `nextPageUrl`, a link from a body) is
refused the same way unless it is on an allowed origin.

The real internet: every response is streamed. A whole-request deadline (connect,
status line, headers and body) is enforced by a watchdog that shuts the socket down, so a
server dripping a byte a second is cut off; the body is inflated here in small pieces and
refused past `max_body` bytes (a small gzip bomb never reaches memory), and a
Content-Length beyond the cap is refused before reading. Every `requests`/urllib3/socket
exception and every JSON decoding failure becomes a RemoteError (transient, permanent, or
for a write that may have been received, OutcomeUnknown). Messages never carry a URL's
query string or user info, nor the client's own credential values.

Remote facts relied on: the error envelopes `error_text` reads and Loop's undocumented
rate-limit headers (docs/api/loop.md, "Error shapes", "Rate limit"); why a write is never
retried blindly and a server's hint is bounded (docs/api/design-notes.md, "Remote writes
and errors").
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import email.utils
import hashlib
import heapq
import http.client
import itertools
import json
import math
import random
import re
import socket
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import structlog
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from loopsync import jsonio, telemetry
from loopsync.errors import (
    AuthError,
    DeadlineExceeded,
    ForeignOrigin,
    NotFound,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RemoteError,
    ResponseTooLarge,
    TransientError,
)
from loopsync.redaction import clip
from loopsync.timeutil import Clock, SystemClock

log = structlog.get_logger("loopsync.http")

DEFAULT_MAX_BODY = 32 * 1024 * 1024  # decoded bytes: far above any page the clients ask for
DEFAULT_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # total tries, first included
    base: float = 0.5  # first backoff, seconds
    cap: float = 30.0  # longest single backoff
    retry_after_cap: float = 120.0  # longest server-asked wait we accept; longer fails the call


class RateLimiter:
    """At most `limit` requests in any `period` seconds (a sliding log, exact).

    Exact rather than a token bucket so the busiest window never exceeds the documented
    limit (Loop: 300 a minute per API key). Thread-safe; time comes from the clock. Each
    send is logged with its wall-clock epoch too, so the log can be saved and merged into
    the next process's limiter (`LimitHistory`): a cron run right after another does not
    start with a full budget.
    """

    def __init__(self, limit: int, period: float, clock: Clock | None = None) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.clock = clock or SystemClock()
        self.ident: str | None = None  # "system:hashed-key" for a shared limiter
        self._sent: collections.deque[tuple[float, float]] = collections.deque()  # mono, epoch
        self._epochs: collections.Counter[float] = collections.Counter()  # epochs held
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.period:
            self._forget(self._sent.popleft()[1])

    def _forget(self, epoch: float) -> None:
        self._epochs[epoch] -= 1
        if self._epochs[epoch] <= 0:
            del self._epochs[epoch]

    def acquire(self, sleep: Callable[[float], None] | None = None) -> float:
        """Block until a request may go; returns the seconds waited. `sleep`: the caller's
        (its run's clock wakes it at shutdown), else the limiter clock's."""
        sleep = sleep or self.clock.sleep
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock.monotonic()
                self._expire(now)
                if len(self._sent) < self.limit:
                    epoch = round(self.clock.now().timestamp(), 6)
                    self._sent.append((now, epoch))
                    self._epochs[epoch] += 1
                    hooks = list(self._hooks)
                    break
                delay = self._sent[0][0] + self.period - now
            delay = max(delay, 0.001)
            sleep(delay)
            waited += delay
        for hook in hooks:
            hook()
        return waited

    def recent(self) -> list[float]:
        """Wall-clock epochs of the sends still inside the window (what a restart needs)."""
        with self._lock:
            self._expire(self.clock.monotonic())
            return [epoch for _, epoch in self._sent]

    def merge(self, epochs: Iterable[Any]) -> int:
        """Count sends another process (or an earlier run) made; returns how many were new.
        Sends this limiter already holds are recognised by their epoch (as many times as it
        holds it) and not doubled; a time in the future (a clock stepped back) counts as
        now, to stay on the safe side. Anything but a finite number is ignored."""
        with self._lock:
            now = self.clock.monotonic()
            wall = round(self.clock.now().timestamp(), 6)
            self._expire(now)
            wanted: collections.Counter[float] = collections.Counter()
            for value in epochs:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    continue
                epoch = min(round(float(value), 6), wall)
                if wall - epoch < self.period:
                    wanted[epoch] += 1
            added = 0
            for epoch, count in wanted.items():
                for _ in range(count - self._epochs[epoch]):
                    bisect.insort(self._sent, (now - (wall - epoch), epoch))
                    self._epochs[epoch] += 1
                    added += 1
            # more than `limit` in the window: keep the newest, they decide the next wait
            while len(self._sent) > self.limit:
                self._forget(self._sent.popleft()[1])
            return added

    def add_hook(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks.append(hook)

    def remove_hook(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)


_shared_limiters: dict[tuple[str, str], RateLimiter] = {}
_shared_lock = threading.Lock()


def key_id(key: str) -> str:
    """A stable, non-reversible id for a credential (what may be stored or compared)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shared_limiter(
    system: str, key: str, limit: int, period: float, clock: Clock | None = None
) -> RateLimiter:
    """One limiter per (system, credential) in this process, so merchants sharing a key
    share its budget, across runs too: every run's SystemClock is one timeline. A clock on
    another timeline (a test's FakeClock) gets a limiter of its own."""
    ident = (system, key_id(key))
    with _shared_lock:
        lim = _shared_limiters.get(ident)
        if (
            lim is None
            or lim.limit != limit
            or lim.period != period
            or (clock is not None and lim.clock.timeline is not clock.timeline)
        ):
            lim = _shared_limiters[ident] = RateLimiter(limit, period, clock)
            lim.ident = f"{system}:{ident[1][:24]}"
        return lim


def forget_shared_limiters() -> None:
    """Start every (system, credential) budget afresh, as a new process does. For test
    suites: many tests in one process share the sandbox's key, and one test's requests must
    not make the next one wait out a real minute."""
    with _shared_lock:
        _shared_limiters.clear()


class KeyValue(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


LIMIT_HISTORY_NAMESPACE = "rate_limits"


class LimitHistory:
    """Recent send times of every shared limiter one run uses, kept in the merchant's
    state store (`kv`, keyed "system:hashed key id"; epochs only, never the key).

    `load(kv, *clients)` at the start of a run finds the limiters in the clients (Loop's,
    the connector's), merges what the last run saved and saves again every few seconds
    while the run goes (from the run's own thread, outside a transaction), and `save()` at
    the end. So cron's `run --once` after `run --once` starts with the budget the previous
    process left, and a killed run loses at most the last few seconds of its log.
    """

    SAVE_EVERY = 5.0  # seconds between periodic saves

    def __init__(self, kv: KeyValue, limiters: Iterable[RateLimiter]) -> None:
        self.kv = kv
        self.limiters = list({id(lim): lim for lim in limiters if lim.ident}.values())
        self._owner = threading.get_ident()
        self._last_save: float | None = None

    @classmethod
    def load(cls, kv: KeyValue, *clients: Any) -> LimitHistory:
        history = cls(kv, find_limiters(*clients))
        for lim in history.limiters:
            assert lim.ident is not None
            try:
                saved = kv.get(lim.ident)
            except Exception as exc:  # noqa: BLE001 - advisory: a bad row must not stop the run
                log.warning(
                    "rate_limit.history_unreadable", limiter=lim.ident, error=type(exc).__name__
                )
                continue
            if isinstance(saved, list):
                added = lim.merge(saved)
                if added:
                    log.info("rate_limit.history_loaded", limiter=lim.ident, sends=added)
            lim.add_hook(history._tick)
        return history

    def _tick(self) -> None:
        if threading.get_ident() != self._owner or _in_transaction(self.kv):
            return
        now = self.limiters[0].clock.monotonic() if self.limiters else 0.0
        if self._last_save is None:
            self._last_save = now
        elif now - self._last_save >= self.SAVE_EVERY:
            self._write()

    def _write(self) -> None:
        for lim in self.limiters:
            assert lim.ident is not None
            try:
                self.kv.set(lim.ident, lim.recent())
            except Exception as exc:  # noqa: BLE001 - a full disk must not crash the run here
                log.warning(
                    "rate_limit.history_not_saved", limiter=lim.ident, error=type(exc).__name__
                )
        if self.limiters:
            self._last_save = self.limiters[0].clock.monotonic()

    def save(self) -> None:
        """Write the log and stop the periodic saves (the end of the run)."""
        for lim in self.limiters:
            lim.remove_hook(self._tick)
        self._write()


def _in_transaction(kv: KeyValue) -> bool:
    """A write now would join (and commit early) the run's open transaction."""
    conn = getattr(getattr(getattr(kv, "store", None), "db", None), "conn", None)
    return bool(getattr(conn, "in_transaction", False))


def find_limiters(*roots: Any, depth: int = 3) -> list[RateLimiter]:
    """The shared rate limiters reachable from `roots` (a LoopClient, a connector): the
    clients keep them in different places (`http.limiter`, `client.http.limiter`)."""
    found: dict[int, RateLimiter] = {}
    seen: set[int] = set()
    level = list(roots)
    for _ in range(depth + 1):
        following: list[Any] = []
        for obj in level:
            if id(obj) in seen or obj is None:
                continue
            seen.add(id(obj))
            if isinstance(obj, RateLimiter):
                if obj.ident:
                    found[id(obj)] = obj
                continue
            attrs = getattr(obj, "__dict__", None)
            if isinstance(attrs, dict) and not isinstance(obj, type):
                following.extend(
                    v for v in attrs.values() if hasattr(v, "__dict__") and not callable(v)
                )
        level = following
    return list(found.values())


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is seconds or an HTTP date; returns seconds (>= 0) or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _WaitForHintOrBackoff(wait_base):
    """Wait the server's hint when it gave one, else exponential backoff with full jitter."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.retry_after_cap) + self.rng.uniform(0, 0.25)
        ceiling = min(self.policy.cap, self.policy.base * (2 ** (retry_state.attempt_number - 1)))
        return self.rng.uniform(ceiling / 2, ceiling)


def retrying(
    policy: RetryPolicy,
    clock: Clock,
    *,
    retry_on: tuple[type[BaseException], ...] = (TransientError,),
    rng: random.Random | None = None,
    system: str = "",
) -> Retrying:
    """A tenacity Retrying for `policy`; sleeps through the injected clock."""
    rng = rng or random.Random()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "http.retry",
            system=system,
            attempt=state.attempt_number,
            wait=round(state.next_action.sleep, 2) if state.next_action else None,
            error=str(exc),
        )
        if isinstance(exc, RateLimited) and state.next_action is not None:
            telemetry.emit(
                telemetry.ThrottleWait(
                    system,
                    state.next_action.sleep,
                    telemetry.WaitCause.SERVER,
                    telemetry.current_merchant(),
                )
            )

    def too_long(exc: BaseException) -> bool:
        # A server hint beyond our cap fails now rather than sleeping for hours.
        return (
            isinstance(exc, RateLimited)
            and exc.retry_after is not None
            and exc.retry_after > policy.retry_after_cap
        )

    return Retrying(
        retry=retry_if_exception(
            lambda exc: (
                isinstance(exc, retry_on)
                and not too_long(exc)
                and not isinstance(exc, DeadlineExceeded)
            )
        ),
        wait=_WaitForHintOrBackoff(policy, rng),
        stop=stop_after_attempt(policy.attempts),
        sleep=clock.sleep,
        reraise=True,
        before_sleep=before_sleep,
    )


@dataclass
class HttpResult:
    status: int
    headers: Mapping[str, str]
    text: str
    data: Any  # decoded JSON, or None when the body is not JSON

    @property
    def is_json(self) -> bool:
        return self.data is not None or self.text.strip() == "null"


# -- origins --------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str) -> Origin:
    """The (scheme, host, port) a URL goes to. Parsed both as urllib3 will send it and as
    the standard library reads it; a URL on which they disagree (a parser trick such as a
    backslash or a second '@') is refused, as is anything but http(s)."""
    try:
        sent = urllib3.util.parse_url(url)
        std = urlsplit(url)
        std_port = std.port
    except (ValueError, urllib3.exceptions.LocationParseError):
        raise ValueError("not a valid URL") from None
    scheme = (sent.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not sent.host:
        raise ValueError("not an absolute http(s) URL")
    host = sent.host.lower().strip("[]").rstrip(".")
    std_host = (std.hostname or "").lower().rstrip(".")
    port = sent.port or _DEFAULT_PORTS[scheme]
    if (
        std.scheme.lower() != scheme
        or std_host != host
        or (std_port or _DEFAULT_PORTS[scheme]) != port
        or any(c in url for c in "\\\r\n\t ")
    ):
        raise ValueError("ambiguous URL")
    return Origin(scheme, host, port)


def safe_origin(url: str) -> str:
    """An origin to name in a message: scheme, host and port only (never user info, path
    or query, which may carry a token)."""
    try:
        return str(origin_of(url))
    except ValueError:
        return "an unparsable address"


_QUERY = re.compile(r"(?<=[\w/.\-%~:@])\?[^\s'\"<>)\]]+")
_USERINFO = re.compile(r"(?<=://)[^/\s@'\"]+@")


def scrub(text: str) -> str:
    """Remove query strings and user info from the URLs in a message (tokens live there)."""
    return _USERINFO.sub("", _QUERY.sub("?…", text))


# -- the deadline watchdog ------------------------------------------------------------------


class _Watch:
    """One request's deadline: the sockets it uses are shut down when it expires, which
    wakes a read blocked in the kernel (a per-read timeout does not: a drip resets it)."""

    def __init__(self, due: float) -> None:
        self.due = due
        self.expired = False
        self.done = False
        self.connected = False  # a connection was made: the server may have the request
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: Any) -> None:
        """Watch this socket (the connection's; http.client may drop its own reference to
        it before the body is read, so the socket itself is kept)."""
        if sock is None:
            return
        with self._lock:
            self.connected = True
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._socks.clear()


def _shutdown(sock: Any) -> None:
    sock = getattr(sock, "socket", sock)  # urllib3's TLS-in-TLS wrapper
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # the plain socket's shutdown, not SSLSocket's (that one unwraps TLS and would
            # race the reading thread); the blocked recv returns at once
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for every deadline in the process (a timer per request would be a
    thread per request). Real time on purpose: sockets block in real time, whatever clock
    the caller injects."""

    def __init__(self) -> None:
        self._clock = SystemClock()
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float) -> _Watch:
        w = _Watch(self._clock.monotonic() + seconds)
        with self._cond:
            heapq.heappush(self._heap, (w.due, next(self._seq), w))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="loopsync-http-deadline", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return w

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(60)
                    continue
                wait = self._heap[0][0] - self._clock.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                due = heapq.heappop(self._heap)[2]
            due.expire()


_watchdog = _Watchdog()
_current = threading.local()


def _current_watch() -> _Watch | None:
    return getattr(_current, "watch", None)


class _WatchMixin:
    """Hands the connection's socket to the current request's watch."""

    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        watch = _current_watch()
        if watch is not None:
            watch.attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = _current_watch()
        if watch is not None:
            watch.attach(self.sock)  # a kept-alive connection: connect() is not called
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _proxies_for(url: str) -> dict[str, str]:
    """The egress proxy the environment names (HTTPS_PROXY or ALL_PROXY, minus NO_PROXY),
    for an https request only: through a proxy it travels as an encrypted tunnel (CONNECT
    host:port), so the proxy never sees a header or a body. A plain-http request never
    goes through one: the proxy would read it whole, credentials included."""
    if not url[:8].lower().startswith("https://"):
        return {}
    try:
        found = requests.utils.get_environ_proxies(url)
    except (ValueError, OSError):  # an unparsable NO_PROXY or proxy setting: go direct
        return {}
    proxy = found.get("https") or found.get("all")
    return {"https": proxy} if proxy else {}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections the deadline watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(*args, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        return manager


# -- bodies ---------------------------------------------------------------------------------

READ_PIECE = 64 * 1024  # raw bytes read at a time
INFLATE_PIECE = 256 * 1024  # largest piece one decompress call may produce


class _Inflater:
    """gzip/deflate, inflated in bounded pieces (zlib's max_length), concatenated gzip
    members included. Raises zlib.error on a corrupt stream."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._raw_deflate = False
        self._d = self._new()
        self._started = False

    def _new(self) -> Any:
        if self.encoding == "deflate":
            return zlib.decompressobj(-zlib.MAX_WBITS if self._raw_deflate else zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._d.eof:
                if self.encoding != "deflate" and data.strip(b"\0"):
                    self._d = self._new()  # another gzip member
                else:
                    return  # trailing garbage after a deflate stream, or gzip padding
            try:
                out = self._d.decompress(data, INFLATE_PIECE)
            except zlib.error:
                # "deflate" is zlib-wrapped by the RFC, raw in practice for some servers
                if self.encoding == "deflate" and not self._started and not self._raw_deflate:
                    self._raw_deflate = True
                    self._d = self._new()
                    continue
                raise
            self._started = True
            if out:
                yield out
            data = self._d.unconsumed_tail or (self._d.unused_data if self._d.eof else b"")

    def close(self) -> Iterator[bytes]:
        if not self._d.eof and self._started:
            out = self._d.flush()
            if out:
                yield out
            if not self._d.eof:
                raise zlib.error("compressed body ends early")


class BodyTooLarge(Exception):
    """Internal: the body passed the cap (becomes ResponseTooLarge or OutcomeUnknown)."""


class _DeadlinePassed(Exception):
    """Internal: the watchdog cut the request (becomes DeadlineExceeded or OutcomeUnknown)."""


def _inflaters_for(content_encoding: str) -> list[_Inflater]:
    """One inflater per coding named, in the order to undo them (the last applied first);
    ValueError for a coding other than gzip/deflate/identity."""
    encodings = [
        e.strip().lower()
        for e in content_encoding.split(",")
        if e.strip() and e.strip().lower() != "identity"
    ]
    inflaters: list[_Inflater] = []
    for enc in reversed(encodings):  # applied in order listed: undo from the last
        if enc not in ("gzip", "x-gzip", "deflate"):
            raise ValueError(f"unsupported Content-Encoding {enc!r}")
        inflaters.append(_Inflater("deflate" if enc == "deflate" else "gzip"))
    return inflaters


class _DecodedBody:
    """Raw pieces in, decoded bytes kept; BodyTooLarge past `max_body` decoded bytes."""

    def __init__(self, inflaters: list[_Inflater], max_body: int) -> None:
        self.inflaters = inflaters
        self.max_body = max_body
        self.parts: list[bytes] = []
        self.size = 0

    def push(self, chunks: Iterable[bytes], level: int = 0) -> None:
        for chunk in chunks:
            if level == len(self.inflaters):
                self._keep(chunk)
            else:
                self.push(self.inflaters[level].feed(chunk), level + 1)

    def _keep(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_body:
            raise BodyTooLarge(self.size)
        self.parts.append(chunk)

    def close(self) -> bytes:
        """Flush every inflater, outermost first, and return the whole decoded body."""
        for level, inflater in enumerate(self.inflaters):
            self.push(inflater.close(), level + 1)
        return b"".join(self.parts)


def _raw_pieces(raw: Any, max_body: int, watch: _Watch | None) -> Iterator[bytes]:
    """The body as sent, READ_PIECE bytes at a time; BodyTooLarge past `max_body` raw
    bytes, _DeadlinePassed once the watchdog has cut the request."""
    raw_size = 0
    while True:
        if watch is not None and watch.expired:
            raise _DeadlinePassed()
        chunk = raw.read(READ_PIECE, decode_content=False)
        if not chunk:
            break
        raw_size += len(chunk)
        if raw_size > max_body:
            raise BodyTooLarge(raw_size)
        yield chunk
    if watch is not None and watch.expired:
        raise _DeadlinePassed()  # a socket shut at the deadline reads as an early end


def read_body(resp: requests.Response, max_body: int, watch: _Watch | None) -> bytes:
    """The body, decoded (Content-Encoding), read in small pieces; BodyTooLarge past
    `max_body` decoded (or raw) bytes, counted as they arrive."""
    body = _DecodedBody(_inflaters_for(resp.headers.get("Content-Encoding", "")), max_body)
    for chunk in _raw_pieces(resp.raw, max_body, watch):
        body.push([chunk])
    return body.close()


def decode_text(body: bytes, encoding: str | None) -> str:
    """The body as text, whatever charset the server names. Never holds a lone surrogate
    (a charset such as utf-7 or unicode_escape can make one; no table, log line or
    request body can encode it): each becomes U+FFFD, as bytes that were not text do."""
    try:
        text = body.decode(encoding or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # a charset Python does not know, or "idna"
        text = body.decode("utf-8", errors="replace")
    if not text.isascii() and _LONE_SURROGATE.search(text):
        text = _LONE_SURROGATE.sub("\ufffd", text)
    return text


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(text: str) -> Any:
    """JSON or None. Whatever the body (nested 100,000 deep, numbers of 5,000 digits,
    invalid escapes), nothing but None comes out of a failure."""
    if not text.strip():
        return None
    try:
        return jsonio.loads(text)  # orjson where it agrees with json (the hot path)
    except (ValueError, RecursionError, MemoryError, TypeError):
        pass
    # Valid JSON that Python's decoder refuses (a value nested thousands deep, an integer
    # of more than 4,300 digits) is one record's trouble, not the whole page's: decode it
    # again with each too-deep value cut to [] and each such integer made one too large
    # to pass any reader, so that the parsers refuse just the record holding it.
    try:
        return json.loads(_flatten_deep(text), parse_int=_bounded_int)
    except (ValueError, RecursionError, MemoryError, TypeError):
        return None


JSON_DEPTH_CUT = 200  # deeper than any reader accepts (models.MAX_DEPTH), far from the stack
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _flatten_deep(text: str) -> str:
    """`text` with every array or object nested deeper than JSON_DEPTH_CUT replaced by
    `[]` (still that deep, so still refused). Iterative: no stack to exhaust."""
    out: list[str] = []
    depth, kept, cut_from = 0, 0, -1
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()[0]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == JSON_DEPTH_CUT + 1 and cut_from < 0:
                cut_from = token.start()
        elif depth > 0:
            depth -= 1
            if depth == JSON_DEPTH_CUT and cut_from >= 0:
                out += [text[kept:cut_from], "[]"]
                kept, cut_from = token.end(), -1
    return "".join(out) + text[kept:] if out else text


def _bounded_int(digits: str) -> int:
    """An integer the decoder would refuse for its length: a stand-in just as absurd
    (over 4,000 bits; every reader refuses it) that costs nothing to build."""
    try:
        return int(digits)
    except ValueError:
        return -(1 << 4096) if digits.startswith("-") else 1 << 4096


REDIRECTS = (301, 302, 303, 307, 308)
SAFE_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "user-agent",
        "connection",
        "content-length",
        "soapaction",
    }
)


class HttpClient:
    """requests + timeouts + limiter + tenacity for one remote system.

    `classify` may turn a 2xx answer into an error (the "200 with an error body"
    convention); by default only the status code decides.

    `origins`: further URLs (any path) whose origins may receive this client's requests
    besides `base_url`'s. `deadline`: seconds one attempt may take in all (default: the
    connect timeout plus three read timeouts). `max_body`: bytes of decoded body accepted.
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        limiter: RateLimiter | None = None,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        origins: Iterable[str] = (),
        deadline: float | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
    ) -> None:
        self.system = system
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        if headers:
            self.session.headers.update(headers)
        if isinstance(self.session, requests.Session):
            # Nothing from the environment by default: HTTP_PROXY would hand a plain-http
            # request, credentials and all, to the proxy's host, ~/.netrc would add an
            # Authorization loopsync never configured, REQUESTS_CA_BUNDLE would change whom
            # TLS trusts. An https egress proxy is still honoured: see `_proxies_for`.
            self.session.trust_env = False
            adapter = WatchedAdapter()
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.timeout = timeout
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.deadline = deadline if deadline is not None else connect + 3 * read
        if self.deadline <= 0 or max_body < 1 or max_redirects < 0:
            raise ValueError("deadline and max_body must be positive, max_redirects >= 0")
        self.max_body = max_body
        self.max_redirects = max_redirects
        allowed: set[Origin] = set()
        for configured in (self.base_url, *origins):
            try:
                allowed.add(origin_of(configured))
            except ValueError:  # every request fails with a typed error naming the problem
                log.error(
                    "http.bad_configured_url", system=self.system, origin=safe_origin(configured)
                )
        self.origins: frozenset[Origin] = frozenset(allowed)
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.requests_sent = 0

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")) or "://" in path[:16]:
            url = path
        else:
            url = f"{self.base_url}/{path.lstrip('/')}"
        self._check_origin(url, "refusing to send to")
        return url

    def _check_origin(self, url: str, what: str) -> None:
        if not self.origins:
            raise PermanentError(self.system, "the configured URL is not a valid http(s) URL")
        try:
            origin = origin_of(url)
        except ValueError as exc:
            raise ForeignOrigin(
                self.system, f"{what} {safe_origin(url)}: {exc}", target=None
            ) from None
        if origin not in self.origins:
            raise ForeignOrigin(
                self.system,
                f"{what} {origin}: not the configured origin "
                f"({', '.join(sorted(map(str, self.origins)))})",
                target=str(origin),
            )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        check: Callable[[HttpResult], None] | None = None,
    ) -> HttpResult:
        """Send with retries. `check` raises on an error body (it runs inside the retry)."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        retry_on: tuple[type[BaseException], ...] = (
            (TransientError,) if idempotent else (RateLimited,)
        )
        for attempt in retrying(
            self.policy, self.clock, retry_on=retry_on, rng=self.rng, system=self.system
        ):
            with attempt:
                result = self._once(
                    method,
                    path,
                    params=params,
                    json_body=json_body,
                    data=data,
                    headers=headers,
                    idempotent=idempotent,
                )
                if check is not None:
                    check(result)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        path: str,
        *,
        params: Any,
        json_body: Any,
        data: bytes | str | None,
        headers: Mapping[str, str] | None,
        idempotent: bool,
    ) -> HttpResult:
        url = self.url(path)
        for hop in range(self.max_redirects + 1):
            result = self._send(
                method,
                url,
                params=params,
                json_body=json_body,
                data=data,
                headers=headers,
                idempotent=idempotent,
            )
            if result.status not in REDIRECTS:
                break
            location = result.headers.get("Location")
            if not location:
                raise PermanentError(
                    self.system, f"HTTP {result.status} without a Location", status=result.status
                )
            target = urljoin(url, location.strip())
            # Nothing goes to another origin: not the credentials, not the record.
            self._check_origin(target, f"HTTP {result.status} redirect to")
            if hop == self.max_redirects:
                raise PermanentError(
                    self.system,
                    f"more than {self.max_redirects} redirects (last to {safe_origin(target)})",
                    status=result.status,
                )
            log.info(
                "http.redirect",
                system=self.system,
                status=result.status,
                origin=safe_origin(target),
            )
            if result.status == 303 and method.upper() != "HEAD":
                method, json_body, data = "GET", None, None
            url, params = target, None  # the Location carries its own query
        self.raise_for_status(result, idempotent=idempotent)
        return result

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Any,
        json_body: Any,
        data: bytes | str | None,
        headers: Mapping[str, str] | None,
        idempotent: bool,
    ) -> HttpResult:
        if self.limiter is not None:
            waited = self.limiter.acquire(self.clock.sleep)
            if waited > 0:
                telemetry.emit(
                    telemetry.ThrottleWait(
                        self.system,
                        waited,
                        telemetry.WaitCause.LIMITER,
                        telemetry.current_merchant(),
                    )
                )
        self.requests_sent += 1
        began = self.clock.monotonic()
        sent_headers = {"Accept-Encoding": "gzip, deflate", **(headers or {})}
        watch = _watchdog.watch(self.deadline)
        _current.watch = watch
        resp: requests.Response | None = None
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                json=json_body,
                data=data,
                headers=sent_headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
                proxies=_proxies_for(url),
            )
            length = resp.headers.get("Content-Length", "").strip()
            if length.isascii() and length.isdigit() and int(length) > self.max_body:
                raise BodyTooLarge(int(length))
            body = read_body(resp, self.max_body, watch) if method.upper() != "HEAD" else b""
            text = decode_text(body, resp.encoding)
            return HttpResult(resp.status_code, resp.headers, text, parse_json(text))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: every fault becomes a RemoteError
            raise self._transport_error(
                exc, watch, idempotent=idempotent, answered=resp is not None
            ) from None
        finally:
            _current.watch = None
            watch.finish()
            if resp is not None:
                resp.close()
            telemetry.emit(
                telemetry.RequestDone(
                    self.system,
                    resp.status_code if resp is not None else None,
                    self.clock.monotonic() - began,
                    telemetry.current_merchant(),
                )
            )

    def _transport_error(
        self, exc: Exception, watch: _Watch, *, idempotent: bool, answered: bool
    ) -> RemoteError:
        """Every fault below HTTP as a typed error. The server may have acted on a write
        once a connection was made, so a write then is OutcomeUnknown, never retried."""
        if isinstance(exc, BodyTooLarge):
            message = f"response larger than {self.max_body} bytes; refused"
            if idempotent:
                return ResponseTooLarge(self.system, message)
            return OutcomeUnknown(self.system, message + " (the request was received)")
        if watch.expired or isinstance(exc, _DeadlinePassed):
            # Not retried in this call: a server that cannot answer within the deadline
            # would hold the run for attempts x deadline. The next cycle tries again.
            message = f"no complete answer within the {self.deadline:g} s deadline"
            if idempotent or (not watch.connected and not answered):
                return DeadlineExceeded(self.system, message)
            return OutcomeUnknown(self.system, message)
        detail = self._scrub(f"{type(exc).__name__}: {_short(exc)}")
        if isinstance(exc, requests.ConnectionError) and _never_sent(exc):
            return TransientError(self.system, f"cannot connect: {detail}")
        fault = _fault_once_sent(exc, detail, answered=answered, connected=watch.connected)
        if fault is None:
            # The request could not be built (bad URL, header, body encoding): nothing sent.
            return PermanentError(self.system, f"request not sent: {detail}")
        if idempotent:
            return TransientError(self.system, fault)
        return OutcomeUnknown(self.system, fault)

    def _scrub(self, text: str) -> str:
        """Query strings, user info and this client's credential values out of a message."""
        text = scrub(text)
        values: list[str] = [
            str(v) for k, v in self.session.headers.items() if str(k).lower() not in SAFE_HEADERS
        ]
        auth = getattr(self.session, "auth", None)
        if isinstance(auth, tuple):
            values += [str(v) for v in auth]
        for value in values:
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def raise_for_status(self, result: HttpResult, *, idempotent: bool) -> None:
        status = result.status
        if status < 300:
            return
        if status < 400:  # a redirect we could not follow, 304 and the like: no answer
            raise PermanentError(self.system, f"unexpected HTTP {status}", status=status)
        # a body may echo the request: no query string or credential of ours in the message
        message = self._scrub(error_text(result.data) or _short(result.text) or f"HTTP {status}")
        if status == 429:
            raise RateLimited(
                self.system,
                message,
                retry_after=parse_retry_after(result.headers.get("Retry-After"), self.clock.now()),
            )
        if status >= 500 or status == 408:
            if idempotent:
                raise TransientError(self.system, message, status=status)
            raise OutcomeUnknown(self.system, message, status=status)
        if status in (401, 403):
            raise AuthError(self.system, message, status=status)
        if status == 404:
            raise NotFound(self.system, message, status=status)
        raise PermanentError(self.system, message, status=status)


# requests' errors raised while building a request: nothing was sent.
_NOT_SENT = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


def _fault_once_sent(exc: Exception, detail: str, *, answered: bool, connected: bool) -> str | None:
    """The message for a fault after which the server may have the request (the caller
    makes it transient for a read, OutcomeUnknown for a write); None when the request
    could not even be built."""
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return f"connection error: {detail}"
    if isinstance(exc, requests.RequestException) and not isinstance(exc, _NOT_SENT):
        return f"transport error: {detail}"  # decoding, chunking, ...
    if answered:  # the answer was unreadable: bad gzip, cut chunk, unknown encoding
        return f"unreadable answer: {detail}"
    if isinstance(exc, urllib3.exceptions.HTTPError | http.client.HTTPException | OSError):
        return f"connection error: {detail}"
    if connected:
        # Sent, then refused on the way back (requests parses a redirect's Location
        # even when it does not follow it: a hostile one raises ValueError there).
        return f"unreadable answer: {detail}"
    return None


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection itself failed (refused, DNS, connect timeout), so the
    server cannot have seen the request."""
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue  # None, or a `reason` that is only text (a proxy's refusal)
        seen.add(id(err))
        if isinstance(err, NewConnectionError | ConnectTimeoutError | NameResolutionError):
            return True
        stack.extend(
            [
                getattr(err, "reason", None),
                err.__cause__,
                err.__context__,
                *[a for a in getattr(err, "args", ()) if isinstance(a, BaseException)],
            ]
        )
    return False


def error_text(body: Any) -> str | None:
    """Pull a message out of the many error envelopes (errors.message, error.message,
    message, content, Message)."""
    if isinstance(body, dict):
        for key in ("errors", "error"):
            found = _envelope_message(body.get(key))
            if found is not None:
                return found
        for key in ("message", "Message", "content", "detail"):
            if body.get(key):
                return str(body[key])
    if isinstance(body, str) and body:
        return body
    return None


def _envelope_message(inner: Any) -> str | None:
    """The message in an `errors`/`error` member: an object, a list (its first item) or
    text; None to look further."""
    if isinstance(inner, dict):
        msg = inner.get("message") or inner.get("Message")
        return str(msg) if msg else None
    if isinstance(inner, list) and inner:
        first = inner[0]
        if isinstance(first, dict) and first.get("message"):
            return str(first["message"])
        if isinstance(first, str):
            return first
        return None
    if isinstance(inner, str) and inner:
        return inner
    return None


def _short(value: Any, limit: int = 300) -> str:
    return clip(str(value).strip().replace("\n", " "), limit)  # redacted before the cut


def is_remote_error(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError)
