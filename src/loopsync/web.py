"""`serve --http HOST:PORT`: health, metrics and a status page. The only module with an HTTP
server (the standard library's ThreadingHTTPServer; no framework).

Routes:
  /healthz               200 while the scheduler's heartbeat is fresh, else 503 (liveness);
                         200 while `serve` drains its cycles (no beats then, the process lives)
  /readyz                503 when any merchant is STALLED or BLOCKED or `serve` is stopping,
                         else 200
  /metrics               Prometheus text (loopsync.metrics)
  /                      the status page: merchants, verdicts, backlog, last cycles,
                         grouped problems, an SVG chart, a search box for a return
  /merchants/<m>         one merchant's page
  /returns?q=<id>        a return's story (Loop return id or RMA number)
  /api/merchants, /api/merchants/<m>, /api/returns/<id>, /api/outcomes/<m>: JSON twins
  POST /webhooks/{loop,shiphero,generic}/<m>   webhook intake (loopsync.inbox): 200 only
                         once the event is committed to the merchant's inbox; 401 unsigned
                         or badly signed, and alike for an unknown merchant or sender or no
                         secret for the sender (no status tells which merchants exist),
                         400 unreadable or stale, 405 not POST, 411 no length, 413 over
                         webhooks.MAX_BODY (refused before reading), 415 not JSON, 503 busy
                         or the state file cannot record it; no detail in any answer

In a sharded fleet (loopsync.peers) a webhook for a merchant this pod knows but another
shard owns is forwarded once, as received (body, content type and signature headers only),
to the owner at LOOPSYNC_SHARD_PEERS; the answer is the owner's 2xx or 4xx, else 503 (no
template, owner down, slow, redirecting or failing), so the sender retries. The forwarder
does not check the signature (the owner does, with the same secret, clock and replay
window as for its own traffic); it refuses locally only what needs no secret: method,
framing, size, content type, and a request with no signature header at all (401), so an
unsigned flood is not amplified onto the owner. A forwarded request for a merchant the
receiving pod does not own is answered 401, never forwarded again.

Webhooks need no bearer token (senders cannot send one): the signature is their only
authentication. At most WEBHOOK_SLOTS requests are read at once, each body within
WEBHOOK_READ_SECONDS; the rest get 503 at once, so a flood cannot hold every thread.

Auth: bound to loopback, everything is open. Bound to any other address, the page and the
JSON need `Authorization: Bearer <LOOPSYNC_HTTP_TOKEN>` (compared in constant time) and
`serve` refuses to start without the variable; /healthz, /readyz and /metrics stay open
(probes and Prometheus scrape without a secret; they show no ids or personal data).

What is shown: ids, states, reasons and counts only, never a secret or a customer's
personal data (the stored snapshot is never read here). Every text is HTML-escaped;
reasons also pass through `redaction.redact` and `redaction.mask_personal` (an email a
remote echoed in an error text is masked).

All state reading is in the "data" section below (read-only, no migration, like `status`).
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import requests
import structlog

from loopsync import listen, peers, report, status, webhooks
from loopsync.config import MerchantConfig
from loopsync.errors import StateError, UsageError
from loopsync.inbox import WebhookService
from loopsync.listen import listener_address
from loopsync.metrics import CONTENT_TYPE as METRICS_TYPE
from loopsync.metrics import Metrics, StateFigures
from loopsync.redaction import MIN_LENGTH, mask_personal, public_obj, redact, register
from loopsync.state import EffectKind, EffectStatus, Stage
from loopsync.timeutil import Clock, SystemClock, iso

log = structlog.get_logger("loopsync.web")

TOKEN_ENV = "LOOPSYNC_HTTP_TOKEN"  # noqa: S105 - the variable's name, not a secret
# Liveness: the scheduler ticks every HEARTBEAT_SECONDS; three missed ticks is dead.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_STALE = 3 * HEARTBEAT_SECONDS
CHART_HOURS = 72
MAX_QUERY = 100  # a return id or RMA number is far shorter
# A client that sends nothing, or stops mid-request, is dropped after this many seconds of
# silence; without it each idle socket held a thread (and a kept-alive connection) forever.
IDLE_TIMEOUT = 30.0
WEBHOOK_SLOTS = 16
# Connections served at once (a thread each); more are closed at once, so a flood of idle
# or dripping clients cannot make threads without bound (each may hold one IDLE_TIMEOUT).
MAX_CONNECTIONS = 128
WEBHOOK_READ_SECONDS = 10.0  # a whole webhook body; senders answer within 10 s (ShipHero)
ACCEPTED_BODY = b'{"code":"200","Status":"Success"}'  # ShipHero's expected reply
# A forward to the owning pod: connect and read within a few seconds, well inside the
# sender's own timeout (ShipHero's 10 s), so the sender gets our 503 and retries.
FORWARD_TIMEOUT = (2.0, 5.0)
FORWARD_HEADERS = (
    "Content-Type",
    webhooks.LOOP_HEADER,
    webhooks.SHIPHERO_HEADER,
    webhooks.GENERIC_HEADER,
    webhooks.GENERIC_TIMESTAMP,
)


# -- address and auth (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


ADDRESS_ENV = listen.ADDRESS_ENV  # the variable `serve` reads its address from


def parse_address(text: str) -> Address:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses). A bad one is a UsageError."""
    where = listener_address(text)
    if where is None:
        raise UsageError(f"--http {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9108)")
    return Address(*where)


