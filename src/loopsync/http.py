"""The one HTTP path every remote client uses: timeouts, rate limits, retries.

Retries go through tenacity: 429 and throttle answers wait for the server's hint
(Retry-After, capped) or back off exponentially with jitter, as do 5xx, timeouts and
connection resets. A non-idempotent request is retried only when it certainly did not
take effect (429, or the connection was never made); otherwise it raises OutcomeUnknown
and the caller looks the effect up before repeating it.
"""

from __future__ import annotations

import collections
import email.utils
import json
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from loopsync.errors import (AuthError, NotFound, OutcomeUnknown, PermanentError, RateLimited,
                             RemoteError, TransientError)
from loopsync.timeutil import Clock, SystemClock

log = structlog.get_logger("loopsync.http")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6           # total tries, first included
    base: float = 0.5           # first backoff, seconds
    cap: float = 30.0           # longest single backoff
    retry_after_cap: float = 120.0  # longest server-asked wait we accept; longer fails the call


class RateLimiter:
    """At most `limit` requests in any `period` seconds (a sliding log, exact).

    Exact rather than a token bucket so the busiest window never exceeds the documented
    limit (Loop: 300 a minute per API key). Thread-safe; time comes from the clock.
    """

    def __init__(self, limit: int, period: float, clock: Clock | None = None) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.clock = clock or SystemClock()
        self._sent: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self, sleep: Callable[[float], None] | None = None) -> float:
        """Block until a request may go; returns the seconds waited. `sleep`: the caller's
        (its run's clock wakes it at shutdown), else the limiter clock's."""
        sleep = sleep or self.clock.sleep
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._sent and self._sent[0] <= now - self.period:
                    self._sent.popleft()
                if len(self._sent) < self.limit:
                    self._sent.append(now)
                    return waited
                delay = self._sent[0] + self.period - now
            delay = max(delay, 0.001)
            sleep(delay)
            waited += delay


_shared_limiters: dict[tuple[str, str], RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(system: str, key: str, limit: int, period: float,
                   clock: Clock | None = None) -> RateLimiter:
    """One limiter per (system, credential) in this process, so merchants sharing a key
    share its budget, across runs too: every run's SystemClock is one timeline. A clock on
    another timeline (a test's FakeClock) gets a limiter of its own."""
    import hashlib

    ident = (system, hashlib.sha256(key.encode()).hexdigest())
    with _shared_lock:
        lim = _shared_limiters.get(ident)
        if lim is None or lim.limit != limit or lim.period != period or \
                (clock is not None and lim.clock.timeline is not clock.timeline):
            lim = _shared_limiters[ident] = RateLimiter(limit, period, clock)
        return lim


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


def retrying(policy: RetryPolicy, clock: Clock, *, retry_on: tuple[type[BaseException], ...] =
             (TransientError,), rng: random.Random | None = None,
             system: str = "") -> Retrying:
    """A tenacity Retrying for `policy`; sleeps through the injected clock."""
    rng = rng or random.Random()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("http.retry", system=system, attempt=state.attempt_number,
                    wait=round(state.next_action.sleep, 2) if state.next_action else None,
                    error=str(exc))

    def too_long(exc: BaseException) -> bool:
        # A server hint beyond our cap fails now rather than sleeping for hours.
        return isinstance(exc, RateLimited) and exc.retry_after is not None and \
            exc.retry_after > policy.retry_after_cap

    return Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, retry_on) and not too_long(exc)),
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


