"""Generic 3PL glue: deliver each Loop return as an RMA, read back what was received.

The transport (`wire_http.HttpTransport` or `wire_folder.FolderTransport`) is chosen by
`warehouse.transport`; both satisfy `Transport`. Receipt lines read are kept in the
connector's key-value state, so a status is computed over every line ever read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import structlog

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    PollResult,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.connectors.generic.mapping import (
    COMPLETE,
    DAMAGED,
    MISSING,
    PARTIAL,
    HeldRecord,
    ReceiptLine,
    ReceiptRead,
    archive_checked_key,
    lines_key,
    receipt_status,
    rma_record,
)
from loopsync.connectors.generic.settings import GenericSettings, parse_settings
from loopsync.connectors.generic.wire_folder import FolderTransport
from loopsync.connectors.generic.wire_http import HttpTransport
from loopsync.models import RmaRef
from loopsync.timeutil import iso

log = structlog.get_logger("loopsync.connectors.generic")


class Transport(Protocol):
    def has_rma(self, rma_number: str) -> bool: ...

    def deliver(self, record: dict[str, Any]) -> None: ...

    def read_receipts(self, rmas: Sequence[RmaRef]) -> ReceiptRead:
        """New receipt lines, the records held back, and what to do once the engine has
        stored the lines."""
        ...

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        """Lines of these RMAs that an earlier run read and put away (lost state)."""
        ...

    def close(self) -> None: ...


class GenericConnector(WarehouseConnector):
    kind: ClassVar[str] = "generic"
    default_base_url: ClassVar[str] = ""  # unused: the URLs are rma_url and receipts_url
    # Each poll reads the whole receipt feed (every inbox file, or every page since the
    # cursor), whatever the batch: one call for all open RMAs, not one per chunk.
    polls_all_at_once: ClassVar[bool] = True
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": [COMPLETE],
        "flag": [],
        "ignore": [PARTIAL],
    }
    default_flag_conditions: ClassVar[list[str]] = [DAMAGED, MISSING]

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.conf: GenericSettings = settings.connector
        self.transport: Transport = (
            HttpTransport(
                self.conf,
                settings.timeout,
                ctx,
                deadline=settings.deadline,
                max_body=settings.max_body,
            )
            if self.conf.transport == "http"
            else FolderTransport(self.conf)
        )

    @classmethod
    def parse_settings(cls, section: Section) -> GenericSettings:
        return parse_settings(section)

    # -- engine interface ------------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        return {}  # the 3PL needs nothing to exist first (no order or product lookup)

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        if not self.transport.has_rma(req.ret.id):
            return None
        ref = self._ref(req)
        # Found, not created: its receipts may have been read (and archived) by a run
        # whose state is lost; its first poll looks for them in what was archived.
        return RmaRef(ref.return_id, ref.rma_id, {**ref.extra, "found": True})

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        self.transport.deliver(rma_record(req))
        log.info("generic.rma_delivered", return_id=req.ret.id, transport=self.conf.transport)
        return self._ref(req)

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        if not rmas:
            return PollResult({})
        read = self.transport.read_receipts(rmas)
        new_lines = read.lines
        unchecked = {
            ref.rma_id
            for ref in rmas
            if ref.extra.get("found") and not self.ctx.kv.get(archive_checked_key(ref.rma_id))
        }
        if unchecked:  # archived lines first: what the inbox holds now is newer
            new_lines = self.transport.archived_receipts(unchecked) + new_lines
        new_by_rma: dict[str, dict[str, ReceiptLine]] = defaultdict(dict)
        for line in new_lines:
            new_by_rma[line.rma_number][line.key] = line  # later records win (corrections)
        result = PollResult({})
        _hold(result, read.held, {ref.rma_id: ref for ref in rmas})
        for ref in rmas:
            if ref.return_id in result.errors:
                continue
            lines = {**self._stored_lines(ref.rma_id), **new_by_rma.get(ref.rma_id, {})}
            try:
                result.statuses[ref.return_id] = receipt_status(
                    ref, lines.values(), self.conf.condition_map
                )
            except ValueError as exc:
                result.errors[ref.return_id] = str(exc)

        def commit() -> None:
            if self.ctx.dry_run:
                return  # a dry run leaves the 3PL's files and the cursor where they were
            self._store_lines(new_by_rma)  # first: the files may go only once this is kept
            for rma_number in unchecked:
                self.ctx.kv.set(archive_checked_key(rma_number), True)
            read.commit()

        result.on_commit = commit
        return result

    def rma_label(self, ref: RmaRef) -> str:
        return f"3PL RMA {ref.rma_id}"

    # -- receipt lines kept between polls (connector key-value state) ----------------------
    def _stored_lines(self, rma_number: str) -> dict[str, ReceiptLine]:
        raw = self.ctx.kv.get(lines_key(rma_number), {})
        return {key: ReceiptLine.from_json(key, rma_number, value) for key, value in raw.items()}

    def _store_lines(self, new_by_rma: Mapping[str, Mapping[str, ReceiptLine]]) -> None:
        for rma_number, lines in new_by_rma.items():
            stored = self.ctx.kv.get(lines_key(rma_number), {})
            stored.update({key: line.to_json() for key, line in lines.items()})
            self.ctx.kv.set(lines_key(rma_number), stored)

    def _ref(self, req: PushRequest) -> RmaRef:
        ret = req.ret
        return RmaRef(
            ret.id,
            ret.id,
            {"units": ret.units_by_sku(), "created_at": iso(ret.created_at or ret.updated_at)},
        )

    def close(self) -> None:
        self.transport.close()


def _hold(result: PollResult, held: Iterable[HeldRecord], by_number: Mapping[str, RmaRef]) -> None:
    """Records that could not be read: each holds back the RMA it names (its receipts are
    incomplete), or is a problem of no one RMA."""
    for record in held:
        ref = by_number.get(record.rma_number or "")
        if ref is None:
            result.problems.append(record.why)
        else:
            before = result.errors.get(ref.return_id)
            result.errors[ref.return_id] = f"{before}; {record.why}" if before else record.why