def token_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


NOT_READY = report.ALERTING  # /readyz fails on these verdicts


@dataclass(frozen=True)
class Found:
    """A searched return's story and the merchant whose state file holds it."""

    merchant: str
    story: report.ReturnStory


# -- data: every read of a state file is here (loopsync.status, read-only) ---------------------


class Data:
    """The views the pages render, read through `loopsync.status` (read-only, no
    migration, no secret needed), one look per request."""

    def __init__(
        self, configs: Callable[[], Sequence[MerchantConfig]], clock: Clock | None = None
    ) -> None:
        self.configs = configs
        self.clock = clock or SystemClock()

    def merchants(self) -> list[report.MerchantView]:
        return [self.merchant(cfg) for cfg in self.configs()]

    def find(self, name: str) -> MerchantConfig | None:
        return next((c for c in self.configs() if c.merchant == name), None)

    def merchant(self, cfg: MerchantConfig) -> report.MerchantView:
        return status.merchant_view(cfg, now=self.clock.now())

    def story(self, query: str) -> Found | None:
        for cfg in self.configs():
            try:
                story = status.return_story(cfg, query)
            except StateError:  # that merchant's file is unreadable: its verdict says so
                continue
            if story is not None:
                return Found(cfg.merchant, story)
        return None

    def outcomes(self, cfg: MerchantConfig, hours: int = CHART_HOURS) -> list[report.HourCount]:
        try:
            return status.outcomes_by_hour(cfg, hours=hours, now=self.clock.now())
        except StateError:
            return []

    def figures(self) -> Iterator[StateFigures]:
        for cfg in self.configs():
            view = self.merchant(cfg)
            effects = {(k, s): n for k, by in view.effects.items() for s, n in by.items()}
            yield StateFigures(
                view.merchant,
                view.backlog,
                effects,
                str(view.verdict),
                cfg.every.total_seconds(),
                view.last_ok_at.timestamp() if view.last_ok_at else None,
                view.webhooks.missed if view.webhooks else None,
                _epoch(view.webhooks.last_event_at if view.webhooks else None),
            )


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


# -- rendering (pure; every text escaped) -------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(mask_personal(redact(str(value))), quote=True)


STYLE = """body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left}.runs td:nth-child(-n+2){white-space:nowrap}.v-OK{color:#176a2b}
.v-DEGRADED{color:#a66300}.v-STALLED,.v-BLOCKED,.v-INTERRUPTED{color:#b00020}h2{margin-top:1.5rem}.muted{color:#777}"""


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}"
        f"</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"
        f"{search_form()}{body}</body></html>"
    )


