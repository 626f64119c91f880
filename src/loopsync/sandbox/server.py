"""A tiny real-HTTP framework for the emulated APIs: one threaded server per API on
127.0.0.1, a record of every call, and fault injection (status codes, 429 with or without
Retry-After, slow answers, connection resets before or after the handler ran, garbage
bodies, and the transport faults of the real internet: answers dripped a byte at a time,
bodies cut short, broken chunked encoding, gzip that is not gzip). What each fault kind
does is data: the `FAULT_KINDS` table. Emulators implement `EmulatedApi.handle`;
everything else lives here."""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loopsync.timeutil import Clock, SystemClock


class CaseInsensitiveDict(dict[str, Any]):
    def __init__(self, items: Any = ()) -> None:
        super().__init__()
        for k, v in dict(items).items():
            self[k] = v

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]  # last value of each parameter
    query_lists: dict[str, list[str]]
    headers: CaseInsensitiveDict
    body: bytes
    raw_path: str = ""

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, json.dumps(obj).encode(), h)


def text_response(
    text: str,
    status: int = 200,
    content_type: str = "text/plain",
    headers: dict[str, str] | None = None,
) -> Response:
    h = {"Content-Type": f"{content_type}; charset=utf-8"}
    h.update(headers or {})
    return Response(status, text.encode("utf-8"), h)


@dataclass
class CallRecord:
    api: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int | None
    at: float
    fault: str | None = None
    write: bool = False

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode()) if self.body else None
        except ValueError:
            return None


class Recorder:
    """Every call each emulated API received, in arrival order (thread-safe)."""

    def __init__(self) -> None:
        self._calls: list[CallRecord] = []
        self._lock = threading.Lock()

    def add(self, rec: CallRecord) -> None:
        with self._lock:
            self._calls.append(rec)

    def calls(
        self,
        api: str | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        writes: bool | None = None,
    ) -> list[CallRecord]:
        with self._lock:
            out = list(self._calls)
        return [
            c
            for c in out
            if (api is None or c.api == api)
            and (method is None or c.method == method.upper())
            and (path is None or path in c.path)
            and (writes is None or c.write == writes)
        ]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def count(self) -> int:
        """Calls recorded so far (cheap: drivers poll it to act after N requests)."""
        with self._lock:
            return len(self._calls)


# -- faults -----------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do instead of (or after) the normal answer.

    kind: "status"        answer `status` with `body` (and `headers`) without running the handler
          "rate_limit"    429; Retry-After: `retry_after` when given, else no header at all
          "slow"          sleep `delay` real seconds, then answer normally (client timeouts)
          "reset"         drop the connection before the handler runs (nothing happened)
          "reset_after"   run the handler, then drop the connection (it happened; answer lost)
          "malformed"     answer 200 with a body that is not JSON/XML
          "custom"        answer `response(request)`
          "drip"          run the handler, send its answer a byte at a time over `delay`
                          seconds (capped at DRIP_MAX_SECONDS), then the rest
          "truncated"     run the handler, declare its full Content-Length, send half, close
          "bad_chunked"   run the handler, answer chunked with a chunk-size line that is not hex
          "bad_gzip"      run the handler, answer `Content-Encoding: gzip` over bytes not gzip
    Each kind's behaviour is a row of `FAULT_KINDS`.
    """

    kind: str
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    delay: float = 0.0
    response: Callable[[Request], Response] | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")

    @property
    def label(self) -> str:
        if self.kind == "status":
            return f"status:{self.status}"
        if self.kind == "rate_limit":
            return "429" + ("+retry-after" if self.retry_after is not None else "")
        return self.kind


@dataclass
class _Queued:
    fault: Fault
    times: int
    when: Callable[[Request], bool]


class FaultInjector:
    """Scripted faults (next N matching calls) and random faults (soak tests)."""

    def __init__(self) -> None:
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()
        self.random_rate = 0.0
        self.random_faults: list[Fault] = []
        self.rng = random.Random(0)
        self.injected: list[str] = []

    def inject(
        self, fault: Fault, *, times: int = 1, when: Callable[[Request], bool] | None = None
    ) -> None:
        with self._lock:
            self._queue.append(_Queued(fault, times, when or (lambda r: True)))

    def set_random(self, rate: float, faults: list[Fault], seed: int = 0) -> None:
        with self._lock:
            self.random_rate = rate
            self.random_faults = list(faults)
            self.rng = random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.random_rate = 0.0

    def pick(self, req: Request) -> Fault | None:
        with self._lock:
            for q in self._queue:
                if q.when(req):
                    q.times -= 1
                    if q.times <= 0:
                        self._queue.remove(q)
                    self.injected.append(q.fault.label)
                    return q.fault
            if self.random_rate and self.random_faults and self.rng.random() < self.random_rate:
                f = self.rng.choice(self.random_faults)
                self.injected.append(f.label)
                return f
        return None


class EmulatedApi:
    """Base for an emulated remote API. Subclasses set `name` and implement `handle`.
    `clock` is the emulator's own time: its `Date` header, its rate limits, its stamps."""

    name = "api"

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.faults = FaultInjector()
        self.recorder: Recorder | None = None
        self.lock = threading.RLock()  # emulators keep state; one request mutates at a time

    def handle(self, req: Request) -> Response:
        raise NotImplementedError

    def is_write(self, req: Request) -> bool:
        """Does this request change state? (dry-run tests fail on any.)"""
        return req.method not in ("GET", "HEAD", "OPTIONS")

    def malformed_body(self, req: Request) -> Response:
        return text_response("<html><body>502 Bad Gateway</body></html>", 200, "text/html")

    def fault_response(self, fault: Fault, req: Request) -> Response:
        if fault.kind == "rate_limit":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return json_response({"message": "Too Many Attempts."}, 429, headers)
        if fault.kind == "custom" and fault.response is not None:
            return fault.response(req)
        body = fault.body
        if body is None:
            body = {"message": "An error was encountered during processing."}
        if isinstance(body, bytes | str):
            raw = body.encode() if isinstance(body, str) else body
            return Response(fault.status, raw, {"Content-Type": "text/plain", **fault.headers})
        return json_response(body, fault.status, fault.headers)


