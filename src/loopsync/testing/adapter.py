"""An in-process transport: `requests` talks to an emulator's `handle` without a socket.

    session = requests.Session()
    url = mount(session, LoopEmulator(clock=clock, api_keys={"key"}))
    client = LoopClient(f"{url}/api/v1", "key", clock=clock, session=session)

Mounted on a session under the emulator's own URL (`http://<name>.in-process.invalid`,
a name that can never resolve), it wins over `HttpClient`'s socket adapter for that
origin only (requests picks the longest matching prefix), so `http.py` needs no change and
every request still goes through `HttpClient.request`: retries, limits, body reading and
error mapping are the real ones. What does not happen is the socket: no server thread, no
port, no shutdown wait (~0.1 s per `ApiServer`), which is what makes the fast tests fast.

The same pipeline as `ApiServer` (`sandbox.server.receive` and `run_handler`): the call
is recorded, the fault table is consulted, the emulator answers under its lock, its clock
gives the `Date` header. Faults that are about answers play here too ("status",
"rate_limit", "custom", "malformed"; "reset" and "reset_after" arrive as the connection
error a dropped socket gives requests). Faults that are about bytes on a socket ("slow",
"drip", "truncated", "bad_chunked", "bad_gzip") raise `SocketFaultInProcess`: a test of
the transport itself serves the emulator with `ApiServer`.
"""

from __future__ import annotations

import email.utils
import io
from collections.abc import Mapping
from datetime import UTC
from http import HTTPStatus
from http.client import RemoteDisconnected
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict as HeaderDict
from requests.utils import get_encoding_from_headers
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError

from loopsync.errors import SocketFaultInProcess
from loopsync.sandbox.server import (
    CaseInsensitiveDict,
    EmulatedApi,
    Request,
    Response,
    receive,
    run_handler,
)

# Fault kinds whose answer is made here; the others need a socket.
_ANSWER_FAULTS = frozenset({"status", "rate_limit", "custom", "malformed"})
_DROP_FAULTS = frozenset({"reset", "reset_after"})


def in_process_url(api: EmulatedApi) -> str:
    """The base URL an in-process emulator answers at (never resolvable by DNS)."""
    return f"http://{api.name}.in-process.invalid"


def mount(session: requests.Session, api: EmulatedApi) -> str:
    """Route `session`'s requests for the emulator's URL to it, in process; that URL."""
    url = in_process_url(api)
    session.mount(f"{url}/", InProcessAdapter(api))
    return url


class InProcessAdapter(BaseAdapter):
    """A `requests` transport adapter that hands each request to `api.handle`."""

    def __init__(self, api: EmulatedApi) -> None:
        super().__init__()
        self.api = api

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        req, headers = _emulator_request(request)
        fault, rec = receive(self.api, req, headers)
        kind = fault.kind if fault is not None else None
        if kind is not None and kind not in _ANSWER_FAULTS | _DROP_FAULTS:
            raise SocketFaultInProcess(
                f"fault {kind!r} needs a socket: serve {self.api.name} "
                "with sandbox.server.ApiServer"
            )
        if fault is not None and kind in ("status", "rate_limit", "custom"):
            resp = self.api.fault_response(fault, req)
        else:
            handled = run_handler(self.api, req) if kind != "reset" else None
            if kind in _DROP_FAULTS:
                # What requests raises when the server closes without answering.
                lost = RemoteDisconnected("Remote end closed connection without response")
                raise requests.ConnectionError(
                    ProtocolError("Connection aborted.", lost), request=request
                )
            assert handled is not None
            resp = self.api.malformed_body(req) if kind == "malformed" else handled
        rec.status = resp.status
        return self._response(request, resp)

    def close(self) -> None:
        pass  # nothing held: no connections, no pool

    def _response(self, request: requests.PreparedRequest, resp: Response) -> requests.Response:
        headers = {**resp.headers, "Content-Length": str(len(resp.body))}
        headers.setdefault(
            "Date", email.utils.format_datetime(self.api.clock.now().astimezone(UTC), usegmt=True)
        )
        raw = HTTPResponse(
            body=io.BytesIO(resp.body),
            headers=headers,
            status=resp.status,
            preload_content=False,
            decode_content=False,
        )
        out = requests.Response()
        out.status_code = resp.status
        out.headers = HeaderDict(headers)
        out.raw = raw
        out.reason = _reason(resp.status)
        out.url = request.url or ""
        out.request = request
        out.encoding = get_encoding_from_headers(out.headers)
        return out


def _emulator_request(request: requests.PreparedRequest) -> tuple[Request, dict[str, str]]:
    """The emulator's view of a prepared request, and its headers as sent."""
    split = urlsplit(request.url or "")
    qlists = parse_qs(split.query, keep_blank_values=True)
    if request.body is None or isinstance(request.body, bytes):
        body = request.body or b""
    elif isinstance(request.body, str):
        body = request.body.encode("utf-8")
    else:
        raise TypeError("a streamed request body is not supported in process")
    headers = {
        k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    target = split.path + (f"?{split.query}" if split.query else "")
    req = Request(
        request.method or "GET",
        split.path,
        {k: v[-1] for k, v in qlists.items()},
        qlists,
        CaseInsensitiveDict(headers),
        body,
        target,
    )
    return req, headers


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