def search_form(value: str = "") -> str:
    return (
        "<form action=/returns method=get role=search><label>Return id or RMA "
        f'<input id=q name=q value="{esc(value)}" maxlength={MAX_QUERY}></label> '
        "<button id=search type=submit>Show its story</button></form>"
    )


def _when(moment: datetime | None, now: datetime) -> str:
    return f"{iso(moment)} ({report.ago(moment, now)})" if moment else "never"


def merchant_section(m: report.MerchantView, chart: list[report.HourCount]) -> str:
    link = f"/merchants/{quote(m.merchant, safe='')}"
    due = f"; next cycle {esc(_when(m.next_due, m.now))}" if m.next_due else ""
    parts = [
        f'<section class=merchant data-merchant="{esc(m.merchant)}">',
        f'<h2><a href="{esc(link)}">{esc(m.merchant)}</a> '
        f'<span class="verdict v-{esc(m.verdict.replace(" ", "-"))}">{esc(m.verdict)}'
        f"</span></h2><p>{esc(m.warehouse)}: {esc(m.reason)}{due}</p>",
    ]
    backlog = "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in sorted(m.backlog.items())
    )
    parts.append(f"<table class=backlog><tr><th>stage</th><th>returns</th></tr>{backlog}</table>")
    parts.append(svg_chart(chart))
    runs = "".join(
        f"<tr><td>{esc(iso(r.started_at) or '')}</td>"
        f"<td>{esc(iso(r.ended_at) or '')}</td><td>{esc(r.status)}</td>"
        f"<td>{esc(_counts_text(r.counts))}</td><td>{r.errors}</td>"
        f"<td>{esc('; '.join(f'{f.stage}: {f.reason}' for f in r.stage_failures))}"
        "</td></tr>"
        for r in m.recent_runs
    )
    parts.append(
        "<h3>Last cycles</h3><table class=runs><tr><th>started</th><th>ended</th>"
        f"<th>status</th><th>counts</th><th>errors</th><th>stage failures</th></tr>"
        f"{runs}</table>"
    )
    parts.append(_problems_html(m.problems))
    parts.append(_webhooks_html(m))
    parts.append("</section>")
    return "".join(parts)


def _problems_html(problems: Sequence[report.ProblemGroup]) -> str:
    if not problems:
        return "<h3>Problems</h3><p class=muted>none</p>"
    rows = "".join(
        f'<tr class="{"resolved" if p.resolved else "open"}"><td>{p.count}</td>'
        f"<td>{esc(p.stage)}</td><td>{esc(p.reason)}</td>"
        f"<td>{esc(', '.join(p.recent_ids))}</td><td>{esc(iso(p.first_seen))}</td>"
        f"<td>{esc(iso(p.last_seen))}</td>"
        f"<td>{'resolved' if p.resolved else 'open'}</td></tr>"
        for p in problems
    )
    return (
        "<h3>Problems</h3><table class=problems><tr><th>count</th><th>stage</th>"
        "<th>reason</th><th>recent ids</th><th>first</th><th>last</th><th>state</th></tr>"
        f"{rows}</table>"
    )


def _webhooks_html(m: report.MerchantView) -> str:
    hooks = m.webhooks
    if hooks is None:
        return ""
    refused = ", ".join(f"{k} {n}" for k, n in sorted(hooks.refused.items())) or "none"
    missed = f"{hooks.missed} (recent: {', '.join(hooks.missed_recent)})" if hooks.missed else "0"
    rows = (
        ("health", "healthy" if hooks.healthy else "not healthy"),
        ("silent senders", ", ".join(hooks.silent) or "none"),
        ("last event", _when(hooks.last_event_at, m.now)),
        ("accepted", f"{hooks.accepted} ({hooks.unhandled} not handled yet)"),
        ("refused", refused),
        ("found by polling, missed by webhooks", missed),
    )
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<h3>Webhooks</h3><table class=webhooks>{body}</table>"


