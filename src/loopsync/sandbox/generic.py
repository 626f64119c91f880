"""The sandbox 3PL for the generic connector (the AMS model), over both transports that
`loopsync.connectors.generic` documents.

HTTP: `POST /rmas` verifies the HMAC signature over timestamp, method, request target and
body, and refuses a timestamp more than SIGNATURE_TOLERANCE seconds from its clock (a bad
or stale one is refused with 401 and kept in `bad_signatures`), stores RMAs idempotently
by number (a repeat answers `duplicate_status` with the existing record),
`GET /rmas/{number}` looks one up, and `GET /receipts?since&page&page_size` serves the
receipt feed, paged.

Folder: `folder_config(root)` lays out outbox/inbox/archive/rejected under `root`; the 3PL
picks RMA files up from the outbox and writes receipt files (well-formed, malformed or
duplicated ones) into the inbox.

It verifies signatures and parses files on its own, without the connector's code, so a
mistake there is not mirrored here.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from loopsync.sandbox.base import SCENARIOS, WarehouseEmulator
from loopsync.sandbox.server import Request, Response, json_response
from loopsync.sandbox.webhooks import Source
from loopsync.timeutil import Clock, iso, parse_timestamp

TOKEN_ENV, SIGNING_ENV = "THREEPL_TOKEN", "THREEPL_SIGNING_SECRET"
SIGNATURE_HEADER = "X-Loopsync-Signature"
TIMESTAMP_HEADER = "X-Loopsync-Timestamp"
SIGNATURE_TOLERANCE = 300  # seconds either side of the 3PL's clock
RECEIPT_COLUMNS = ("receipt_id", "rma_number", "sku", "quantity", "condition", "received_at")
# Loop destination id -> 3PL warehouse, as written into the sandbox config.
DESTINATIONS = {"12": "WH-EAST", "13": "WH-WEST"}


class GenericEmulator(WarehouseEmulator):
    name = "generic"
    kind = "generic"
    webhook_source = Source.GENERIC  # receipt events

    # The sandbox's own made-up credentials, never a real one.
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        token: str = "3pl-sandbox-token",  # noqa: S107
        signing_secret: str | None = "3pl-sandbox-signing-secret",  # noqa: S107
        auth_header: str = "X-Api-Key",
        page_size: int = 50,
        duplicate_status: int = 409,
    ) -> None:
        super().__init__(clock=clock)
        self.token = token
        self.signing_secret = signing_secret
        self.auth_header = auth_header
        self.page_size = page_size
        self.duplicate_status = duplicate_status  # 200 or 409: both are in the contract
        self.rmas: dict[str, dict[str, Any]] = {}
        self.deliveries: Counter[str] = Counter()  # RMA number -> POSTs or files received
        self.bad_signatures: list[str] = []
        self.receipts: list[dict[str, Any]] = []  # the HTTP receipt feed
        self.root: Path | None = None  # set by folder_config: folder transport
        self._ids = itertools.count(1)
        self._seen_files: set[tuple[str, int, int]] = set()

    # -- HTTP -----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        if req.headers.get(self.auth_header) != self.token:
            return json_response({"error": "unauthorized"}, 401)
        parts = [p for p in req.path.split("/") if p]
        if req.method == "POST" and parts == ["rmas"]:
            return self._post_rma(req)
        if req.method == "GET" and len(parts) == 2 and parts[0] == "rmas":
            record = self.rmas.get(parts[1])
            return (
                json_response(record)
                if record
                else json_response({"error": f"no RMA {parts[1]}"}, 404)
            )
        if req.method == "GET" and parts == ["receipts"]:
            return self._get_receipts(req)
        return json_response({"error": "not found"}, 404)

    def _post_rma(self, req: Request) -> Response:
        if self.signing_secret is not None:
            problem = self._signature_problem(req)
            if problem:
                self.bad_signatures.append(str(req.headers.get(SIGNATURE_HEADER) or ""))
                return json_response({"error": problem}, 401)
        try:
            record = req.json()
        except ValueError:
            return json_response({"error": "body is not JSON"}, 400)
        problem = _rma_problem(record)
        if problem:
            return json_response({"error": problem}, 422)
        number = record["rma_number"]
        self.deliveries[number] += 1
        if number in self.rmas:
            return json_response(self.rmas[number], self.duplicate_status)
        self.rmas[number] = {**record, "status": "open"}
        return json_response(self.rmas[number], 201)

    def _signature_problem(self, req: Request) -> str | None:
        """As a careful 3PL checks it: fresh timestamp, then the HMAC of
        v1\\n<timestamp>\\n<METHOD>\\n<request target>\\n<body>, in constant time."""
        assert self.signing_secret is not None
        stamp = str(req.headers.get(TIMESTAMP_HEADER) or "")
        if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
            return "missing or malformed timestamp"
        if abs(self.clock.now().timestamp() - int(stamp)) > SIGNATURE_TOLERANCE:
            return "stale timestamp"
        target = req.raw_path or req.path
        message = f"v1\n{stamp}\n{req.method.upper()}\n{target}\n".encode() + req.body
        expected = (
            "sha256=" + hmac.new(self.signing_secret.encode(), message, hashlib.sha256).hexdigest()
        )
        given = str(req.headers.get(SIGNATURE_HEADER) or "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return "bad signature"
        return None

    def _get_receipts(self, req: Request) -> Response:
        try:
            since = parse_timestamp(req.query["since"]) if req.query.get("since") else None
            page = int(req.query.get("page") or 1)
            size = min(int(req.query.get("page_size") or self.page_size), self.page_size)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        if page < 1 or size < 1:
            return json_response({"error": "page and page_size start at 1"}, 400)
        rows = sorted(
            (
                r
                for r in self.receipts
                if since is None or parse_timestamp(r["received_at"]) >= since
            ),
            key=lambda r: (parse_timestamp(r["received_at"]), r["receipt_id"]),
        )
        chunk = rows[(page - 1) * size : page * size]
        more = page * size < len(rows)
        return json_response({"receipts": chunk, "next_page": page + 1 if more else None})

    # -- RMAs -----------------------------------------------------------------------------
    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        """A 3PL without a product API knows nothing of a return until loopsync sends it."""

    def has_rma(self, return_id: str) -> bool:
        self.import_outbox()
        return str(return_id) in self.rmas

    def rma_count(self, return_id: str) -> int:
        """RMAs held for the return: at most one, since the 3PL dedupes by number (see
        `deliveries` for how often loopsync sent it)."""
        return int(self.has_rma(return_id))

    def import_outbox(self, *, archive: bool = False) -> list[str]:
        """The 3PL picks up RMA files (folder transport); with `archive` it moves them to
        the archive folder as the contract allows. Returns the RMA numbers read."""
        if self.root is None:
            return []
        read = []
        with self.lock:
            for path in sorted((self.root / "outbox").glob("*.csv")):
                stat = path.stat()
                version = (path.name, stat.st_ino, stat.st_mtime_ns)
                lines = _read_rma_file(path.read_text(encoding="utf-8"))
                number = lines[0]["rma_number"]
                if version not in self._seen_files:
                    self._seen_files.add(version)
                    self.deliveries[number] += 1
                self.rmas.setdefault(
                    number, {"rma_number": number, "status": "open", "lines": lines}
                )
                read.append(number)
                if archive:
                    path.rename(self.root / "archive" / path.name)
        return read

    # -- receiving ------------------------------------------------------------------------
    def receive(self, return_id: str, scenario: str) -> bool:
        """full: every unit available; short: one unit missing; damaged: one unit damaged;
        over: one extra unit available; cancelled: nothing received."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        if not self.has_rma(return_id):
            return False
        with self.lock:
            lines = [
                (str(li["sku"]), int(li["quantity"])) for li in self.rmas[str(return_id)]["lines"]
            ]
        rows = _scenario_rows(lines, scenario)
        if rows:
            self.add_receipts(return_id, rows)
        return True

    def poison(self, return_id: str) -> bool:
        """One receipt (in the feed, or a file in the inbox) whose quantity is in
        full-width digits: "１２" passes str.isdigit() and int(); no reader may take it."""
        if not self.has_rma(return_id):
            return False
        with self.lock:
            sku = str(self.rmas[str(return_id)]["lines"][0]["sku"])
            record = {
                "receipt_id": f"R{next(self._ids):06d}",
                "rma_number": str(return_id),
                "sku": sku,
                "quantity": "１２",
                "condition": "available",
                "received_at": iso(self.clock.now()),
            }
            if self.root is None:
                self.receipts.append(record)
            else:
                self.write_receipt_file(
                    f"receipts-{return_id}-{record['receipt_id']}.csv", [record]
                )
        return True

    def add_receipts(
        self, return_id: str, rows: Iterable[tuple[str, int, str]], *, at: datetime | None = None
    ) -> list[dict[str, Any]]:
        """(sku, quantity, condition) rows received now: into the HTTP feed, or as one
        receipt file in the inbox for the folder transport."""
        when = iso(at or self.clock.now())
        with self.lock:
            records = [
                {
                    "receipt_id": f"R{next(self._ids):06d}",
                    "rma_number": str(return_id),
                    "sku": sku,
                    "quantity": qty,
                    "condition": condition,
                    "received_at": when,
                }
                for sku, qty, condition in rows
            ]
            if self.root is None:
                self.receipts.extend(records)
            else:
                self.write_receipt_file(
                    f"receipts-{return_id}-{records[0]['receipt_id']}.csv", records
                )
            if self.webhook_sender is not None and records:  # the receipt webhook, either transport
                body = {
                    "event": "receipt",
                    "event_id": f"receipt-{records[0]['receipt_id']}",
                    "rma_number": str(return_id),
                    "receipts": records,
                }
                self.webhook_sender.emit(Source.GENERIC, "receipt", str(return_id), body)
        return records

    # -- folder helpers -------------------------------------------------------------------
    def folder_config(self, root: Path) -> dict[str, Any]:
        """Switch to the folder transport under `root` and give its `warehouse:` section."""
        self.root = Path(root)
        for name in ("outbox", "inbox", "archive", "rejected"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return {
            "kind": "generic",
            "transport": "folder",
            "destinations": dict(DESTINATIONS),
            **{name: str(self.root / name) for name in ("outbox", "inbox", "archive", "rejected")},
        }

    def write_receipt_file(
        self,
        name: str,
        records: Iterable[Mapping[str, Any]],
        columns: Iterable[str] = RECEIPT_COLUMNS,
    ) -> Path:
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n"
        )
        writer.writeheader()
        writer.writerows(records)
        return self.write_inbox_file(name, out.getvalue())

    def write_inbox_file(self, name: str, text: str | bytes) -> Path:
        """Any content (malformed too) into the inbox, written then renamed, as a careful
        3PL does."""
        assert self.root is not None, "folder_config() first"
        final = self.root / "inbox" / name
        tmp = final.with_name(f".{name}.tmp")
        tmp.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        tmp.replace(final)
        return final

    # -- sandbox wiring -------------------------------------------------------------------
    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "kind": "generic",
            "transport": "http",
            "destinations": dict(DESTINATIONS),
            "rma_url": f"{base_url}/rmas",
            "receipts_url": f"{base_url}/receipts",
            "auth_header": self.auth_header,
            "auth_token": f"${{{TOKEN_ENV}}}",
            "page_size": self.page_size,
        }
        if self.signing_secret is not None:
            config["signing_secret"] = f"${{{SIGNING_ENV}}}"
        return config

    def secret_env(self) -> dict[str, str]:
        env = {TOKEN_ENV: self.token}
        if self.signing_secret is not None:
            env[SIGNING_ENV] = self.signing_secret
        return env