class HttpClient:
    """requests + timeouts + limiter + tenacity for one remote system.

    `classify` may turn a 2xx answer into an error (the "200 with an error body"
    convention); by default only the status code decides.
    """

    def __init__(self, system: str, base_url: str, *, session: requests.Session | None = None,
                 timeout: float | tuple[float, float] = (5.0, 30.0),
                 limiter: RateLimiter | None = None, policy: RetryPolicy | None = None,
                 clock: Clock | None = None, headers: Mapping[str, str] | None = None,
                 rng: random.Random | None = None) -> None:
        self.system = system
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        if headers:
            self.session.headers.update(headers)
        self.timeout = timeout
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.requests_sent = 0

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, params: Any = None, json_body: Any = None,
                data: bytes | str | None = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None,
                check: Callable[[HttpResult], None] | None = None) -> HttpResult:
        """Send with retries. `check` raises on an error body (it runs inside the retry)."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        retry_on: tuple[type[BaseException], ...] = (TransientError,) if idempotent else \
            (RateLimited,)
        for attempt in retrying(self.policy, self.clock, retry_on=retry_on, rng=self.rng,
                                system=self.system):
            with attempt:
                result = self._once(method, path, params=params, json_body=json_body, data=data,
                                    headers=headers, idempotent=idempotent)
                if check is not None:
                    check(result)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, *, params: Any, json_body: Any,
              data: bytes | str | None, headers: Mapping[str, str] | None,
              idempotent: bool) -> HttpResult:
        if self.limiter is not None:
            self.limiter.acquire(self.clock.sleep)
        self.requests_sent += 1
        try:
            resp = self.session.request(method, self.url(path), params=params, json=json_body,
                                        data=data, headers=headers, timeout=self.timeout)
        except requests.ConnectionError as exc:
            if _never_sent(exc):  # no connection was made: safe to repeat any request
                raise TransientError(self.system, f"cannot connect: {_short(exc)}") from None
            if idempotent:
                raise TransientError(self.system, f"connection error: {_short(exc)}") from None
            raise OutcomeUnknown(self.system,
                                 f"connection error after sending: {_short(exc)}") from None
        except requests.Timeout as exc:  # read timeout: the server may have acted
            if idempotent:
                raise TransientError(self.system, f"timeout: {_short(exc)}") from None
            raise OutcomeUnknown(self.system, f"timeout after sending: {_short(exc)}") from None
        text = resp.text
        try:
            payload = json.loads(text) if text.strip() else None
        except ValueError:
            payload = None
        result = HttpResult(resp.status_code, resp.headers, text, payload)
        self.raise_for_status(result, idempotent=idempotent)
        return result

    def raise_for_status(self, result: HttpResult, *, idempotent: bool) -> None:
        status = result.status
        if status < 400:
            return
        message = error_text(result.data) or _short(result.text) or f"HTTP {status}"
        if status == 429:
            raise RateLimited(self.system, message,
                              retry_after=parse_retry_after(result.headers.get("Retry-After"),
                                                            self.clock.now()))
        if status >= 500 or status == 408:
            if idempotent:
                raise TransientError(self.system, message, status=status)
            raise OutcomeUnknown(self.system, message, status=status)
        if status in (401, 403):
            raise AuthError(self.system, message, status=status)
        if status == 404:
            raise NotFound(self.system, message, status=status)
        raise PermanentError(self.system, message, status=status)


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
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, NewConnectionError | ConnectTimeoutError | NameResolutionError):
            return True
        stack.extend([getattr(err, "reason", None), err.__cause__, err.__context__,
                      *[a for a in getattr(err, "args", ()) if isinstance(a, BaseException)]])
    return False


def error_text(body: Any) -> str | None:
    """Pull a message out of the many error envelopes (errors.message, error.message,
    message, content, Message)."""
    if isinstance(body, dict):
        for key in ("errors", "error"):
            inner = body.get(key)
            if isinstance(inner, dict):
                msg = inner.get("message") or inner.get("Message")
                if msg:
                    return str(msg)
            if isinstance(inner, list) and inner:
                first = inner[0]
                if isinstance(first, dict) and first.get("message"):
                    return str(first["message"])
                if isinstance(first, str):
                    return first
            if isinstance(inner, str) and inner:
                return inner
        for key in ("message", "Message", "content", "detail"):
            if body.get(key):
                return str(body[key])
    if isinstance(body, str) and body:
        return body
    return None


def _short(value: Any, limit: int = 300) -> str:
    text = str(value).strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def is_remote_error(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError)