def _counts_text(counts: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)


def svg_chart(bars: Sequence[report.HourCount], width: int = 720, height: int = 120) -> str:
    """Returns processed (green) and flagged (orange) per hour, server-rendered."""
    if not bars:
        return ""
    top = max([1] + [b.processed + b.flagged for b in bars])
    step = width / len(bars)
    rects = []
    for i, b in enumerate(bars):
        x = i * step
        hp = height * b.processed / top
        hf = height * b.flagged / top
        title = f"{iso(b.hour)}: {b.processed} processed, {b.flagged} flagged"
        rects.append(
            f"<g><title>{esc(title)}</title>"
            f'<rect x="{x:.1f}" y="{height - hp:.1f}" width="{step * 0.8:.1f}" '
            f'height="{hp:.1f}" fill="#2e8b57"/>'
            f'<rect x="{x:.1f}" y="{height - hp - hf:.1f}" '
            f'width="{step * 0.8:.1f}" height="{hf:.1f}" fill="#e08a00"/></g>'
        )
    total_p = sum(b.processed for b in bars)
    total_f = sum(b.flagged for b in bars)
    return (
        f'<figure><svg class=chart role=img width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="returns per hour">'
        f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>'
        f"{''.join(rects)}</svg><figcaption>Returns per hour, last {len(bars)} hours: "
        f"{total_p} processed (green), {total_f} flagged (orange)</figcaption></figure>"
    )


def story_html(found: Found | None, query: str) -> str:
    if found is None:
        return f"<p id=story class=muted>No return or RMA {esc(query)} in any state file.</p>"
    story = found.story
    rows = "".join(
        f"<tr><td>{esc(iso(e.at) or '')}</td><td>{esc(e.kind)}</td><td>{esc(e.text)}</td></tr>"
        for e in story.events
    )
    return (
        f"<section id=story><h2>Return {esc(story.return_id)}</h2><p>merchant "
        f"{esc(found.merchant)}; RMA {esc(story.rma_id or 'none')}; stage "
        f"<b class=stage>{esc(story.stage)}</b>; now: "
        f"{esc(story.wait_reason or 'nothing to wait for (done)')}</p>"
        "<table class=events><tr><th>when</th><th>what</th><th>detail</th></tr>"
        f"{rows}</table></section>"
    )


# -- the server ---------------------------------------------------------------------------------


