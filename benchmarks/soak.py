#!/usr/bin/env python
"""Crash-and-fault soak: the real worker, SIGKILLed at random moments, against a sandbox
that injects faults into every emulated API while goods keep arriving.

    .venv/bin/python -m benchmarks.soak                       # 300 kills, every connector
    .venv/bin/python -m benchmarks.soak --kills 10 --max-requests 20 --max-delay 4 \
        --no-poison --no-transport-faults                     # about the test's classic run
    .venv/bin/python -m benchmarks.soak --connectors shiphero,xoro --kills 40 --seed 3
    .venv/bin/python -m benchmarks.soak --kills 300 --record  # + a row in BENCHMARKS.md

The last line printed is a one-line summary to paste in BENCHMARKS.md or the README.

For each connector (shiphero, peoplevox, xoro, generic over HTTP, generic over folders):

1. A `Sandbox` (emulated Loop + warehouse on 127.0.0.1, real clock) is seeded with returns,
   some of them not eligible on purpose (not open, unmapped destination, order unknown).
2. Kill phase: the worker runs as a subprocess (`python -m loopsync run --once`, or
   `serve` about a third of the time) and gets SIGKILL once the sandbox has seen a number
   of its requests drawn by the seed (1..`--max-requests`), and its armed fault has gone
   off, or after `--max-delay` seconds without a request (asleep in a back-off, or
   between `serve` cycles): by count, not by time, so a soak does the same work on a slow
   machine. Runs that end first count as completed runs. Meanwhile every emulated API
   fails at random (`faults.set_random`): 5xx, 429 with and without Retry-After, answers
   slower than the 2 s client timeout, bodies that are not JSON/XML, connections reset
   before and after the handler ran, the transport faults of the real internet (answers
   dripped a byte at a time for 1.5 s, bodies cut short of their Content-Length, broken
   chunked encoding, `Content-Encoding: gzip` over garbage; each run also gets one of
   these armed at a chosen request), 429 bursts, and each warehouse's own failures
   (ShipHero code-30 throttling; PeopleVox "Invalid Session", expired sessions and
   throttle faults; Xoro `Result: false` and phantom empty pages; the generic 3PL's
   re-sent receipts and duplicated receipt files). Poison records: three Loop returns no
   reader may trust (overflowing timestamps, an id in full-width digits, a lone surrogate
   in a SKU: `sandbox/poison.py`) among the first pages, and one warehouse record made
   unreadable (`WarehouseEmulator.poison`). A thread plays the world, one event every few
   requests: new Loop returns arrive and the warehouse receives goods (random scenario).
   Webhooks (`sandbox/webhooks.py`, unless `--no-webhooks`): Loop's return events and the
   warehouse's (ShipHero's Return Update, the generic 3PL's receipt event) go to the
   worker's intake (`serve --http`, on one port for the whole soak; a `run --once` or
   killed worker does not answer, and the sender retries, then gives up), with their own
   faults (WEBHOOK_FAULTS): lost, duplicated, delayed (reordered), and forged (an extra
   delivery signed with a wrong secret; one accepted is a violation).
3. Clean phase: faults off, the warehouse finishes every return it has, and the worker
   runs cycles until nothing is left to do (at most 8).
4. Invariants, from the sandbox's own call records and the state file: every eligible
   return has exactly one RMA (ineligible ones none); every return the warehouse finished
   got exactly one process or flag, the one its scenario calls for (unfinished ones none);
   no return is lost (every Loop return is in the state store); no cursor passed unread
   work (no window left open, and every Loop return updated at or before its state's
   `done_until` was read in that version); no note is repeated; a poison Loop return gets
   no RMA and no Loop action, and the return whose warehouse record is poison no Loop
   action; no worker run crashed. A crashed run is one whose log holds a traceback (an
   uncaught exception, or one logged with its traceback: loopsync logs none for errors it
   handles) or that the state file records as crashed; they are counted by exception line,
   which names what the worker failed to handle.

It prints kills survived, faults injected by kind, returns, duplicates, losses, crashed
runs by exception line, and exits 1 on any violation.

Settings the soak changes, and why (all printed): the sandbox's rate limits are off (the
Xoro emulator answers 429 above 3 concurrent requests, PeopleVox allows 15 requests in 15
s) and the client limits are loosened (`warehouse.rate_limit` 1000/1 s for PeopleVox,
`requests_per_second: 10` for Xoro, `credits_max: 20000` and `credits_per_second: 2000`
for ShipHero's client-side credit mirror), because the soak runs in real time and each run
is short; the client timeouts are 2 s (`loop.timeout`, `warehouse.timeout`) so slow answers
time out quickly. Clean-phase cycles run the worker with the engine's PROCESS_SETTLE (the
10 minutes loopsync gives Loop's process queue before it repeats a process whose answer
was lost) set to 0: the sandbox Loop processes at once, so the cycle that would come 10
minutes later is run now.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/soak.py`, or loaded by file path
    sys.path.insert(0, str(REPO))

from benchmarks.common import git_commit, machine  # noqa: E402
from loopsync.connectors import variant_name, variants  # noqa: E402
from loopsync.sandbox.poison import loop_poison_returns  # noqa: E402
from loopsync.sandbox.server import Fault, Request, Response, json_response  # noqa: E402
from loopsync.sandbox.webhooks import DeliveryPolicy, WebhookFaults  # noqa: E402
from loopsync.state import Store  # noqa: E402
from loopsync.testing import Sandbox  # noqa: E402
from loopsync.testing.latency import free_port  # noqa: E402
from loopsync.timeutil import SystemClock, parse_timestamp  # noqa: E402

# Every variant of every registered kind: "generic" (HTTP) and "generic-folder", ...
VARIANTS = {variant_name(kind, transport): (kind, transport) for kind, transport in variants()}
CONNECTORS = tuple(VARIANTS)
SCENARIOS = ("full", "full", "short", "over", "damaged", "cancelled")
# "poison": the warehouse's record of it is unreadable; it is held, never acted on.
EXPECTED_ACTION = {
    "full": "process",
    "short": "flag",
    "over": "flag",
    "damaged": "flag",
    "cancelled": None,
    "poison": None,
}
CLIENT_TIMEOUT = 2.0
SLOW = CLIENT_TIMEOUT + 0.5  # a "slow" answer comes after the client gave up
DRIP = 1.5  # a dripped answer's length: each pause far below the timeout
INITIAL_RETURNS = 16
POISON_FIRST_ID = 48_000_001  # Loop poison returns; no seeded return comes near
# A worker is killed once the sandbox has seen a number of its requests drawn from
# 1..MAX_REQUESTS (a kill lands at a point of the cycle, whatever the machine's speed), or,
# failing that, after IDLE_KILL seconds without a request (a worker asleep in a back-off or
# between `serve` cycles). Before its first request a worker gets STARTUP_GRACE.
MAX_REQUESTS = 30
IDLE_KILL = 5.0
STARTUP_GRACE = 60.0
KILL_JITTER = 0.05  # up to this long after the chosen request: between requests
MAX_ATTEMPTS_PER_KILL = 10  # runs that end before their kill point count too; bounded
WORLD_EVERY = (3, 10)  # the world acts once per this many sandbox requests
POISON_AFTER_EVENTS = 5  # the world poisons one warehouse record after this many
MAX_CLEAN_CYCLES = 8
CLEAN_CYCLE_LIMIT = 300  # seconds
# The clean-phase worker: `loopsync run --once` with Loop's process-queue grace at 0.
SETTLED_WORKER = (
    "import datetime, sys, loopsync.effects as effects; "
    "effects.PROCESS_SETTLE = datetime.timedelta(0); "
    "from loopsync.cli import main; sys.exit(main(sys.argv[1:]))"
)
# Webhook delivery meanwhile (issue 13): Loop's and the warehouse's events go to the worker's
# intake (`serve --http`; a `run --once` worker, or a killed one, does not answer, so the
# sender retries and gives up: a lost webhook), with faults of their own. A forgery is an
# extra delivery signed with a wrong secret: the intake must refuse every one.
WEBHOOK_FAULTS = WebhookFaults(lose=0.1, duplicate=0.15, delay=0.2, max_delay=2.0, forge=0.1)
WEBHOOK_POLICY = DeliveryPolicy(base=0.2, cap=2.0, timeout=5.0)
# The webhook phase (after the kills): one serve worker listening while the world acts this
# many times, one act per WEBHOOK_EVENT_EVERY seconds (a timer: an idle worker makes no
# requests to count), then SIGKILL, whatever it is doing.
WEBHOOK_EVENTS = 12
WEBHOOK_EVENT_EVERY = 0.3
WEBHOOK_DRAIN = 2.0  # seconds the sender gets to deliver what is queued before the kill
# More forgeries while a worker listens, so every soak sees some refused (10 % of a few
# dozen events could be none).
PHASE_FORGE = 0.3
SETTINGS_NOTE = (
    "sandbox rate limits off; client limits loosened (PeopleVox rate_limit "
    "1000/1s, Xoro requests_per_second 10, ShipHero credits 20000 at 2000/s); "
    "client timeouts 2s; clean cycles run with PROCESS_SETTLE=0"
)


# -- faults ---------------------------------------------------------------------------------


@dataclass
class NamedFault(Fault):
    """A Fault whose label names it (the sandbox labels every custom fault "custom")."""

    name: str = ""

    @property
    def label(self) -> str:
        return self.name or super().label


def transport_faults() -> list[Fault]:
    """The transport faults of the real internet (issue 15): each run gets one of these at
    a chosen request too, so every kind is met however few kills a soak has."""
    return [Fault("drip", delay=DRIP), Fault("truncated"), Fault("bad_chunked"), Fault("bad_gzip")]


TRANSPORT_KINDS = tuple(f.kind for f in transport_faults())


def common_faults() -> list[Fault]:
    return [
        Fault("status", status=500),
        Fault("status", status=503),
        Fault("status", status=502, body="<html>Bad Gateway</html>"),
        Fault("rate_limit"),
        Fault("rate_limit", retry_after=1),
        Fault("slow", delay=SLOW),
        Fault("malformed"),
        Fault("reset"),
        Fault("reset_after"),
        *transport_faults(),
    ]


def shiphero_faults(sb: Sandbox) -> list[Fault]:
    wh: Any = sb.warehouse
    out: list[Fault] = []
    for status in (200, 429):
        f = wh.throttle_fault(status=status, seconds=1)
        out.append(NamedFault("custom", response=f.response, name=f"throttle-code-30/{status}"))
    return out


def peoplevox_faults(sb: Sandbox) -> list[Fault]:
    from loopsync.sandbox import peoplevox as pvx

    wh: Any = sb.warehouse

    def invalid_session(req: Request) -> Response:
        return pvx._result(wh.operation(req) or "GetData", detail="Invalid Session", ok=False)

    def throttle_fault(req: Request) -> Response:
        return pvx.soap_fault("Server", "Request limit exceeded: too many requests in 15 seconds")

    def throttle_body(req: Request) -> Response:
        return pvx._result(
            wh.operation(req) or "GetData", ok=False, detail="Too many requests, throttled"
        )

    return [
        NamedFault("custom", response=invalid_session, name="invalid-session"),
        NamedFault("custom", response=throttle_fault, name="throttle-soap-fault"),
        NamedFault("custom", response=throttle_body, name="throttle-response-id"),
    ]


def xoro_faults(sb: Sandbox) -> list[Fault]:
    def result_false(req: Request) -> Response:
        return json_response(
            {
                "Result": False,
                "Message": "Object reference not set to an instance of an object.",
                "Data": None,
                "TotalPages": 0,
            }
        )

    def throttled(req: Request) -> Response:
        return json_response(
            {"Result": False, "Message": "Too many requests", "Data": None, "TotalPages": 0}
        )

    return [
        NamedFault("custom", response=result_false, name="result-false"),
        NamedFault("custom", response=throttled, name="result-false-throttled"),
    ]


def _no_faults(sb: Sandbox) -> list[Fault]:
    return []


# Per-kind knowledge (keys checked against `connectors.KINDS` by tests/test_kinds.py).
SPECIFIC_FAULTS: dict[str, Callable[[Sandbox], list[Fault]]] = {
    "shiphero": shiphero_faults,
    "peoplevox": peoplevox_faults,
    "xoro": xoro_faults,
}


# -- crashed runs ------------------------------------------------------------------------------

TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def crash_lines(log_text: str) -> list[str]:
    """One line per crash in a worker's log, in order (`_signature`: one kind of crash, one
    line). Tracebacks come from an uncaught exception on stderr or a JSON log line's
    `exception` (loopsync logs no traceback for an error it handles: any one is a crash)."""
    plain: list[str] = []
    blocks: list[list[str]] = [plain]
    for line in log_text.splitlines():
        text = line.strip()
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                exc = event.get("exception")
                if isinstance(exc, str) and exc.strip():
                    blocks.append(exc.splitlines())
                continue
        plain.append(line)
    return [_signature(chain) for block in blocks for chain in _chains(block)]


def _chains(lines: Sequence[str]) -> list[list[str]]:
    """The exception lines of each chain of tracebacks (cause first)."""
    chains: list[list[str]] = []
    for i, line in enumerate(lines):
        if line.strip() != TRACEBACK:
            continue
        chained = any(lines[j].strip().startswith(CHAINED) for j in range(max(0, i - 3), i))
        if chained and chains:
            chains[-1].append(_exception_line(lines[i:]))
        else:
            chains.append([_exception_line(lines[i:])])
    return chains


def _exception_line(lines: Sequence[str]) -> str:
    """In a traceback's lines (from its header), the exception line: the first one after
    the header that is not indented."""
    for line in lines[1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()
    return "traceback without an exception line"


def _signature(chain: Sequence[str]) -> str:
    """A chain's exception types when it has a cause of another type ("requests.exceptions.
    ChunkedEncodingError (from urllib3.exceptions.IncompleteRead)"), else its exception
    line with digits masked ("OverflowError: date value out of range")."""
    final, cause = chain[-1].split(":", 1)[0], chain[0].split(":", 1)[0]
    if cause != final:
        return f"{final} (from {cause})"
    line = re.sub(r"\d+", "N", chain[-1])
    return line if len(line) <= 140 else line[:137] + "..."


# -- one connector's soak ---------------------------------------------------------------------


@dataclass
class Tracked:
    rid: str
    state: str
    mapped: bool
    with_order: bool


@dataclass
class Report:
    connector: str
    kills_wanted: int = 0
    kills: int = 0
    kills_idle: int = 0  # of `kills`: after IDLE_KILL without a request, not by count
    completed_runs: int = 0
    crashed_runs: int = 0  # worker runs that raised an unexpected exception
    crashes: Counter[str] = field(default_factory=Counter)  # exception line -> runs
    poison: list[str] = field(default_factory=list)  # poison records seeded
    exit_codes: Counter[int] = field(default_factory=Counter)
    kill_points: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    world: Counter[str] = field(default_factory=Counter)
    returns: int = 0
    eligible: int = 0
    finished: int = 0
    processed: int = 0
    flagged: int = 0
    clean_cycles: int = 0
    duplicate_rmas: int = 0
    duplicate_actions: int = 0
    duplicate_notes: int = 0
    lost: int = 0
    repeat_deliveries: int = 0
    webhooks: Counter[str] = field(default_factory=Counter)  # the sandbox sender's counts
    intake: Counter[str] = field(default_factory=Counter)  # the worker's inbox, as stored
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


class World(threading.Thread):
    """Plays Loop's customers and the warehouse's people while the worker runs."""

    def __init__(self, soak: ConnectorSoak, rng: random.Random) -> None:
        super().__init__(name=f"world-{soak.name}", daemon=True)
        self.soak = soak
        self.rng = rng
        self.halt = threading.Event()

    def run(self) -> None:
        # One event per few sandbox requests, not per unit of time: on a slow machine the
        # world slows down with the worker, and a seed gives the same mix of events.
        recorder = self.soak.sb.recorder
        due = recorder.count() + self.rng.randint(*WORLD_EVERY)
        while not self.halt.wait(0.02):
            if recorder.count() < due:
                continue
            due = recorder.count() + self.rng.randint(*WORLD_EVERY)
            try:
                self.soak.world_event(self.rng)
            except Exception as exc:  # noqa: BLE001 - a driver bug must show, not hang the soak
                self.soak.report.violations.append(f"soak driver error: {exc!r}")
                return


class ConnectorSoak:
    def __init__(
        self,
        name: str,
        kills: int,
        seed: int,
        workdir: Path,
        *,
        fault_rate: float,
        mode: str,
        deadline: float,
        max_delay: float,
        max_requests: int = MAX_REQUESTS,
        poison: bool = True,
        transport: bool = True,
        webhooks: bool = True,
        webhook_events: int = WEBHOOK_EVENTS,
    ) -> None:
        self.name = name
        self.kind, wire = VARIANTS[name]
        self.folder = wire == "folder"
        self.kills_wanted = kills
        self.rng = random.Random(f"{seed}:{name}")
        self.workdir = workdir
        self.fault_rate = fault_rate
        self.mode = mode
        self.deadline = deadline
        self.max_delay = max_delay
        self.max_requests = max(1, max_requests)
        self.with_poison = poison
        self.with_transport = transport
        # serve workers listen here for webhooks (one port for every run of this soak)
        self.http_port = free_port() if webhooks else None
        self.webhook_events = webhook_events
        self.report = Report(name, kills_wanted=kills, workdir=str(workdir))
        self.tracked: dict[str, Tracked] = {}
        self.received: dict[str, str] = {}  # return id -> scenario
        self.lock = threading.Lock()
        self.sb = Sandbox(
            self.kind,
            clock=SystemClock(),
            rate_limits=False,
            seed=seed,
            transport="folder" if self.folder else "http",
            folder_root=workdir / "3pl",
        )
        self.state_path = workdir / "state.sqlite"
        self.log_path = workdir / "worker.log"
        self.cfg_path: Path | None = None
        self.merchant = f"soak-{name}"
        self.dup_files = 0
        self.world_events = 0
        self.poisoned: str | None = None  # return id of the warehouse poison
        self.loop_poison: list[tuple[str, str]] = []  # (kind, return id)

    # -- setup ----------------------------------------------------------------------------
    def config(self) -> Path:
        extra: dict[str, Any] = {"timeout": f"{CLIENT_TIMEOUT:g}s"}
        if self.kind == "peoplevox":
            extra["rate_limit"] = {"requests": 1000, "per": "1s"}
        if self.kind == "xoro":
            extra["requests_per_second"] = 10
        if self.kind == "shiphero":  # the client's own credit mirror, not the sandbox's
            extra.update(credits_max=20000, credits_per_second=2000)
        return self.sb.write_config(
            self.workdir,
            merchant=self.merchant,
            state_path=str(self.state_path),
            every="10s",
            start_days=4,
            warehouse_extra=extra,
            timeout=f"{CLIENT_TIMEOUT:g}s",
            webhooks=None if self.http_port is None else {},
        )

    def add_returns(
        self,
        n: int,
        *,
        days: float,
        rng: random.Random,
        unmapped: bool | None = None,
        with_order: bool | None = None,
    ) -> None:
        """n returns (every state; one in ten unmapped or without an order, unless told)."""
        unmapped = rng.random() < 0.1 if unmapped is None else unmapped
        with_order = rng.random() >= 0.1 if with_order is None else with_order
        kw: dict[str, Any] = {"destinations": ("99",)} if unmapped else {}
        with self.lock:
            added = self.sb.seed(n, days=days, with_order=with_order, **kw)
            for raw in added:
                rid = str(raw["id"])
                self.tracked[rid] = Tracked(rid, str(raw["state"]), not unmapped, with_order)

    def eligible(self, t: Tracked) -> bool:
        if t.state != "open":
            return False
        if self.kind == "xoro":
            return t.with_order  # watch-only: Xoro's own app made the RMA
        if self.kind == "generic":
            return t.mapped  # a 3PL without a product API knows no orders
        return t.mapped and t.with_order

    # -- the world ------------------------------------------------------------------------
    def world_event(self, rng: random.Random) -> None:
        self.world_events += 1
        if (
            self.with_poison
            and self.poisoned is None
            and self.world_events >= POISON_AFTER_EVENTS
            and self.poison_warehouse(rng)
        ):
            return
        r = rng.random()
        wh: Any = self.sb.warehouse
        if r < 0.25:
            if len(self.tracked) < INITIAL_RETURNS + 2 * self.kills_wanted:
                self.add_returns(rng.choice((1, 1, 2)), days=2 / 86400, rng=rng)
                self.report.world["new Loop returns"] += 1
        elif r < 0.6:
            if self.receive_one(rng):
                self.report.world["warehouse receipts"] += 1
        elif r < 0.65:
            api = self.sb.loop if self.folder or rng.random() < 0.3 else wh
            api.faults.inject(
                Fault("rate_limit", retry_after=rng.choice((None, 1))), times=rng.randint(2, 3)
            )
            self.report.world[f"429 bursts ({api.name})"] += 1
        elif self.kind == "peoplevox":
            wh.expire_sessions()
            self.report.world["PeopleVox sessions expired"] += 1
        elif self.kind == "xoro":
            wh.phantom_pages = 0 if wh.phantom_pages else 1
            self.report.world["Xoro phantom pages toggled"] += 1
        elif self.folder:
            if self.duplicate_receipt_file(rng):
                self.report.world["duplicate receipt files"] += 1
        elif self.kind == "generic":
            with wh.lock:
                if wh.receipts:
                    wh.receipts.append(dict(rng.choice(wh.receipts)))
                    self.report.world["re-sent receipt records"] += 1
        elif self.kind == "shiphero":
            wh.expire_tokens()
            self.report.world["ShipHero access tokens expired"] += 1

    def seed_loop_poison(self, rng: random.Random) -> None:
        """One Loop return of each poison kind, among the first returns (so on a page
        with good ones): the good ones must still go through."""
        now = self.sb.clock.now()
        for kind, raw in loop_poison_returns(
            first_id=POISON_FIRST_ID, at=now, rng=random.Random(rng.randrange(1 << 30))
        ):
            at = now - timedelta(seconds=rng.uniform(60, 3 * 86400))
            self.sb.loop.add_poison_return(raw, at=at)
            self.loop_poison.append((kind, str(raw["id"])))
            self.report.poison.append(f"Loop: {kind}")

    def poison_warehouse(self, rng: random.Random) -> bool:
        """Make one eligible return's warehouse record unreadable (each emulator's own
        poison); it must get no Loop action, and hold back nothing else."""
        with self.lock:
            waiting = sorted(
                rid
                for rid, t in self.tracked.items()
                if rid not in self.received and self.eligible(t)
            )
        rng.shuffle(waiting)
        for rid in waiting[:8]:
            if self.sb.warehouse.poison(rid):
                with self.lock:
                    self.received[rid] = "poison"
                self.poisoned = rid
                self.report.poison.append(f"{self.name}: unreadable record for {rid}")
                self.report.world["warehouse poison records"] += 1
                return True
        return False

    def receive_one(self, rng: random.Random) -> bool:
        with self.lock:
            waiting = [rid for rid in self.tracked if rid not in self.received]
        rng.shuffle(waiting)
        for rid in waiting[:8]:
            if self.sb.warehouse.has_rma(rid):
                scenario = rng.choice(SCENARIOS)
                if self.sb.warehouse.receive(rid, scenario):
                    with self.lock:
                        self.received[rid] = scenario
                    return True
        return False

    def duplicate_receipt_file(self, rng: random.Random) -> bool:
        root = self.workdir / "3pl"
        files = sorted((root / "archive").glob("receipts-*.csv")) + sorted(
            (root / "inbox").glob("receipts-*.csv")
        )
        if not files:
            return False
        source = rng.choice(files)
        self.dup_files += 1
        try:
            data = source.read_bytes()
        except FileNotFoundError:  # archived by the worker meanwhile
            return False
        self.sb.warehouse.write_inbox_file(
            f"dup-{self.dup_files}-{source.name}",  # type: ignore[attr-defined]
            data,
        )
        return True

    # -- workers --------------------------------------------------------------------------
    def start_worker(self, *args: str, settled: bool = False) -> subprocess.Popen[bytes]:
        assert self.cfg_path is not None
        head = ["-c", SETTLED_WORKER] if settled else ["-m", "loopsync"]
        log = self.log_path.open("ab")  # closed once the child has it
        try:
            return subprocess.Popen(
                [
                    sys.executable,
                    *head,
                    "--log-format",
                    "json",
                    "--log-level",
                    "warning",
                    *args,
                    "-c",
                    str(self.cfg_path),
                ],
                env={**os.environ, **self.sb.env()},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        finally:
            log.close()

    def serve_args(self) -> tuple[str, ...]:
        if self.http_port is None:
            return ("serve",)
        return ("serve", "--http", f"127.0.0.1:{self.http_port}")

    def send_webhooks(self) -> None:
        """Loop's and the warehouse's webhooks to this soak's worker, with faults."""
        if self.http_port is None:
            return
        targets = self.sb.webhook_targets(f"http://127.0.0.1:{self.http_port}", self.merchant)
        self.sb.send_webhooks(
            targets,
            faults=WEBHOOK_FAULTS,
            seed=self.rng.randrange(1 << 30),
            policy=WEBHOOK_POLICY,
        )

    def kill_phase(self) -> None:
        self.send_webhooks()
        faults = [
            f for f in common_faults() if self.with_transport or f.kind not in TRANSPORT_KINDS
        ]
        self.sb.loop.faults.set_random(self.fault_rate, faults, seed=self.rng.randrange(1 << 30))
        if not self.folder:
            specific = SPECIFIC_FAULTS.get(self.kind, _no_faults)(self.sb)
            self.sb.warehouse.faults.set_random(
                self.fault_rate, faults + specific, seed=self.rng.randrange(1 << 30)
            )
        world = World(self, random.Random(self.rng.randrange(1 << 30)))
        world.start()
        scripted = transport_faults() if self.with_transport else []
        # Each connector starts the cycle at a kind of its own: a soak of one kill each
        # still meets every kind.
        first = CONNECTORS.index(self.name) if self.name in CONNECTORS else 0
        attempts = 0
        try:
            # Ends by count (kills, bounded attempts); the deadline is only a safety cap.
            while (
                self.report.kills < self.kills_wanted
                and attempts < MAX_ATTEMPTS_PER_KILL * self.kills_wanted
                and time.monotonic() < self.deadline
            ):
                serve = self.mode == "serve" or (self.mode == "mixed" and self.rng.random() < 0.35)
                target = self.rng.randint(1, self.max_requests)
                fired = threading.Event()
                if scripted:
                    self.arm(
                        scripted[(first + attempts) % len(scripted)],
                        self.rng.randint(1, target),
                        fired,
                    )
                else:
                    fired.set()
                attempts += 1
                calls_before = self.sb.recorder.count()
                offset = self.log_size()
                proc = self.start_worker(*(self.serve_args() if serve else ("run", "--once")))
                code, by_count = self.wait_for_kill_point(proc, calls_before + target, fired)
                if code is None:
                    time.sleep(self.rng.uniform(0, KILL_JITTER))
                    self.report.kill_points[self.last_call(calls_before)] += 1
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(30)
                    self.report.kills += 1
                    self.report.kills_idle += not by_count
                else:
                    self.report.completed_runs += 1
                    self.report.exit_codes[code] += 1
                self.note_crash(offset)
        finally:
            world.halt.set()
            world.join(10)

    def webhook_phase(self) -> None:
        """One serve worker with its intake listening, the APIs' faults still on, while
        new Loop returns arrive and the warehouse receives goods on a timer (so Loop and
        the warehouse send webhooks, with WEBHOOK_FAULTS); then SIGKILL, mid-handling or
        not. Not counted in `kills`: the clean phase and the invariants follow as ever."""
        if self.http_port is None or self.webhook_events <= 0:
            return
        offset = self.log_size()
        proc = self.start_worker(*self.serve_args())
        if self.sb.webhook_sender is not None:
            self.sb.webhook_sender.faults = replace(WEBHOOK_FAULTS, forge=PHASE_FORGE)
        try:
            if not self.listening(proc):
                self.report.violations.append(
                    f"serve --http never answered on port {self.http_port} (see {self.log_path})"
                )
                return
            for _ in range(self.webhook_events):
                time.sleep(WEBHOOK_EVENT_EVERY)
                if self.rng.random() < 0.5:
                    self.add_returns(1, days=2 / 86400, rng=self.rng)
                    self.report.world["new Loop returns (webhook phase)"] += 1
                elif self.receive_one(self.rng):
                    self.report.world["warehouse receipts (webhook phase)"] += 1
            if self.sb.webhook_sender is not None:
                self.sb.webhook_sender.drain(WEBHOOK_DRAIN)
            time.sleep(self.rng.uniform(0, 0.5))
        finally:
            if self.sb.webhook_sender is not None:
                self.sb.webhook_sender.faults = WEBHOOK_FAULTS
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            else:
                self.report.exit_codes[proc.returncode] += 1
            self.note_crash(offset)

    def listening(self, proc: subprocess.Popen[bytes]) -> bool:
        """Has this serve worker's listener answered /healthz (within STARTUP_GRACE)?"""
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        deadline = time.monotonic() + STARTUP_GRACE
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered (503 while a first cycle is stalled is an answer)
            except OSError:
                time.sleep(0.05)
        return False

    def arm(self, fault: Fault, nth: int, fired: threading.Event) -> None:
        """`fault` on the first request, to Loop or (by the seed) the warehouse, once the
        sandbox has seen `nth` more requests: a fault per run, by count, not by time.
        `fired` is set when it is injected (the injector stops at the first match, so a
        `when` that answers yes is the one injected)."""
        api: Any = self.sb.loop if self.folder or self.rng.random() < 0.5 else self.sb.warehouse
        recorder, due = self.sb.recorder, self.sb.recorder.count() + nth - 1

        def due_now(req: Request) -> bool:
            if recorder.count() < due:
                return False
            fired.set()
            return True

        api.faults.inject(fault, when=due_now)

    def wait_for_kill_point(
        self, proc: subprocess.Popen[bytes], calls: int, fired: threading.Event
    ) -> tuple[int | None, bool]:
        """(exit code, False) if the worker ended first; else (None, whether the kill point
        came by count: `calls` requests seen and the run's armed fault gone off, rather
        than no request for `max_delay` seconds)."""
        recorder = self.sb.recorder
        seen, last_change = recorder.count(), time.monotonic()
        started = seen
        while True:
            code = proc.poll()
            if code is not None:
                return code, False
            now_seen = recorder.count()
            # The armed fault gets up to max_requests more requests to go off (a fault
            # armed on the warehouse waits for the push), then the kill comes anyway.
            if now_seen >= calls and (fired.is_set() or now_seen >= calls + self.max_requests):
                return None, True
            if now_seen != seen:
                seen, last_change = now_seen, time.monotonic()
            idle = self.max_delay if seen > started else STARTUP_GRACE
            if time.monotonic() - last_change > idle:
                return None, False
            time.sleep(0.005)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def note_crash(self, offset: int) -> str | None:
        """Did the worker run whose log starts at `offset` raise an unexpected exception?
        Counted, with its exception line, for the report."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        found = crash_lines(text)
        if found:
            self.report.crashed_runs += 1
            self.report.crashes[found[0]] += 1
        return found[0] if found else None

    def last_call(self, before: int) -> str:
        calls = self.sb.recorder.calls()
        if len(calls) <= before:
            return "before its first request"
        last = calls[-1]
        tail = last.path.rstrip("/").rsplit("/", 1)[-1]
        if last.api == "loop" and tail.isdigit():
            tail = "return"
        if last.api == "peoplevox":
            tail = str(last.headers.get("SOAPAction", tail)).strip('"').rsplit("/", 1)[-1]
        if last.api == "shiphero" and last.body:
            body = last.body.decode("utf-8", "replace")
            tail = next(
                (
                    op
                    for op in ("return_create", "LoopsyncPoll", "LoopsyncReturns", "LoopsyncOrders")
                    if op in body
                ),
                tail,
            )
        return f"{last.api} {last.method} {tail}"

    def clean_phase(self) -> None:
        self.sb.loop.faults.clear()
        self.sb.warehouse.faults.clear()
        time.sleep(SLOW + 0.5)  # a slow answer the last killed worker left lands first
        if hasattr(self.sb.warehouse, "phantom_pages"):
            self.sb.warehouse.phantom_pages = 0
        finished_world = False
        for _ in range(MAX_CLEAN_CYCLES):
            offset = self.log_size()
            proc = self.start_worker("run", "--once", settled=True)
            try:
                code = proc.wait(CLEAN_CYCLE_LIMIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
                self.report.violations.append(
                    f"a clean cycle took over {CLEAN_CYCLE_LIMIT}s (see {self.log_path})"
                )
                return
            self.report.clean_cycles += 1
            self.note_crash(offset)
            if code not in (0, 1):
                self.report.violations.append(f"clean cycle exited {code} (see {self.log_path})")
            if not finished_world:
                # One warehouse record is poison (if the world has not made one yet); the
                # warehouse finishes every other return it has; the worker catches up.
                if self.with_poison and self.poisoned is None:
                    self.poison_warehouse(self.rng)
                for rid in sorted(self.tracked):
                    if rid not in self.received and self.sb.warehouse.has_rma(rid):
                        scenario = self.rng.choice(SCENARIOS)
                        if self.sb.warehouse.receive(rid, scenario):
                            self.received[rid] = scenario
                finished_world = True
                continue
            # Exit 1 is expected while poison records are held (reported, not acted on).
            if code in (0, 1) and not self.work_left():
                return
            time.sleep(1.0)  # a lost note is looked up 2 read timeouts after it was sent

    def work_left(self) -> bool:
        store = Store(self.state_path, SystemClock())
        try:
            pending = list(
                store.db.query(
                    "select count(*) as n from effects where status in ('pending', 'intent')"
                )
            )
            busy = list(
                store.db.query(
                    "select count(*) as n from returns where stage in ('new', 'pushing', 'acting')"
                )
            )
            open_ids = {
                r["id"] for r in store.db.query("select id from returns where stage = 'open'")
            }
        finally:
            store.close()
        unacted = [
            rid for rid, s in self.received.items() if EXPECTED_ACTION[s] and rid in open_ids
        ]
        return bool(pending[0]["n"] or busy[0]["n"] or unacted)

    # -- invariants -----------------------------------------------------------------------
    def check(self) -> None:
        rep, sb = self.report, self.sb
        wh: Any = sb.warehouse
        creates = self.kind != "xoro"
        store = Store(self.state_path, SystemClock())
        try:
            rows = {r["id"]: r for r in store.db.query("select * from returns")}
            links = {r["return_id"] for r in store.db.query("select return_id from rmas")}
            cursors = {(c.stream, c.state): c for c in store.cursors.all()}
            crashed = list(store.db.query("select id, error from runs where status = 'crashed'"))
            hooks = store.inbox.figures()
        finally:
            store.close()
        rep.returns = len(self.tracked)
        for rid, t in sorted(self.tracked.items()):
            eligible = self.eligible(t)
            rep.eligible += eligible
            # exactly one RMA for an eligible return, none for the others
            count = wh.rma_count(rid)
            if creates and count != (1 if eligible else 0):
                rep.duplicate_rmas += count > 1
                rep.violations.append(
                    f"return {rid} ({t.state}, mapped={t.mapped}, "
                    f"order={t.with_order}) has {count} RMAs"
                )
            if eligible and rid not in links:
                rep.violations.append(f"eligible return {rid} was never linked to its RMA")
            if self.kind == "generic" and wh.deliveries.get(rid, 0) > 1:
                rep.repeat_deliveries += 1
            # no return lost
            if rid not in rows:
                rep.lost += 1
                rep.violations.append(f"return {rid} is not in the state store (lost)")
            # exactly one process or flag for a finished return, the right one
            actions = [a for a in sb.loop.actions_for(rid) if a in ("process", "flag")]
            scenario = self.received.get(rid)
            # Xoro's own app imports returns that are not open too: loopsync leaves those.
            want = EXPECTED_ACTION[scenario] if scenario and eligible else None
            rep.finished += want is not None
            rep.processed += actions.count("process")
            rep.flagged += actions.count("flag")
            if len(actions) > 1:
                rep.duplicate_actions += 1
            if actions != ([want] if want else []):
                rep.violations.append(
                    f"return {rid} (warehouse: {scenario or 'nothing'}) got "
                    f"Loop actions {actions}, expected {want or 'none'}"
                )
            # notes not repeated; one RMA note; one flag note per flag
            notes = sb.loop.notes_for(rid)
            repeated = [n for n, c in Counter(notes).items() if c > 1]
            if repeated:
                rep.duplicate_notes += 1
                rep.violations.append(f"return {rid}: repeated notes {repeated}")
            created = sum("loopsync: created" in n for n in notes)
            if creates and created != (1 if eligible else 0):
                rep.violations.append(f"return {rid}: {created} RMA notes")
            flags = sum(n.startswith("loopsync flagged") for n in notes)
            if flags != actions.count("flag"):
                rep.violations.append(
                    f"return {rid}: {flags} flag notes for {actions.count('flag')} flags"
                )
        # no cursor passed unread work
        for (stream, state), cur in cursors.items():
            if cur.window_from:
                rep.violations.append(
                    f"cursor {stream}/{state} still in window {cur.window_from} -> {cur.window_to}"
                )
        for rid in self.tracked:
            loop_raw = sb.loop.get(rid)
            cursor = cursors.get(("returns", loop_raw["state"]))
            row = rows.get(rid)
            if cursor is None or row is None or not cursor.done_until:
                continue
            loop_updated = parse_timestamp(loop_raw["updated_at"], assume_utc=True)
            if (
                loop_updated <= parse_timestamp(cursor.done_until)
                and parse_timestamp(row["updated_at"]) < loop_updated
            ):
                rep.violations.append(
                    f"cursor returns/{loop_raw['state']} done until {cursor.done_until} "
                    f"passed return {rid} updated {loop_raw['updated_at']} (stored "
                    f"{row['updated_at']})"
                )
        # poison Loop returns: never pushed, never acted on, noted by no one
        for kind, rid in self.loop_poison:
            count = wh.rma_count(rid)
            if count:
                rep.violations.append(f"poison Loop return {rid!r} ({kind}) got {count} RMAs")
            actions = sb.loop.actions_for(rid)
            if actions:
                rep.violations.append(
                    f"poison Loop return {rid!r} ({kind}) got Loop actions {actions}"
                )
        # crashed runs: tracebacks in the worker's log, and runs the store marks crashed
        for line, n in rep.crashes.most_common():
            rep.violations.append(f"{n} worker run(s) crashed: {line}")
        for error, n in Counter(_signature([str(run["error"])]) for run in crashed).items():
            rep.violations.append(f"{n} run(s) recorded as crashed in the state: {error}")
        rep.crashed_runs = max(rep.crashed_runs, len(crashed))
        rep.intake.update(
            {"accepted": hooks.accepted, "unhandled": hooks.unhandled, "missed": hooks.missed}
        )
        rep.intake.update({f"refused {why}": n for why, n in hooks.refused.items()})
        if sb.webhook_sender is not None:
            rep.webhooks.update(sb.webhook_sender.stats())
            if rep.webhooks["forged_accepted"]:
                rep.violations.append(
                    f"{rep.webhooks['forged_accepted']} forged webhook(s) accepted by the intake"
                )
        rep.requests.update(c.api for c in sb.recorder.calls())
        for label in sb.loop.faults.injected:
            rep.faults[f"loop {label}"] += 1
        for label in wh.faults.injected:
            rep.faults[f"{self.kind} {label}"] += 1

    def run(self) -> Report:
        started = time.monotonic()
        self.sb.start()
        try:
            self.add_returns(INITIAL_RETURNS, days=3, rng=self.rng, unmapped=False, with_order=True)
            # Not eligible on purpose (though a watch-only or order-less warehouse may
            # take them): an unmapped destination, an order the warehouse lacks.
            self.add_returns(2, days=1, rng=self.rng, unmapped=True, with_order=True)
            self.add_returns(2, days=1, rng=self.rng, unmapped=False, with_order=False)
            if self.with_poison:
                self.seed_loop_poison(self.rng)
            self.cfg_path = self.config()
            self.kill_phase()
            self.webhook_phase()
            self.clean_phase()
            self.check()
        finally:
            self.sb.stop()
            self.report.seconds = time.monotonic() - started
        return self.report


# -- the whole run --------------------------------------------------------------------------


def run_soak(
    connectors: Sequence[str],
    kills: int,
    seed: int,
    max_seconds: float,
    *,
    fault_rate: float = 0.1,
    mode: str = "mixed",
    max_delay: float = IDLE_KILL,
    max_requests: int = MAX_REQUESTS,
    parallel: int = 3,
    poison: bool = True,
    transport: bool = True,
    webhooks: bool = True,
    workdir: Path | None = None,
    keep: bool = False,
) -> list[Report]:
    """Soak each connector (`kills` spread over them); returns one Report each. Kills
    land by request count (see MAX_REQUESTS); `max_delay` is the idle fallback and
    `max_seconds` only a safety cap: a soak is the same work on a fast or a slow machine."""
    root = Path(workdir or tempfile.mkdtemp(prefix="loopsync-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    # Leave room for the clean phase and the checks inside the cap.
    deadline = time.monotonic() + max(1.0, max_seconds - 10.0 - 2.0 * len(connectors))
    base, extra = divmod(kills, len(connectors))
    soaks = [
        ConnectorSoak(
            name,
            base + (i < extra),
            seed,
            root / name,
            fault_rate=fault_rate,
            mode=mode,
            deadline=deadline,
            max_delay=max_delay,
            max_requests=max_requests,
            poison=poison,
            transport=transport,
            webhooks=webhooks,
        )
        for i, name in enumerate(connectors)
    ]
    for s in soaks:
        s.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            reports = list(pool.map(lambda s: s.run(), soaks))
    finally:
        if not keep and all(r.ok for s in soaks for r in [s.report]):
            shutil.rmtree(root, ignore_errors=True)
    return reports


def render(reports: Sequence[Report], *, seconds: float, seed: int) -> str:
    lines = [f"loopsync soak: seed {seed}, {seconds:.0f}s; {SETTINGS_NOTE}", ""]
    head = (
        f"{'connector':<15}{'kills':>6}{'runs':>6}{'returns':>8}{'eligible':>9}"
        f"{'finished':>9}{'proc':>6}{'flag':>6}{'dup RMA':>8}{'dup act':>8}"
        f"{'dup note':>9}{'lost':>6}{'crash':>6}{'viol':>6}"
    )
    lines.append(head)
    lines.extend(
        f"{r.connector:<15}{r.kills:>6}{r.completed_runs:>6}{r.returns:>8}"
        f"{r.eligible:>9}{r.finished:>9}{r.processed:>6}{r.flagged:>6}"
        f"{r.duplicate_rmas:>8}{r.duplicate_actions:>8}{r.duplicate_notes:>9}"
        f"{r.lost:>6}{r.crashed_runs:>6}{len(r.violations):>6}"
        for r in reports
    )
    total = totals(reports)
    lines.append(
        f"{'all':<15}{total['kills']:>6}{total['runs']:>6}{total['returns']:>8}"
        f"{total['eligible']:>9}{total['finished']:>9}{total['processed']:>6}"
        f"{total['flagged']:>6}{total['duplicate_rmas']:>8}"
        f"{total['duplicate_actions']:>8}{total['duplicate_notes']:>9}"
        f"{total['lost']:>6}{total['crashed_runs']:>6}{total['violations']:>6}"
    )
    faults: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    world: Counter[str] = Counter()
    points: Counter[str] = Counter()
    for r in reports:
        faults.update(r.faults)
        requests.update(r.requests)
        world.update(r.world)
        points.update(r.kill_points)
    lines += [
        "",
        "requests the sandbox served: "
        + ", ".join(f"{api} {n}" for api, n in sorted(requests.items())),
        f"faults injected: {sum(faults.values())} "
        f"({100 * sum(faults.values()) / max(1, sum(requests.values())):.1f}% of requests)",
    ]
    lines += [f"  {n:>5}  {label}" for label, n in sorted(faults.items())]
    hooks = webhook_totals(reports)
    if hooks["emitted"]:
        lines += [
            "",
            "webhooks (the sandbox's sender to the serve workers' intake): "
            + webhook_line(reports),
        ]
        lines += [f"  {n:>5}  {label}" for label, n in sorted(hooks.items())]
        intake: Counter[str] = Counter()
        for r in reports:
            intake.update(r.intake)
        lines += [
            "the workers' inboxes (events stored, refusals by reason, returns polling "
            "found first while webhooks were healthy):"
        ]
        lines += [f"  {n:>5}  {label}" for label, n in sorted(intake.items())]
    lines += ["", "the world meanwhile:"]
    lines += [f"  {n:>5}  {label}" for label, n in sorted(world.items())]
    lines += ["", "last request the sandbox saw before each kill:"]
    lines += [f"  {n:>5}  {label}" for label, n in points.most_common(12)]
    crashes: Counter[str] = Counter()
    for r in reports:
        crashes.update({f"{r.connector}: {line}": n for line, n in r.crashes.items()})
    lines += ["", f"crashed worker runs: {sum(r.crashed_runs for r in reports)}"]
    lines += [f"  {n:>5}  {label}" for label, n in crashes.most_common(20)]
    lines += [
        "",
        "poison records seeded: "
        + "; ".join(dict.fromkeys(p for r in reports for p in r.poison if p.startswith("Loop"))),
    ]
    lines += [f"  {p}" for r in reports for p in r.poison if not p.startswith("Loop")]
    runs = Counter[int]()
    for r in reports:
        runs.update(r.exit_codes)
    lines += [
        "",
        "worker runs that ended before their kill, by exit status: "
        + (", ".join(f"{code}: {n}" for code, n in sorted(runs.items())) or "none"),
        "clean cycles: " + ", ".join(f"{r.connector} {r.clean_cycles}" for r in reports),
        "repeat RMA deliveries (generic 3PL, idempotent by number): "
        + ", ".join(
            f"{r.connector} {r.repeat_deliveries}"
            for r in reports
            if r.connector.startswith("generic")
        ),
    ]
    short = [
        f"{r.connector} {r.kills} of {r.kills_wanted}" for r in reports if r.kills < r.kills_wanted
    ]
    if short:
        lines += [
            "",
            "KILLS SHORT of those asked (the --max-seconds cap, or runs that kept "
            "ending first): " + ", ".join(short),
        ]
    bad = [(r.connector, v) for r in reports for v in r.violations]
    lines.append("")
    if bad:
        lines.append(f"VIOLATIONS ({len(bad)}):")
        lines += [f"  {name}: {v}" for name, v in bad[:60]]
        lines += [f"  worker logs and state: {r.workdir}" for r in reports if not r.ok]
    else:
        lines.append("every invariant held.")
    lines += ["", summary_line(reports, seconds=seconds, seed=seed)]
    return "\n".join(lines) + "\n"


def summary_line(reports: Sequence[Report], *, seconds: float, seed: int) -> str:
    """One line for BENCHMARKS.md and the README."""
    t = totals(reports)
    share = 100 * t["faults"] / max(1, t["requests"])
    return (
        f"soak seed {seed}: {t['kills']} kills ({t['kills'] - t['kills_idle']} by request "
        f"count), {t['faults']:,} injected faults ({share:.0f} % of {t['requests']:,} "
        f"requests), {t['returns']} returns, {t['eligible']} "
        f"eligible, {t['finished']} finished by the warehouse: {t['duplicate_rmas']} "
        f"duplicate RMAs, {t['duplicate_actions']} duplicate process/flag calls, "
        f"{t['duplicate_notes']} repeated notes, {t['lost']} returns lost, "
        f"{t['crashed_runs']} crashed runs, {t['violations']} violations, {seconds:.0f} s"
        + (f"; webhooks: {webhook_line(reports)}" if webhook_totals(reports)["emitted"] else "")
    )


def webhook_totals(reports: Sequence[Report]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in reports:
        total.update(r.webhooks)
    return total


def webhook_line(reports: Sequence[Report]) -> str:
    """Events sent, lost by fault or never answered (a worker killed or not serving),
    duplicated, and every forgery refused or unanswered, none accepted."""
    w = webhook_totals(reports)
    return (
        f"{w['emitted']} events, {w['delivered']} deliveries accepted, {w['lost']} lost, "
        f"{w['failed']} undeliverable (no serve worker), {w['duplicated']} duplicated, "
        f"{w['delayed']} delayed; {w['forged']} forged: {w['forged_refused']} refused, "
        f"{w['forged_unanswered']} unanswered, {w['forged_accepted']} accepted"
    )


def totals(reports: Sequence[Report]) -> dict[str, int]:
    return {
        "kills": sum(r.kills for r in reports),
        "runs": sum(r.completed_runs for r in reports),
        "returns": sum(r.returns for r in reports),
        "eligible": sum(r.eligible for r in reports),
        "finished": sum(r.finished for r in reports),
        "processed": sum(r.processed for r in reports),
        "flagged": sum(r.flagged for r in reports),
        "faults": sum(sum(r.faults.values()) for r in reports),
        "duplicate_rmas": sum(r.duplicate_rmas for r in reports),
        "duplicate_actions": sum(r.duplicate_actions for r in reports),
        "duplicate_notes": sum(r.duplicate_notes for r in reports),
        "lost": sum(r.lost for r in reports),
        "crashed_runs": sum(r.crashed_runs for r in reports),
        "kills_idle": sum(r.kills_idle for r in reports),
        "requests": sum(sum(r.requests.values()) for r in reports),
        "violations": sum(len(r.violations) for r in reports),
    }


# -- BENCHMARKS.md ----------------------------------------------------------------------------

SECTION = "## Reliability soak"
# "crashed runs" came last, after rows without it had been recorded: those rows leave it empty.
TABLE_HEAD = (
    "| date | machine | commit | command | connectors | kills | faults | returns | "
    "eligible | finished | duplicates | losses | violations | seconds | crashed runs |"
)
TABLE_RULE = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"


def record(
    reports: Sequence[Report], *, seconds: float, command: str, path: Path = REPO / "BENCHMARKS.md"
) -> None:
    """Add one row to the soak table in BENCHMARKS.md (the section is created at the end
    of the file the first time). Re-read just before writing; nothing else changes."""
    t = totals(reports)
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()} | {git_commit()} | `{command}` | "
        f"{', '.join(r.connector for r in reports)} | {t['kills']} | {t['faults']} | "
        f"{t['returns']} | {t['eligible']} | {t['finished']} | "
        f"{t['duplicate_rmas'] + t['duplicate_actions'] + t['duplicate_notes']} | "
        f"{t['lost']} | {t['violations']} | {seconds:.0f} | {t['crashed_runs']} |"
    )
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    if SECTION in lines:
        at = lines.index(SECTION) + 1
        while at < len(lines) and not lines[at].startswith("|"):
            at += 1
        if at + 1 < len(lines) and lines[at] != TABLE_HEAD and "| seconds |" in lines[at]:
            lines[at : at + 2] = [TABLE_HEAD, TABLE_RULE]  # the table gains a column
        while at < len(lines) and lines[at].startswith("|"):
            at += 1
        lines.insert(at, row)
        new = "\n".join(lines) + "\n"
    else:
        new = (
            text.rstrip("\n")
            + "\n\n"
            + "\n".join(
                [
                    SECTION,
                    "",
                    "`benchmarks/soak.py`: the real worker SIGKILLed at random moments while "
                    "every emulated API injects faults; then faults off, clean cycles, and the "
                    "invariants checked from the sandbox's call records (see the script's "
                    f"docstring). Settings: {SETTINGS_NOTE}. duplicates = extra RMAs + extra "
                    "process/flag calls + repeated notes.",
                    "",
                    TABLE_HEAD,
                    TABLE_RULE,
                    row,
                ]
            )
            + "\n"
        )
    path.write_text(new, encoding="utf-8")


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="SIGKILL-and-fault soak of the loopsync worker against the sandbox"
    )
    p.add_argument(
        "--connectors",
        default=",".join(CONNECTORS),
        help=f"comma-separated, from {', '.join(CONNECTORS)} (default: all)",
    )
    p.add_argument(
        "--kills",
        type=int,
        default=300,
        help="SIGKILLs in all, spread over the connectors (default 300)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds returns, faults, kill points and the world (default 1)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=1800,
        help="safety cap on the whole run (default 1800): kills come by count, "
        "and the kill phase stops short only if this is reached (reported)",
    )
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.1,
        help="share of requests that fail at random (default 0.1)",
    )
    p.add_argument(
        "--mode",
        choices=("run", "serve", "mixed"),
        default="mixed",
        help="worker as `run --once`, `serve`, or both (default mixed)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=MAX_REQUESTS,
        help="a worker is killed after 1..N sandbox requests, drawn by the seed "
        f"(default {MAX_REQUESTS})",
    )
    p.add_argument(
        "--max-delay",
        type=float,
        default=IDLE_KILL,
        help="kill anyway after this many seconds without a request (a worker "
        f"asleep in a back-off or between serve cycles; default {IDLE_KILL:g})",
    )
    p.add_argument("--parallel", type=int, default=3, help="connectors soaked at once (default 3)")
    p.add_argument(
        "--no-poison", action="store_true", help="seed no poison records (Loop and warehouse)"
    )
    p.add_argument(
        "--no-transport-faults",
        action="store_true",
        help="no drips, cut bodies, bad chunking or bad gzip",
    )
    p.add_argument(
        "--no-webhooks",
        action="store_true",
        help="no webhook delivery to serve workers (polling only)",
    )
    p.add_argument("--workdir", type=Path, help="keep state, configs and worker logs here")
    p.add_argument("--json", action="store_true", help="print the reports as JSON too")
    p.add_argument("--record", action="store_true", help="add a row to BENCHMARKS.md")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.connectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONNECTORS]
    if unknown or not names:
        p.error(f"unknown connector(s) {', '.join(unknown)}; use {', '.join(CONNECTORS)}")
    from loopsync import logs

    logs.configure(json_output=True, level="error")
    started = time.monotonic()
    reports = run_soak(
        names,
        args.kills,
        args.seed,
        args.max_seconds,
        fault_rate=args.fault_rate,
        mode=args.mode,
        max_delay=args.max_delay,
        max_requests=args.max_requests,
        parallel=args.parallel,
        poison=not args.no_poison,
        transport=not args.no_transport_faults,
        webhooks=not args.no_webhooks,
        workdir=args.workdir,
        keep=args.workdir is not None,
    )
    seconds = time.monotonic() - started
    text = render(reports, seconds=seconds, seed=args.seed)
    sys.stdout.write(text)
    if args.workdir is not None:
        (args.workdir / "report.txt").write_text(text, encoding="utf-8")
    if args.json:
        json.dump([{**vars(r), "ok": r.ok} for r in reports], sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if args.record:
        command = "benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(reports, seconds=seconds, command=command.strip())
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