def _rma_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "body is not an object"
    if not isinstance(record.get("rma_number"), str) or not record["rma_number"]:
        return "rma_number must be a non-empty string"
    lines = record.get("lines")
    if not isinstance(lines, list) or not lines:
        return "lines must be a non-empty list"
    for n, line in enumerate(lines):
        qty = line.get("quantity") if isinstance(line, dict) else None
        if (
            not isinstance(line, dict)
            or not line.get("sku")
            or isinstance(qty, bool)
            or not isinstance(qty, int)
            or qty < 1
        ):
            return f"lines[{n}] needs a sku and a quantity >= 1"
    return None


def _read_rma_file(text: str) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        raise ValueError("RMA file without rows")
    return [
        {
            "rma_number": _as_text(r["rma_number"]),
            "sku": _as_text(r["sku"]),
            "quantity": int(r["quantity"]),
            "title": _as_text(r.get("title", "")),
        }
        for r in rows
    ]


def _as_text(cell: str) -> str:
    """As the contract tells a 3PL: a `'` before =, +, -, @, tab or CR only keeps a
    spreadsheet from running the cell; the value is what follows."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@", "\t", "\r") else cell


def _scenario_rows(lines: list[tuple[str, int]], scenario: str) -> list[tuple[str, int, str]]:
    if scenario == "cancelled":
        return []
    rows = [(sku, qty, "available") for sku, qty in lines]
    first, qty = lines[0]
    if scenario in ("short", "damaged"):
        rows[0] = (first, qty - 1, "available")
        rows.append((first, 1, "missing" if scenario == "short" else "damaged"))
    elif scenario == "over":
        rows.append((first, 1, "available"))
    return [row for row in rows if row[1] > 0]
