"""Misbehaving HTTP servers on 127.0.0.1 for transport-fault tests (self-contained: the
standard library only, so other test modules may copy it).

`HostileServer(respond)` listens on 127.0.0.1 (port 0) and calls `respond(request, sock)`
for every request it reads; `respond` writes whatever bytes it likes (see the responders
below: `reply`, `redirect`, `drip`, `cut_body`, `bad_chunks`, `gzip_bomb`, ...). Every
request received is kept in `received` (raw head and body), so a test can assert that a
credential never arrived. The server stops itself after `lifetime` seconds, every loop is
bounded, and `stop()` ends it at once.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


@dataclass
class Received:
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    def contains(self, value: str) -> bool:
        """The value appears anywhere in the request (line, headers or body)."""
        return value.encode() in self.raw


Responder = Callable[[Received, socket.socket], None]


class HostileServer:
    def __init__(self, respond: Responder, *, lifetime: float = 60.0) -> None:
        self.respond = respond
        self.lifetime = lifetime
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        end = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # stopped
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            req = _read_request(conn)
            if req is None:
                return
            with self._lock:
                self.received.append(req)
            self.respond(req, conn)
        except OSError:
            pass  # the client hung up (as a deadline makes it do)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @property
    def stopped(self) -> threading.Event:
        return self._stop


def _read_request(conn: socket.socket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0") or 0), MAX_BODY)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Received(method, target, headers, body, raw=head + b"\r\n\r\n" + body)


# -- responders -------------------------------------------------------------------------------


def response_bytes(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    length: int | None = None,
) -> bytes:
    head = {
        "Content-Type": "application/json",
        "Connection": "close",
        "Content-Length": str(len(body) if length is None else length),
        **(headers or {}),
    }
    if "Transfer-Encoding" in head:
        head.pop("Content-Length", None)
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Responder:
    raw = (
        body
        if isinstance(body, bytes)
        else json.dumps(body if body is not None else {"ok": True}).encode()
    )

    def respond(_req: Received, sock: socket.socket) -> None:
        sock.sendall(response_bytes(status, raw, headers))

    return respond


def redirect(status: int, location: str | Callable[[Received], str]) -> Responder:
    def respond(req: Received, sock: socket.socket) -> None:
        where = location(req) if callable(location) else location
        sock.sendall(response_bytes(status, b"", {"Location": where}))

    return respond


def drip(payload: bytes, *, every: float = 0.2, limit: float = 30.0) -> Responder:
    """Send `payload` one byte at a time, `every` seconds apart (status line included
    when the payload starts with it); gives up after `limit` seconds."""

    def respond(_req: Received, sock: socket.socket) -> None:
        end = time.monotonic() + limit
        for i in range(len(payload)):
            if time.monotonic() > end:
                return
            sock.sendall(payload[i : i + 1])
            time.sleep(every)

    return respond


def cut_body(sent: bytes = b'{"returns": [', promised: int = 5000) -> Responder:
    """Promise `promised` bytes, send fewer, hang up."""

    def respond(_req: Received, sock: socket.socket) -> None:
        sock.sendall(response_bytes(200, sent, length=promised))

    return respond


def bad_chunks() -> Responder:
    def respond(_req: Received, sock: socket.socket) -> None:
        sock.sendall(
            response_bytes(
                200, b'5\r\n{"a":\r\nzz\r\nnot hex\r\n0\r\n\r\n', {"Transfer-Encoding": "chunked"}
            )
        )

    return respond


def bad_gzip() -> Responder:
    body = b"\x1f\x8b\x08\x00" + b"this is not deflate data at all" * 10
    return reply(200, body, {"Content-Encoding": "gzip"})


_BOMBS: dict[tuple[int, bool], bytes] = {}


def gzip_bomb_bytes(mib: int, *, members: bool = True) -> bytes:
    """A gzip body that inflates to `mib` MiB of zeros, about a thousandth the size:
    `members` gzip members of 1 MiB each (cheap to build), else one member."""
    key = (mib, members)
    if key not in _BOMBS:
        if members:
            _BOMBS[key] = gzip.compress(bytes(1024 * 1024), compresslevel=9) * mib
        else:
            comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            zeros = bytes(1024 * 1024)
            _BOMBS[key] = b"".join([comp.compress(zeros) for _ in range(mib)] + [comp.flush()])
    return _BOMBS[key]


def gzip_bomb(mib: int = 256, *, members: bool = True) -> Responder:
    return reply(200, gzip_bomb_bytes(mib, members=members), {"Content-Encoding": "gzip"})


def gzipped(body: Any, *, encoding: str = "gzip") -> Responder:
    raw = json.dumps(body).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    return reply(200, packed, {"Content-Encoding": encoding})


def huge_length(length: int = 10**12) -> Responder:
    def respond(_req: Received, sock: socket.socket) -> None:
        sock.sendall(response_bytes(200, b"{", length=length))
        time.sleep(2)  # then nothing: a client that waits for the body is stuck

    return respond


def sequence(*responders: Responder) -> Responder:
    """The n-th request gets the n-th responder (the last one repeats)."""
    count = [0]
    lock = threading.Lock()

    def respond(req: Received, sock: socket.socket) -> None:
        with lock:
            i = min(count[0], len(responders) - 1)
            count[0] += 1
        responders[i](req, sock)

    return respond
