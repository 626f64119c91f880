"""The connector contract: what every warehouse connector must do, checked through the real
engine against the kind's emulator in the sandbox (Loop and the warehouse on 127.0.0.1,
sharing one FakeClock; nothing sleeps).

Each check is a plain function of a `ConnectorKind` and a scratch folder, so a connector
author runs the whole suite from their own pytest file:

    @pytest.mark.parametrize("check", CHECKS, ids=check_ids())
    def test_my_connector_keeps_the_contract(check, tmp_path):
        reason = check.skip_reason(MY_KIND)
        if reason:
            pytest.skip(reason)
        check.run(MY_KIND, tmp_path)

or `run_contract(kind, tmp)` for every check at once. A check that fails raises
`AssertionError` saying what the connector did instead; a check that does not apply to a
kind (a lost create for a watch-only kind) says why in `skip_reason`, never silently.

The checks (`CHECKS`):

- `pushes_once`: an open return gets exactly one RMA, and a second cycle creates nothing;
  a watch-only kind (`creates_rmas=False`) links the RMA its own app made, creating none.
- `lost_create_is_looked_up`: the create's answer is lost (the emulator ran it, then the
  connection dropped); the next cycle finds the RMA and sends no second create.
- `malformed_record_is_held`: the emulator's `poison(return_id)` serves an RMA no reader
  may trust; that return is held with a reason (`loopsync status` names it), nothing is
  processed or flagged for it, and the good return beside it is processed.
- `unknown_fields_are_ignored`: every JSON object and XML element both remotes send
  carries fields no connector knows; the flow is unchanged.
- `receipts_decide_once`: full, short and damaged receipts lead to process, flag, flag,
  each exactly once.
- `dry_run_writes_nothing`: a dry run sends no write to either remote (the sandbox's
  `Recorder`) and changes no file (state file, folders).
- `pagination_is_bounded`: Loop's list and the kind's own listing walk never end (same
  cursor, or ever more pages); the cycle ends, bounded by the page cap, and `loopsync
  status` shows the unfinished walk with its reason.

Endless pages come from the emulator when it offers `endless_pages(limit)` (see
`EndlessPaging`); the four built-in emulators get it here, from a response rewrite per
protocol (`_BUILTIN_ENDLESS`), until each emulator carries its own. They end after
RUNAWAY requests, so a connector with no page cap fails on its request count instead of
hanging the suite.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from loopsync.sandbox.server import EmulatedApi, Fault, Request, Response
from loopsync.status import merchant_status, render_status
from loopsync.testing.clock import FakeClock
from loopsync.testing.sandbox import Sandbox
from loopsync.timeutil import SystemClock

if TYPE_CHECKING:
    from loopsync.config import MerchantConfig
    from loopsync.connectors import ConnectorKind
    from loopsync.cycle import CycleResult
    from loopsync.sandbox.base import WarehouseEmulator
    from loopsync.sandbox.server import CallRecord

__all__ = [
    "CHECKS",
    "Check",
    "CheckOutcome",
    "ContractOptions",
    "EndlessPaging",
    "World",
    "add_unknown_fields",
    "check_ids",
    "run_contract",
    "world",
]

CLOCK_START = "2026-06-01T12:00:00Z"
# A key no connector reads, in every object a remote sends in `unknown_fields_are_ignored`.
UNKNOWN_KEY = "x_contract_unknown_field"
UNKNOWN_VALUE: dict[str, Any] = {"nested": [1, "two", None], "flag": True}
FOREVER = 10**6  # "every matching request" for FaultInjector.inject
# Endless pages end after this many listing requests, so a connector without a page cap
# or a repeat guard fails the check (too many requests) instead of hanging the suite.
RUNAWAY = 300


@dataclass(frozen=True)
class ContractOptions:
    """How the sandbox is set up. `transport`: "http", or "folder" for a kind whose
    emulator offers `folder_config` (generic). `max_pages`: the warehouse's page cap in
    `pagination_is_bounded` (small: the check reads at most a few dozen pages)."""

    transport: str = "http"
    max_pages: int = 4


# -- one check's world -------------------------------------------------------------------------


@dataclass
class World:
    """A started sandbox for one kind, its merchant config and the shared FakeClock."""

    kind: ConnectorKind
    sandbox: Sandbox
    clock: FakeClock
    cfg: MerchantConfig
    tmp: Path

    @property
    def warehouse(self) -> WarehouseEmulator:
        return self.sandbox.warehouse

    @property
    def watch_only(self) -> bool:
        return not self.kind.creates_rmas

    def open_returns(self, n: int) -> list[str]:
        """n new open returns to a mapped destination whose orders the warehouse knows."""
        return [str(r["id"]) for r in self.sandbox.seed(n, states_weights=[("open", 1)])]

    def cycle(self, *, dry_run: bool = False, seconds: float = 60) -> CycleResult:
        self.clock.advance(seconds)
        return self.sandbox.run_cycle(self.cfg, dry_run=dry_run)

    def actions(self, return_id: str) -> list[str]:
        return self.sandbox.loop.actions_for(return_id)

    def rmas(self, return_id: str) -> int:
        return self.warehouse.rma_count(return_id)

    def writes(self, api: str | None = None) -> list[CallRecord]:
        """Write calls recorded so far (api: the emulator's name; None: both remotes)."""
        return self.sandbox.recorder.calls(api, writes=True)

    def status_text(self) -> str:
        return render_status(merchant_status(self.cfg))

    def receive(self, return_id: str, scenario: str) -> None:
        expect(
            self.warehouse.receive(return_id, scenario),
            f"the emulator has no RMA to receive for return {return_id}",
        )


@contextmanager
def world(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None, **config: Any
) -> Iterator[World]:
    """A started sandbox for `kind` (stopped on exit); `config` goes to
    `Sandbox.merchant_config` (e.g. `warehouse_extra`)."""
    options = options or ContractOptions()
    clock = FakeClock(CLOCK_START)
    folder = tmp / "3pl" if options.transport == "folder" else None
    sandbox = Sandbox(
        kind.name, clock=clock, transport=options.transport, folder_root=folder
    ).start()
    try:
        # Seeded returns are at most 3 days old: 4 days of Loop windows, not 30.
        config.setdefault("start_days", 4)
        cfg = sandbox.merchant_config(tmp / "config", **config)
        yield World(kind, sandbox, clock, cfg, tmp)
    finally:
        sandbox.stop()


def expect(ok: bool, message: str) -> None:
    """The contract's one way to fail: an AssertionError saying what happened instead."""
    if not ok:
        raise AssertionError(message)


def _linked_or_pushed(result: CycleResult, w: World) -> int:
    return result.counts.linked if w.watch_only else result.counts.pushed


def _no_repeated_write(w: World) -> None:
    """No write reached the warehouse twice with the same body (a create sent again; a
    connector that creates in several writes may send the missing ones, never a repeat)."""
    bodies = [c.body for c in w.writes(w.warehouse.name)]
    repeated = {b[:120] for b in bodies if bodies.count(b) > 1}
    expect(not repeated, f"the same write reached the warehouse twice: {sorted(repeated)}")


def _push(w: World, ids: list[str]) -> None:
    """One cycle in which every return in `ids` gets its RMA (or is linked to it)."""
    result = w.cycle()
    made = _linked_or_pushed(result, w)
    expect(made == len(ids), f"{made} of {len(ids)} returns got an RMA: {result.stage_errors}")


# -- the checks ----------------------------------------------------------------------------------


def pushes_once(kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None) -> None:
    """An open return gets exactly one RMA; the next cycle creates nothing."""
    with world(kind, tmp, options) as w:
        (rid,) = w.open_returns(1)
        _push(w, [rid])
        expect(w.rmas(rid) == 1, f"return {rid} has {w.rmas(rid)} RMAs after one cycle")
        writes = len(w.writes(w.warehouse.name))
        if w.watch_only:
            expect(writes == 0, f"watch-only {kind.name} wrote {writes} times to the warehouse")
        _no_repeated_write(w)
        again = w.cycle()
        expect(
            again.counts.pushed == 0 and again.counts.linked == 0,
            f"a second cycle pushed {again.counts.pushed}, linked {again.counts.linked}",
        )
        expect(
            w.rmas(rid) == 1 and len(w.writes(w.warehouse.name)) == writes,
            f"a second cycle wrote to the warehouse; return {rid} has {w.rmas(rid)} RMAs",
        )


def lost_create_is_looked_up(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """The create ran but its answer was lost: looked up, never sent twice."""
    with world(kind, tmp, options) as w:
        (rid,) = w.open_returns(1)
        emulator = w.warehouse
        # The emulator runs the create, then the connection drops: the answer is lost.
        emulator.faults.inject(Fault("reset_after"), when=emulator.is_write)
        first = w.cycle()
        expect(
            "reset_after" in emulator.faults.injected,
            f"{kind.name} sent no write for the emulator to lose the answer of",
        )
        expect(w.rmas(rid) == 1, f"the lost create left {w.rmas(rid)} RMAs")
        second = w.cycle()
        linked = (
            first.counts.linked + second.counts.linked + first.counts.pushed + second.counts.pushed
        )
        expect(linked >= 1, f"the lost create was never resolved: {second.stage_errors}")
        expect(w.rmas(rid) == 1, f"{w.rmas(rid)} RMAs after a lost create answer")
        _no_repeated_write(w)
        w.receive(rid, "full")
        w.cycle()
        expect(
            w.actions(rid) == ["process"],
            f"the RMA found after a lost create was acted on as {w.actions(rid)}",
        )


def malformed_record_is_held(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """A record no reader may trust holds back its own return, with a reason; the other
    return goes on."""
    with world(kind, tmp, options) as w:
        good, bad = w.open_returns(2)
        _push(w, [good, bad])
        w.receive(good, "full")
        expect(w.warehouse.poison(bad), f"the emulator could not poison return {bad}")
        for _ in range(2):  # held, and still held on the next cycle
            w.cycle()
        expect(w.actions(good) == ["process"], f"good return acted on as {w.actions(good)}")
        expect(w.actions(bad) == [], f"malformed return {bad} was acted on: {w.actions(bad)}")
        text = w.status_text()
        # A return held at poll ("<id>  poll  <reason>"), or a record of its own rejected
        # with the reason (a folder's receipt file names the return in its file name).
        expect(
            any(bad in line and re.search(r"\bpoll\b", line) for line in text.splitlines()),
            f"loopsync status gives no reason for held return {bad}:\n{text}",
        )


def unknown_fields_are_ignored(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """Fields no connector knows, in every object either remote sends, change nothing."""
    with world(kind, tmp, options) as w:
        add_unknown_fields(w.sandbox.loop)
        add_unknown_fields(w.warehouse)
        ids = w.open_returns(2)
        _push(w, ids)
        w.receive(ids[0], "full")
        w.receive(ids[1], "short")
        result = w.cycle()
        expect(result.ok, f"unknown fields broke the cycle: {result.stage_errors}")
        for api in (w.sandbox.loop, w.warehouse):  # (a folder warehouse gets no request)
            asked = w.sandbox.recorder.calls(api.name)
            expect(
                "custom" in api.faults.injected or not asked,
                f"{api.name} answered no request with unknown fields",
            )
        seen = [w.actions(rid) for rid in ids]
        expect(
            seen == [["process"], ["flag"]],
            f"with unknown fields full/short were acted on as {seen}",
        )


def receipts_decide_once(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """Full, short and damaged receipts: process, flag, flag, each exactly once."""
    with world(kind, tmp, options) as w:
        ids = w.open_returns(3)
        _push(w, ids)
        for rid, scenario in zip(ids, ("full", "short", "damaged"), strict=True):
            w.receive(rid, scenario)
        decided = w.cycle()
        expect(
            decided.counts.processed == 1 and decided.counts.flagged == 2,
            f"processed {decided.counts.processed}, flagged {decided.counts.flagged}: "
            f"{decided.stage_errors}",
        )
        w.cycle()
        seen = [w.actions(rid) for rid in ids]
        expect(
            seen == [["process"], ["flag"], ["flag"]], f"full/short/damaged were acted on as {seen}"
        )
        notes = [len(w.sandbox.loop.notes_for(rid)) for rid in ids]
        expect(all(n >= 1 for n in notes), f"a return acted on without a note: {notes}")


def dry_run_writes_nothing(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """A dry run sends no write to either remote and changes no file."""
    with world(kind, tmp, options) as w:
        linked = w.open_returns(1)
        _push(w, linked)  # a state file with an RMA in it
        w.receive(linked[0], "full")  # something to act on...
        fresh = w.open_returns(1)  # ...and something to push
        before_files, before_writes = _files(w.tmp), len(w.writes())
        result = w.cycle(dry_run=True)
        expect(result.ok, f"the dry run failed: {result.stage_errors}")
        expect(bool(result.planned), "the dry run planned nothing: it saw nothing to do")
        writes = w.writes()[before_writes:]
        expect(
            not writes,
            "a dry run wrote: " + ", ".join(f"{c.api} {c.method} {c.path}" for c in writes),
        )
        changed = sorted(set(_files(w.tmp).items()) ^ set(before_files.items()))
        expect(not changed, f"a dry run changed files: {changed}")
        expect(
            w.actions(linked[0]) == [] and w.rmas(fresh[0]) == (1 if w.watch_only else 0),
            "a dry run acted or created an RMA",
        )


def pagination_is_bounded(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> None:
    """Listings that never end (Loop's, the warehouse's) end at the guard or the page
    cap; the cycle finishes and `loopsync status` says which walk stopped and why."""
    options = options or ContractOptions()
    extra = {} if options.transport == "folder" else {"max_pages": options.max_pages}
    # One return a Loop page: two open returns make a walk of two pages to corrupt.
    with world(kind, tmp, options, warehouse_extra=extra, page_size=1) as w:
        loop_endless(w.sandbox.loop, RUNAWAY)
        ids = w.open_returns(2)
        w.cycle()
        walks = _unfinished_walks(w)
        expect(
            walks.get("loop.returns.open") == "repeated_token",
            f"loopsync status does not show Loop's endless walk:\n{w.status_text()}",
        )
        for rid in ids:  # whatever the first page gave: an RMA to poll
            if w.warehouse.has_rma(rid):
                w.receive(rid, "full")
        w.open_returns(1)  # and a return to push: the look-up walks of the push stage
        endless = _endless_for(w)
        if endless is None:  # a folder transport: no remote listing to walk
            return
        endless.endless_pages(RUNAWAY)
        before = len(w.sandbox.recorder.calls())
        for _ in range(2):
            w.cycle()
        calls = len(w.sandbox.recorder.calls()) - before
        # Two cycles, each walk ending at its guard or its cap: far below this unless a
        # walk ran away.
        expect(calls < 200, f"{calls} requests in two cycles of endless pagination")
        mine = {
            name: why for name, why in _unfinished_walks(w).items() if not name.startswith("loop.")
        }
        expect(
            bool(mine),
            f"loopsync status does not show {kind.name}'s endless walk:\n{w.status_text()}",
        )


def _unfinished_walks(w: World) -> dict[str, str]:
    """Walk name -> why it ended, as `loopsync status` shows them."""
    return dict(re.findall(r"unfinished walk (.+?): (\w+) after", w.status_text()))


@dataclass(frozen=True)
class Check:
    """One guarantee of the contract: `run(kind, tmp, options)` raises AssertionError
    when the connector breaks it; `skip_reason(kind, options)` says why it does not
    apply (None: it applies)."""

    name: str
    run: Callable[[ConnectorKind, Path, ContractOptions | None], None]
    skip_when: Callable[[ConnectorKind, ContractOptions], str | None] = field(
        default=lambda kind, options: None
    )

    def skip_reason(
        self, kind: ConnectorKind, options: ContractOptions | None = None
    ) -> str | None:
        return self.skip_when(kind, options or ContractOptions())


def _watch_only_skip(kind: ConnectorKind, options: ContractOptions) -> str | None:
    if not kind.creates_rmas:
        return (
            f"{kind.name} is watch-only (creates_rmas=False): it sends no create whose "
            "answer could be lost; pushes_once checks it links the RMA its app made"
        )
    if options.transport == "folder":
        return (
            "the folder transport's create is a file written atomically (temp, fsync, "
            "rename): there is no answer to lose; a create whose record was lost is found "
            "in outbox/archive (test_once_sandbox's lost-state test)"
        )
    return None


CHECKS: tuple[Check, ...] = (
    Check("pushes_once", pushes_once),
    Check("lost_create_is_looked_up", lost_create_is_looked_up, _watch_only_skip),
    Check("malformed_record_is_held", malformed_record_is_held),
    Check("unknown_fields_are_ignored", unknown_fields_are_ignored),
    Check("receipts_decide_once", receipts_decide_once),
    Check("dry_run_writes_nothing", dry_run_writes_nothing),
    Check("pagination_is_bounded", pagination_is_bounded),
)


def check_ids() -> list[str]:
    return [c.name for c in CHECKS]


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    seconds: float
    skipped: str | None = None  # why it does not apply; None: it ran and passed


def run_contract(
    kind: ConnectorKind, tmp: Path, options: ContractOptions | None = None
) -> list[CheckOutcome]:
    """Every check against `kind`, each in its own sub-folder of `tmp`. Raises the first
    failure's AssertionError (naming the check)."""
    outcomes = []
    clock = SystemClock()
    for check in CHECKS:
        reason = check.skip_reason(kind, options)
        started = clock.monotonic()  # only measures the suite; no decision reads it
        if reason is None:
            folder = tmp / check.name
            folder.mkdir(parents=True, exist_ok=True)
            try:
                check.run(kind, folder, options)
            except AssertionError as exc:
                raise AssertionError(f"{kind.name}: {check.name}: {exc}") from exc
        outcomes.append(CheckOutcome(check.name, clock.monotonic() - started, reason))
    return outcomes


# -- files ----------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime_ns), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


# -- unknown fields ------------------------------------------------------------------------------


def add_unknown_fields(api: EmulatedApi) -> None:
    """From now on every answer of `api` carries fields no reader knows: UNKNOWN_KEY in
    every JSON object, an extra child in every XML element that has children. Answers in
    other formats pass unchanged. The emulator's handler runs as usual."""

    def respond(req: Request) -> Response:
        with api.lock:
            resp = api.handle(req)
        return replace(resp, body=_with_unknown_fields(resp.body))

    api.faults.inject(Fault("custom", response=respond), times=FOREVER)


def _with_unknown_fields(body: bytes) -> bytes:
    text = body.lstrip()
    if text.startswith((b"{", b"[")):
        try:
            return json.dumps(_json_extra(json.loads(body))).encode()
        except ValueError:
            return body
    if text.startswith(b"<"):
        return _xml_extra(body)
    return body


def _json_extra(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _json_extra(v) for k, v in value.items()}
        out[UNKNOWN_KEY] = UNKNOWN_VALUE
        return out
    if isinstance(value, list):
        return [_json_extra(v) for v in value]
    return value


def _xml_extra(body: bytes) -> bytes:
    try:
        root = ET.fromstring(body)  # noqa: S314 - our own emulator's answer, no DTD
    except ET.ParseError:
        return body
    for element in list(root.iter()):
        if len(element):
            namespace = (
                element.tag[: element.tag.index("}") + 1] if element.tag.startswith("{") else ""
            )
            ET.SubElement(element, f"{namespace}XContractUnknownField").text = "ignored"
    return cast("bytes", ET.tostring(root, encoding="utf-8", xml_declaration=True))


# -- endless pages -------------------------------------------------------------------------------


@runtime_checkable
class EndlessPaging(Protocol):
    """An emulator that can play a server whose listings never end."""

    def endless_pages(self, limit: int) -> None:
        """For the next `limit` listing requests every listing says another page follows
        (same cursor or new); then listings end as usual (a connector that follows
        forever is caught by its request count, not by a hang)."""


def loop_endless(loop: EmulatedApi, limit: int) -> None:
    """Loop's list answers name the cursor just used as the next page (for `limit`
    list requests)."""

    def respond(req: Request) -> Response:
        with loop.lock:
            resp = loop.handle(req)
        data = _json_or_none(resp.body)
        if isinstance(data, dict) and req.query.get("cursor"):
            # Every page after the first names the very page it is as the next one.
            host = req.headers.get("Host") or "127.0.0.1"
            data["nextPageUrl"] = f"http://{host}{req.raw_path}"
            return replace(resp, body=json.dumps(data).encode())
        return resp

    loop.faults.inject(
        Fault("custom", response=respond),
        times=limit,
        when=lambda req: req.method == "GET" and req.path.endswith("/list"),
    )


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class _Rewrite:
    """Endless pages for an emulator without the hook: its answers to `when` requests
    pass through `edit(request) -> Response`."""

    def __init__(
        self,
        api: EmulatedApi,
        when: Callable[[Request], bool],
        edit: Callable[[EmulatedApi, Request], Response],
    ) -> None:
        self.api, self.when, self.edit = api, when, edit

    def endless_pages(self, limit: int) -> None:
        api, edit = self.api, self.edit
        self.api.faults.inject(
            Fault("custom", response=lambda req: edit(api, req)), times=limit, when=self.when
        )


def _handled(api: EmulatedApi, req: Request) -> Response:
    with api.lock:
        return api.handle(req)


def _shiphero_endless(api: EmulatedApi, req: Request) -> Response:
    """The server ignores `after` (serves the first page again) and every connection
    says a next page follows, after an ever-new cursor."""
    payload = _json_or_none(req.body)
    after = None
    if isinstance(payload, dict) and isinstance(payload.get("variables"), dict):
        after = payload["variables"].pop("after", None)
        req = replace(req, body=json.dumps(payload).encode())
    resp = _handled(api, req)
    data = _json_or_none(resp.body)
    next_cursor = f"{after or 'endless'}+"

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            info = value.get("pageInfo")
            if isinstance(info, dict):
                info.update(hasNextPage=True, endCursor=next_cursor)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    return replace(resp, body=json.dumps(data).encode())


def _page_of(req: Request) -> int:
    try:
        return int(req.query.get("page") or 1)
    except ValueError:
        return 1


def _xoro_endless(api: EmulatedApi, req: Request) -> Response:
    """Every ASN page holds a new ASN of no return's, and no total: pages never end."""
    resp = _handled(api, req)
    data = _json_or_none(resp.body)
    if isinstance(data, dict):
        page = _page_of(req)
        found = data.get("Data")
        rows: list[Any] = found if isinstance(found, list) else []
        data.update(
            Data=[*rows, {"AsnHeaderData": {"AsnNumber": f"ENDLESS-{page}"}}],
            TotalPages=None,
            Result=True,
        )
        return replace(resp, body=json.dumps(data).encode())
    return resp


def _generic_endless(api: EmulatedApi, req: Request) -> Response:
    """The receipt feed always names a next page."""
    resp = _handled(api, req)
    data = _json_or_none(resp.body)
    if isinstance(data, dict):
        data["next_page"] = _page_of(req) + 1
        return replace(resp, body=json.dumps(data).encode())
    return resp


_PAGE_NO = re.compile(rb"(<(?:\w+:)?PageNo>)\s*\d+\s*(</)")
_TOTAL = re.compile(rb"(TotalCount>)\d+")


def _peoplevox_endless(api: EmulatedApi, req: Request) -> Response:
    """The server ignores PageNo (always page 1) and says there are 99,999 rows."""
    first = replace(req, body=_PAGE_NO.sub(rb"\g<1>1\g<2>", req.body))
    resp = _handled(api, first)
    return replace(resp, body=_TOTAL.sub(rb"\g<1>99999", resp.body))


def _is_graphql(req: Request) -> bool:
    return req.path == "/graphql"


def _is_listing_path(part: str) -> Callable[[Request], bool]:
    return lambda req: req.method == "GET" and part in req.path


def _is_peoplevox_read(req: Request) -> bool:
    return b"PageNo" in req.body


# The built-in emulators' endless pages, until each emulator offers `endless_pages(limit)`
# (the emulators belong to the sandbox; this table is to move there and then go).
_BUILTIN_ENDLESS: dict[
    str, tuple[Callable[[Request], bool], Callable[[EmulatedApi, Request], Response]]
] = {
    "shiphero": (_is_graphql, _shiphero_endless),
    "xoro": (_is_listing_path("getasn"), _xoro_endless),
    "generic": (_is_listing_path("/receipts"), _generic_endless),
    "peoplevox": (_is_peoplevox_read, _peoplevox_endless),
}


def _endless_for(w: World) -> EndlessPaging | None:
    """The warehouse's endless-pages hook; None for the folder transport (it reads a
    folder). An emulator without one fails the check: a connector with no listing walk
    says so with an `endless_pages` that does nothing."""
    if isinstance(w.warehouse, EndlessPaging):
        return w.warehouse
    if getattr(w.warehouse, "root", None) is not None:
        return None
    if w.kind.name not in _BUILTIN_ENDLESS:
        raise AssertionError(
            f"{type(w.warehouse).__name__} has no endless_pages(limit) "
            "hook to play a listing that never ends (see EndlessPaging)"
        )
    when, edit = _BUILTIN_ENDLESS[w.kind.name]
    return _Rewrite(w.warehouse, when, edit)