def receive(
    api: EmulatedApi, req: Request, headers: dict[str, str]
) -> tuple[Fault | None, CallRecord]:
    """What every transport (a socket, or `loopsync.testing`'s in-process adapter) does
    first with a request: pick the fault to play, if any, and record the call (`headers`
    as sent, names in their own case)."""
    fault = api.faults.pick(req)
    rec = CallRecord(
        api.name,
        req.method,
        req.path,
        req.query,
        headers,
        req.body,
        None,
        time.time(),
        fault.label if fault else None,
        api.is_write(req),
    )
    if api.recorder is not None:
        api.recorder.add(rec)
    return fault, rec


def run_handler(api: EmulatedApi, req: Request) -> Response:
    """The emulator's answer, one request at a time; an emulator bug answers 500."""
    try:
        with api.lock:
            return api.handle(req)
    except Exception as exc:  # noqa: BLE001 - an emulator bug must show, not hang the client
        return json_response({"message": f"sandbox error: {exc!r}"}, 500)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The `Date` header reads the emulator's clock, as a real server's reads its own:
        # loopsync takes it as a second opinion on its own clock.
        if timestamp is None:
            now = self.server.api.clock.now()
            return email.utils.format_datetime(now.astimezone(UTC), usegmt=True)
        return super().date_time_string(timestamp)

    def _serve(self) -> None:
        api = self.server.api
        split = urlsplit(self.path)
        qlists = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            self.command,
            split.path,
            {k: v[-1] for k, v in qlists.items()},
            qlists,
            CaseInsensitiveDict(self.headers.items()),
            body,
            self.path,
        )
        fault, rec = receive(api, req, dict(self.headers.items()))
        kind = FAULT_KINDS[fault.kind] if fault is not None else None
        if fault is not None and kind is not None and kind.wait_first:
            time.sleep(fault.delay)
        resp = None
        if kind is None or kind.handler_runs:
            resp = run_handler(api, req)
        if fault is None or kind is None:
            assert resp is not None
            rec.status = self.answer(resp)
        else:
            rec.status = kind.send(self, api, fault, req, resp)

    def answer(self, resp: Response) -> int:
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        self.wfile.write(resp.body)
        return resp.status

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def head(self, resp: Response, extra: dict[str, str]) -> None:
        """Status line and headers of `resp` (minus its framing ones), plus `extra`."""
        self.send_response(resp.status)
        framing = {"content-length", "transfer-encoding", "content-encoding"}
        for k, v in resp.headers.items():
            if k.lower() not in framing:
                self.send_header(k, v)
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    # http.server dispatches on these names.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve  # noqa: N815


# -- what each fault kind does (the fault table) -------------------------------------------