class Heartbeat:
    """The scheduler's tick; /healthz is 200 while it is fresh."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._at = clock.monotonic()

    def beat(self) -> None:
        self._at = self.clock.monotonic()

    def alive(self) -> bool:
        return self.clock.monotonic() - self._at <= HEARTBEAT_STALE


class _Handler(BaseHTTPRequestHandler):
    server: StatusServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IDLE_TIMEOUT)  # read per connection: tests may lower it

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one debug line, no query string (a search holds a return id)."""
        # `path` is unset when the request line itself was refused (too long, malformed):
        # reading it raised, so the client got no answer and stderr a raw traceback.
        path = urlsplit(getattr(self, "path", "")).path
        log.debug("http.request", path=path, status=args[1:2])

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            self._route(path, parse_qs(url.query))
        except ConnectionError:  # the client hung up: no one to answer, nothing went wrong
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - one bad request never stops the listener
            log.error("web.failed", path=path, error=f"{type(exc).__name__}")
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def do_HEAD(self) -> None:
        """As GET without the body (`_finish` leaves it out): probes and uptime checkers
        often send HEAD."""
        self.do_GET()

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        srv = self.server
        if path == "/healthz":
            alive = srv.draining or srv.heartbeat.alive()
            self._text(200 if alive else 503, "ok\n" if alive else "scheduler not ticking\n")
        elif path == "/readyz":
            self._ready()
        elif path == "/metrics":
            self._send(200, METRICS_TYPE, srv.metrics.render())
        elif path.startswith(webhooks.PATH_PREFIX):
            self._hook_refused(None, webhooks.Refusal.METHOD)
        elif not self._authorised():
            self.send_response(401)
            self.send_header("WWW-Authenticate", "Bearer")
            self._finish("text/plain; charset=utf-8", b"bearer token required\n")
        elif path.startswith("/api/"):
            self._api(path.removeprefix("/api"))
        else:
            self._page(path, query)

    # -- webhooks (loopsync.inbox decides and stores; here only HTTP) ----------------------
    def do_POST(self) -> None:
        url = urlsplit(self.path)
        where = webhooks.split_path(url.path)
        if where is None or self.server.hooks is None:
            self._hook_refused(None, webhooks.Refusal.METHOD)
            return
        slots = self.server.hook_slots
        if not slots.acquire(blocking=False):
            self._hook_refused(where, webhooks.Refusal.BUSY)
            return
        try:
            self._webhook(where, self.path)
        except (ConnectionError, TimeoutError):  # cut short, too slow: no one to answer
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - one bad request never stops the listener
            log.error("webhook.failed", error=type(exc).__name__)
            self.close_connection = True
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")
        finally:
            slots.release()
            self.connection.settimeout(IDLE_TIMEOUT)

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue`: an oversized or badly framed webhook is refused before
        its body is invited (not after a 100 Continue)."""
        where = webhooks.split_path(urlsplit(self.path).path)
        if self.command == "POST" and where is not None:
            how = webhooks.framing(
                self.headers.get_all("Content-Length") or [],
                self.headers.get("Transfer-Encoding"),
                webhooks.MAX_BODY,
            )
            if isinstance(how, webhooks.Refusal):
                self._hook_refused(where, how)
                return False
        return super().handle_expect_100()

    def do_PUT(self) -> None:
        self._hook_refused(None, webhooks.Refusal.METHOD)

    def do_DELETE(self) -> None:
        self.do_PUT()

    def do_PATCH(self) -> None:
        self.do_PUT()

    def _webhook(self, where: tuple[str, str], target: str) -> None:
        hooks = self.server.hooks
        assert hooks is not None
        if not webhooks.json_content(self.headers.get("Content-Type")):
            self._hook_refused(where, webhooks.Refusal.CONTENT_TYPE)
            return
        body = self._hook_body(webhooks.MAX_BODY)
        if isinstance(body, webhooks.Refusal):
            self._hook_refused(where, body)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        router = self.server.router
        away = router.elsewhere(where[1]) if router is not None else None
        if away is not None:
            self._hook_forward(where, target, headers, body, away)
            return
        decision = hooks.receive(webhooks.Request(where[0], where[1], target, headers, body))
        if isinstance(decision, webhooks.Refuse):
            self._hook_refused(where, decision.reason, counted=True)
        else:
            self._send(200, "application/json", ACCEPTED_BODY)

    def _hook_forward(
        self,
        where: tuple[str, str],
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        away: peers.Elsewhere,
    ) -> None:
        """Another shard's merchant: its owner's answer (see the module docstring)."""
        if peers.FORWARDED_HEADER.lower() in headers:
            self._hook_refused(where, webhooks.Refusal.UNKNOWN)  # never forwarded twice
            return
        if not signed(where[0], headers):
            self._hook_refused(where, webhooks.Refusal.UNSIGNED)
            return
        answer = forward(away, target, headers, body, self.server.peer_session)
        log.info("webhook.forwarded", source=where[0], shard=away.index, status=answer)
        if answer is not None and 200 <= answer < 300:
            self._send(answer, "application/json", ACCEPTED_BODY)
        elif answer is not None and 400 <= answer < 500:
            self.close_connection = True
            self._send(answer, "text/plain; charset=utf-8", b"refused\n")
        else:
            self._hook_refused(where, webhooks.Refusal.BUSY)

    def _hook_refused(
        self, where: tuple[str, str] | None, reason: webhooks.Refusal, *, counted: bool = False
    ) -> None:
        """The refusal's status and one word; the connection closes (a body may be unread)."""
        hooks = self.server.hooks
        if hooks is not None and not counted:
            hooks.refused(where[0] if where else "other", where[1] if where else None, reason)
        self.close_connection = True
        self.send_response(webhooks.STATUS[reason])
        if reason is webhooks.Refusal.METHOD:
            self.send_header("Allow", "POST")
        if reason is webhooks.Refusal.BUSY:
            self.send_header("Retry-After", "5")
        self.send_header("Connection", "close")
        self._finish("text/plain; charset=utf-8", b"refused\n")

    def _hook_body(self, cap: int) -> bytes | webhooks.Refusal:
        """The body, never reading more than `cap` bytes nor for longer than
        WEBHOOK_READ_SECONDS: Content-Length checked before reading, chunked read piece by
        piece; both headers at once (a smuggling trick) or neither is refused."""
        how = webhooks.framing(
            self.headers.get_all("Content-Length") or [],
            self.headers.get("Transfer-Encoding"),
            cap,
        )
        if isinstance(how, webhooks.Refusal):
            return how
        return (
            self._reader(cap).chunked()
            if how == webhooks.CHUNKED
            else self._reader(cap).exactly(how)
        )

    def _reader(self, cap: int) -> _BodyReader:
        return _BodyReader(self.rfile, self.connection, cap, self.server.data.clock)

    def _authorised(self) -> bool:
        token = self.server.token
        return token is None or token_ok(self.headers.get("Authorization"), token)

    def _ready(self) -> None:
        if self.server.draining:
            self._text(503, "shutting down\n")
            return
        bad = [
            f"{m.merchant}: {m.verdict}"
            for m in self.server.data.merchants()
            if m.verdict in NOT_READY
        ]
        self._text(503 if bad else 200, ("\n".join(bad) if bad else "ready") + "\n")

    def _api(self, path: str) -> None:
        data = self.server.data
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["merchants"]:
            self._json(200, [m.to_json() for m in data.merchants()])
            return
        cfg = data.find(parts[1]) if len(parts) == 2 else None
        if parts[0] == "merchants" and cfg is not None:
            self._json(200, data.merchant(cfg).to_json())
        elif parts[0] == "outcomes" and cfg is not None:
            self._json(200, [b.to_json() for b in data.outcomes(cfg)])
        elif parts[0] == "returns" and len(parts) == 2:
            found = data.story(parts[1][:MAX_QUERY])
            self._json(
                200 if found else 404,
                {"merchant": found.merchant, **found.story.to_json()}
                if found
                else {"error": "no such return or RMA"},
            )
        else:
            self._json(404, {"error": "not found"})

    def _page(self, path: str, query: dict[str, list[str]]) -> None:
        data = self.server.data
        if path == "/":
            body = "".join(
                merchant_section(data.merchant(c), data.outcomes(c)) for c in data.configs()
            )
            self._html(200, page("loopsync status", body or "<p>No merchants.</p>"))
        elif (
            path.startswith("/merchants/")
            and (cfg := data.find(unquote(path.removeprefix("/merchants/")))) is not None
        ):
            self._html(
                200,
                page(
                    f"loopsync: {cfg.merchant}",
                    merchant_section(data.merchant(cfg), data.outcomes(cfg)),
                ),
            )
        elif path == "/returns":
            q = (query.get("q") or [""])[0].strip()[:MAX_QUERY]
            found = data.story(q) if q else None
            self._html(
                200 if found or not q else 404, page("loopsync: return story", story_html(found, q))
            )
        else:
            self._html(404, page("not found", "<p>Nothing here.</p>"))

    # -- answers --------------------------------------------------------------------------
    def _text(self, status: int, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _html(self, status: int, text: str) -> None:
        self._send(status, "text/html; charset=utf-8", text.encode())

    def _json(self, status: int, value: Any) -> None:
        self._send(
            status,
            "application/json",
            redact(json.dumps(public_obj(value), indent=1, default=str)).encode(),
        )

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self._finish(ctype, body)

    def _finish(self, ctype: str, body: bytes) -> None:
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _BodyReader:
    """Reads a request body within a cap and a deadline, never more: each receive waits
    at most the time left (read1 and single bytes: one receive per call), so a client
    dripping bytes is cut off at the deadline, not after a timeout per byte."""

    PIECE = 64 * 1024
    LINE = 1024

    def __init__(self, rfile: Any, sock: Any, cap: int, clock: Clock) -> None:
        self.rfile, self.sock, self.cap, self.clock = rfile, sock, cap, clock
        self.deadline = clock.monotonic() + WEBHOOK_READ_SECONDS

    def _wait_budget(self) -> None:
        left = self.deadline - self.clock.monotonic()
        if left <= 0:
            raise ConnectionError("webhook body too slow")
        self.sock.settimeout(left)

    def exactly(self, size: int) -> bytes:
        parts, left = [], size
        while left > 0:
            self._wait_budget()
            piece = self.rfile.read1(min(left, self.PIECE))
            if not piece:
                raise ConnectionError("webhook body cut short")
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    def _line(self) -> bytes:
        line = bytearray()
        while len(line) < self.LINE:
            self._wait_budget()
            byte = self.rfile.read(1)
            if not byte:
                raise ConnectionError("webhook body cut short")
            line += byte
            if byte == b"\n":
                return bytes(line)
        raise ConnectionError("chunk line too long")

    def chunked(self) -> bytes | webhooks.Refusal:
        body = bytearray()
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16) if size_text.isalnum() else -1
            except ValueError:
                size = -1
            if size < 0:
                return webhooks.Refusal.LENGTH
            if size == 0:
                break
            if len(body) + size > self.cap:
                return webhooks.Refusal.TOO_LARGE
            body += self.exactly(size + 2)[:-2]  # the chunk, then its CRLF
        for _ in range(32):  # trailer lines, then the empty line
            if self._line() in (b"\r\n", b"\n"):
                return bytes(body)
        return webhooks.Refusal.LENGTH


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: Address,
        data: Data,
        metrics: Metrics,
        heartbeat: Heartbeat,
        token: str | None,
        hooks: WebhookService | None = None,
        router: peers.Router | None = None,
    ) -> None:
        self.data, self.metrics, self.heartbeat, self.token = data, metrics, heartbeat, token
        self.hooks, self.router = hooks, router
        self.peer_session = peer_session()
        self.hook_slots = threading.BoundedSemaphore(WEBHOOK_SLOTS)
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.draining = False  # set once by Listener.draining, read by every handler thread
        super().__init__((address.host, address.port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.shutdown_request(request)  # over MAX_CONNECTIONS: closed, no thread made
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a route (a client reset mid-request): one log
        line, not socketserver's raw traceback on stderr."""
        log.debug("web.connection_failed", error=type(sys.exc_info()[1]).__name__)


def check_token(address: Address, env: dict[str, str] | Any) -> str | None:
    """The token the page needs; None on loopback without one. Non-loopback without a
    token is a UsageError (serve refuses to start), and so is a token that is short (the
    floor configkit sets for every secret) or that a header cannot carry as sent (non-ASCII
    or spaced: the header is read as Latin-1, so it would never match). A token in use is
    masked at every exit, like every configured secret."""
    token = (env.get(TOKEN_ENV) or "").strip() or None
    if token is None and not address.loopback:
        raise UsageError(
            f"--http {address.host}:{address.port} is not loopback: set "
            f"{TOKEN_ENV} (the status page's bearer token) or bind 127.0.0.1"
        )
    if token is not None:
        if (
            len(token) < MIN_LENGTH
            or not (token.isascii() and token.isprintable())
            or (" " in token)
        ):
            raise UsageError(
                f"{TOKEN_ENV}: use at least {MIN_LENGTH} printable ASCII characters "
                "without spaces (a bearer token)"
            )
        register(token)
    return token


class Listener:
    """Started and stopped by `scheduling.serve`: the server on a daemon thread."""

    def __init__(
        self,
        address: Address,
        configs: Callable[[], Sequence[MerchantConfig]],
        *,
        token: str | None,
        clock: Clock | None = None,
        hooks: WebhookService | None = None,
        router: peers.Router | None = None,
    ) -> None:
        clock = clock or SystemClock()
        self.hooks = hooks
        self.data = Data(configs, clock)
        self.metrics = Metrics(
            self.data.figures,
            kinds=[k.value for k in EffectKind],
            statuses=[s.value for s in EffectStatus],
            stages=[s.value for s in Stage],
        )
        self.heartbeat = Heartbeat(clock)
        self.clock = clock
        self.server = StatusServer(
            address, self.data, self.metrics, self.heartbeat, token, hooks, router
        )
        # Polled every 0.1 s for shutdown (the default 0.5 s would slow every stop).
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.1,), name="loopsync-http", daemon=True
        )

    def start(self) -> None:
        self.metrics.subscribe()
        self._thread.start()
        if self.hooks is not None:
            self.hooks.start()  # events stored before a crash are handled now
        log.info("serve.http", port=self.server.port)

    def beat(self) -> None:
        self.heartbeat.beat()
        self.metrics.beat(self.clock.now().timestamp())

    def draining(self) -> None:
        """`serve` is stopping and waits for running cycles (up to its grace): not ready for
        anything new, but alive, though the scheduler no longer beats."""
        self.server.draining = True
        if self.hooks is not None:
            self.hooks.stop.set()  # handling ends with the cycles; stored events wait

    def stop(self) -> None:
        if self.hooks is not None:
            self.hooks.close()
        self.metrics.unsubscribe()
        self.server.shutdown()
        self.server.server_close()
        self.server.peer_session.close()


# The paths a platform's probes and scrapers use, open without the token (see `_route`):
# deploy/kubernetes names them, and tests/test_kubernetes.py checks the manifests against
# these and that each one answers.
LIVENESS_PATH, READINESS_PATH, METRICS_PATH = "/healthz", "/readyz", "/metrics"


# -- forwarding to the owning shard (loopsync.peers decides where) ---------------------------


def peer_session() -> requests.Session:
    """Nothing from the environment: a proxy variable would send the webhook (signature
    and all) to the proxy's host, ~/.netrc would add credentials."""
    session = requests.Session()
    session.trust_env = False
    session.headers.clear()  # no User-Agent, Accept or Connection of our own: as received
    return session


_SIGNED_BY = {
    webhooks.Source.LOOP.value: webhooks.LOOP_HEADER,
    webhooks.Source.SHIPHERO.value: webhooks.SHIPHERO_HEADER,
    webhooks.Source.GENERIC.value: webhooks.GENERIC_HEADER,
}


def signed(source: str, headers: Mapping[str, str]) -> bool:
    """The sender's signature header is present (checked by the owner, not here)."""
    header = _SIGNED_BY.get(source)
    return header is not None and header.lower() in headers


def forward(
    away: peers.Elsewhere,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    session: requests.Session,
) -> int | None:
    """The owner's status for this request sent once, or None (no template, a target that
    cannot be forwarded, or no answer in FORWARD_TIMEOUT). No redirect is followed, the
    answer's body is never read, and only the body and FORWARD_HEADERS are sent."""
    url = away.template.url(away.index, target) if away.template is not None else None
    if url is None:
        return None
    sent = {h: headers[h.lower()] for h in FORWARD_HEADERS if h.lower() in headers}
    sent[peers.FORWARDED_HEADER] = "1"
    try:
        with session.post(
            url,
            data=body,
            headers=sent,
            timeout=FORWARD_TIMEOUT,
            allow_redirects=False,
            stream=True,
        ) as resp:
            return resp.status_code
    except requests.RequestException as exc:
        log.warning("webhook.forward_failed", shard=away.index, error=type(exc).__name__)
        return None