# A drip lasts at most this long: clients are to cut a request off at a whole-request
# deadline, and a soak with hundreds of drips must stay minutes long, not hours.
DRIP_MAX_SECONDS = 1.8
DRIP_BYTES = 24  # bytes sent one at a time before the rest goes at once

Sender = Callable[[_Handler, "EmulatedApi", Fault, Request, "Response | None"], "int | None"]


def _send_fault_answer(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    return h.answer(api.fault_response(fault, req))


def _send_handler_answer(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    assert resp is not None
    return h.answer(resp)


def _send_nothing(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    h.drop()
    return None


def _send_malformed(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    return h.answer(api.malformed_body(req))


def _send_drip(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    """The whole answer, correctly framed, but its first bytes one at a time with pauses
    (each pause far below any read timeout; together up to DRIP_MAX_SECONDS)."""
    assert resp is not None
    total = min(fault.delay or DRIP_MAX_SECONDS, DRIP_MAX_SECONDS)
    head_bytes = resp.body[:DRIP_BYTES]
    pause = total / max(1, len(head_bytes))
    h.head(resp, {"Content-Length": str(len(resp.body))})
    h.wfile.flush()
    for i in range(len(head_bytes)):
        time.sleep(pause)
        h.wfile.write(head_bytes[i : i + 1])
        h.wfile.flush()
    h.wfile.write(resp.body[DRIP_BYTES:])
    return resp.status


def _send_truncated(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    """Content-Length says more than is sent; then the connection closes."""
    assert resp is not None
    sent = resp.body[: len(resp.body) // 2]
    h.head(resp, {"Content-Length": str(max(len(resp.body), len(sent) + 1))})
    h.wfile.write(sent)
    h.wfile.flush()
    h.drop()
    return resp.status


def _send_bad_chunked(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    """A first good chunk, then a chunk-size line that is not hex, then close."""
    assert resp is not None
    first = resp.body[: max(1, len(resp.body) // 3)]
    h.head(resp, {"Transfer-Encoding": "chunked"})
    h.wfile.write(b"%x\r\n%s\r\nzz;not-a-size\r\n" % (len(first), first))
    h.wfile.flush()
    h.drop()
    return resp.status


def _send_bad_gzip(
    h: _Handler, api: EmulatedApi, fault: Fault, req: Request, resp: Response | None
) -> int | None:
    """Says gzip; the gzip magic, then random bytes (a broken proxy, a cut cache entry)."""
    assert resp is not None
    garbage = b"\x1f\x8b\x08\x00" + os.urandom(max(16, len(resp.body) // 4))
    h.head(resp, {"Content-Encoding": "gzip", "Content-Length": str(len(garbage))})
    h.wfile.write(garbage)
    return resp.status


@dataclass(frozen=True)
class FaultKind:
    """One row of the fault table: whether the emulator's handler runs (so the request's
    effect happens, as when only the answer is lost), whether the fault's `delay` is slept
    first, and how the answer (if any) goes out."""

    handler_runs: bool
    send: Sender
    wait_first: bool = False


FAULT_KINDS: dict[str, FaultKind] = {
    "status": FaultKind(False, _send_fault_answer),
    "rate_limit": FaultKind(False, _send_fault_answer),
    "custom": FaultKind(False, _send_fault_answer),
    "reset": FaultKind(False, _send_nothing),
    "slow": FaultKind(True, _send_handler_answer, wait_first=True),
    "reset_after": FaultKind(True, _send_nothing),
    "malformed": FaultKind(True, _send_malformed),
    "drip": FaultKind(True, _send_drip),
    "truncated": FaultKind(True, _send_truncated),
    "bad_chunked": FaultKind(True, _send_bad_chunked),
    "bad_gzip": FaultKind(True, _send_bad_gzip),
}
# Kinds after which the emulator's handler has run (its effect happened).
HANDLER_RUNS = tuple(name for name, kind in FAULT_KINDS.items() if kind.handler_runs)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (killed worker, timed-out request) is expected here.
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def __init__(self, addr: tuple[str, int], api: EmulatedApi) -> None:
        self.api = api
        super().__init__(addr, _Handler)


class ApiServer:
    """Serves one EmulatedApi on 127.0.0.1 in a background thread."""

    def __init__(self, api: EmulatedApi, port: int = 0, host: str = "127.0.0.1") -> None:
        self.api = api
        self._server = _Server((host, port), api)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-{self.api.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
