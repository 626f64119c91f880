"""PeopleVox glue: return authorizations (RAs) from Loop returns, receipt status back.

The flow follows Loop's own PeopleVox integration (docs/api/peoplevox.md):
- match the Loop return to a PeopleVox sales order (`Sales orders` export template);
- save the RA header (`Return authorizations` import) and one row per SKU
  (`Return authorizations items` import), the Loop return id being the RA number;
- read a merchant-built, item-level returns report (or an export template) for the RA
  status and per-item quantity, condition and reusability.
Save columns come from `GetSaveTemplate`. Transport in `wire`, pure reading in `mapping`.

Batched look-ups (`prepare`): one `GetData` of the sales orders of up to 50 returns and
one of their RA headers, each a SearchClause of `==` terms joined by OR (the clause
language the poll already relies on). A return whose order reference matched no row, or
whose RA header exists (its items are then checked), is looked up alone as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import structlog

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    Location,
    Locations,
    NotReady,
    PollResult,
    Prepared,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.connectors.peoplevox.mapping import (
    ItemLine,
    changed_ras,
    header_row,
    item_lines,
    item_row,
    loop_order_value,
    next_date_cursor,
    ra_statuses,
    reason_codes,
    report_dates,
    stored_date_cursor,
)
from loopsync.connectors.peoplevox.settings import PeopleVoxSettings, parse_settings, reason_key
from loopsync.connectors.peoplevox.wire import (
    SITES_TEMPLATE,
    SYSTEM,
    any_of_clause,
    build_client,
    csv_rows,
    equals_clause,
    since_clause,
    site_rows,
)
from loopsync.errors import Ambiguous, PeopleVoxError, PermanentError, Rejected
from loopsync.models import LoopReturn, RmaRef, free_text, identifier

log = structlog.get_logger("loopsync.peoplevox")

# Columns loopsync fills; the starred ones in Loop's guide must exist in the template.
RA_REQUIRED = ("ReturnAuthorizationNumber", "SiteReference")
RA_ITEM_REQUIRED = ("ReturnAuthorizationNumber", "ItemCode", "Quantity")
LOOKUP_BATCH = 50  # values per batched SearchClause (50 terms: about 2 KB of clause)


class PeopleVoxConnector(WarehouseConnector):
    kind = "peoplevox"
    default_base_url = "https://{region}.peoplevox.net"
    # The incremental poll keeps one set of polled RAs; chunks would overwrite each other's.
    polls_all_at_once: ClassVar[bool] = True
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["completed"],
        "flag": ["completed with discrepancies"],
        "ignore": ["open", "awaiting", "partially received"],
        "report": ["cancelled"],
    }
    default_flag_conditions: ClassVar[list[str]] = ["damaged"]

    KV_DATE_CURSOR = "returns_date_cursor"
    KV_POLLED = "returns_polled"

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        own: PeopleVoxSettings = settings.connector
        self.own = own
        self.client = build_client(settings, ctx)
        self._reason_codes: dict[str, str] | None = None
        self._ready_orders: Prepared[tuple[dict[str, str], ...]] = Prepared(ctx.clock)
        self._ready_headers: Prepared[bool] = Prepared(ctx.clock)  # RA header saved?

    @classmethod
    def parse_settings(cls, section: Section) -> PeopleVoxSettings:
        return parse_settings(section)

    def close(self) -> None:
        self.client.http.session.close()

    def rma_label(self, ref: RmaRef) -> str:
        return f"PeopleVox return authorization {ref.rma_id}"

    def list_locations(self) -> Locations:
        """PeopleVox sites (GetData on the "Sites" template: UNCONFIRMED, see wire)."""
        try:
            rows = self.client.read_all("GetData", SITES_TEMPLATE)
        except PeopleVoxError as exc:  # no such template in this tenant: say so, do not fail
            return Locations(
                "PeopleVox site",
                offered=False,
                note=f"template {SITES_TEMPLATE!r} not readable ({exc}); use "
                "the site references shown in PeopleVox",
            )
        return Locations(
            "PeopleVox site",
            tuple(Location(ref, name) for ref, name in site_rows(rows)),
            note=f"from template {SITES_TEMPLATE!r} (UNCONFIRMED name)",
        )

    def check_access(self) -> str:
        """Authenticate is the read-only call: a refused login raises AuthError."""
        self.client.get_save_template(self.own.templates.return_authorizations)
        return "credentials accepted (logged in, GetSaveTemplate read)"

    # -- locate ----------------------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        """The sales order this Loop return belongs to (NotReady while it is missing)."""
        field_name = self.own.order_reference
        value = loop_order_value(req.ret, self.own.loop_order_field)
        if not value:
            raise Rejected(
                SYSTEM,
                f"Loop return {req.ret.id} has no {self.own.loop_order_field}"
                " to match a PeopleVox sales order",
            )
        rows = self._ready_orders.take(req.ret.id)
        if rows is None:
            result = self.client.read_page(
                "GetData",
                self.own.templates.sales_orders,
                page=1,
                where=equals_clause(field_name, value),
                per_page=10,
            )
            rows = tuple(csv_rows(result.detail))
        if rows and not any(field_name in row for row in rows):
            raise PermanentError(
                SYSTEM, f"template {self.own.templates.sales_orders!r} does not export {field_name}"
            )
        # Only the rows that name this value: a tenant that ignores the SearchClause must
        # not give the return another customer's sales order.
        named = [row for row in rows if row.get(field_name, "").strip() == value]
        orders = {row.get("SalesOrderNumber", ""): row for row in named}
        if not orders:
            raise NotReady(f"sales order {field_name} = {value!r} not found in PeopleVox")
        if len(orders) > 1:
            raise Ambiguous(
                SYSTEM,
                f"{len(orders)} PeopleVox sales orders have {field_name} = "
                f"{value!r}: {', '.join(sorted(orders))}",
            )
        number, row = next(iter(orders.items()))
        if not number:
            raise PermanentError(
                SYSTEM,
                f"template {self.own.templates.sales_orders!r} does not export SalesOrderNumber",
            )
        # Both go back to PeopleVox in the RA's CSV: refuse what would corrupt it.
        return {
            "sales_order_number": identifier(number, "SalesOrderNumber") or "",
            "customer_po_reference": free_text(row.get("CustomerPurchaseOrderReferenceNumber", "")),
        }

    # -- find / create ---------------------------------------------------------------------
    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        """The RA if it exists with all its items. A header without (all) its items
        counts as missing: `create_rma` then saves only what is missing."""
        saved = self._ready_headers.take(req.ret.id)
        if saved is None:
            saved = self._header_saved(req.ret.id)
        if not saved:
            return None
        if self._missing_lines(req):
            return None
        return self._ref(req, located)

    def prepare(self, reqs: Sequence[PushRequest]) -> None:
        """Batched look-ups for the coming returns (see the module docstring)."""
        self._ready_orders.clear()
        self._ready_headers.clear()
        field_name = self.own.order_reference
        values = {
            r.ret.id: value
            for r in reqs
            if (value := loop_order_value(r.ret, self.own.loop_order_field))
        }
        rows_by_value: dict[str, list[dict[str, str]]] = {}
        for row in self._read_any_of(self.own.templates.sales_orders, field_name, values.values()):
            rows_by_value.setdefault(row.get(field_name, ""), []).append(row)
        for return_id, value in values.items():
            if value in rows_by_value:  # no row: looked up alone, as a missing order is
                self._ready_orders.put(return_id, tuple(rows_by_value[value]))
        ids = [r.ret.id for r in reqs]
        saved = {
            row.get("ReturnAuthorizationNumber", "")
            for row in self._read_any_of(
                self.own.templates.return_authorizations, "ReturnAuthorizationNumber", ids
            )
        }
        for return_id in ids:
            self._ready_headers.put(return_id, return_id in saved)

    def _read_any_of(
        self, template: str, column: str, values: Iterable[str]
    ) -> Iterator[dict[str, str]]:
        """Every row of `template` whose `column` is one of `values`, LOOKUP_BATCH a call."""
        distinct = sorted(set(values))
        for start in range(0, len(distinct), LOOKUP_BATCH):
            chunk = distinct[start : start + LOOKUP_BATCH]
            yield from self.client.read_all("GetData", template, where=any_of_clause(column, chunk))

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        ra_number = req.ret.id
        lines = self.item_lines(req.ret)
        if not lines:
            raise Rejected(SYSTEM, f"Loop return {ra_number} has no line item with a SKU")
        # Both templates are checked before anything is saved: no header without items
        # because of a template set-up problem.
        templates = self.own.templates
        header_columns = self.client.save_columns(templates.return_authorizations, RA_REQUIRED)
        item_columns = self.client.save_columns(
            templates.return_authorization_items, RA_ITEM_REQUIRED
        )
        header_existed = self._save_header(req, located, header_columns)
        if header_existed:
            lines = self._missing_lines(req, lines)
        if lines:
            self._save_items(ra_number, lines, item_columns, header_existed)
        log.debug(
            "peoplevox.ra_saved",
            return_id=ra_number,
            items=len(lines),
            header_existed=header_existed,
        )
        return self._ref(req, located)

    def _save_header(self, req: PushRequest, located: dict[str, Any], columns: list[str]) -> bool:
        """Save the RA header; True when an earlier attempt had already saved it."""
        template = self.own.templates.return_authorizations
        try:
            self.client.save(template, columns, [header_row(req, located)])
        except PeopleVoxError as exc:
            if self._header_saved(req.ret.id):
                return True  # a lost or failed earlier attempt got this far
            raise Rejected(
                SYSTEM, f"return authorization {req.ret.id} refused: {exc.detail}", code=exc.code
            ) from None
        return False

    def _save_items(
        self, ra_number: str, lines: Sequence[ItemLine], columns: list[str], header_existed: bool
    ) -> None:
        template = self.own.templates.return_authorization_items
        rows = [item_row(ra_number, line) for line in lines]
        try:
            self.client.save(template, columns, rows)
        except PeopleVoxError as exc:
            state = "existed" if header_existed else "was saved"
            raise Rejected(
                SYSTEM,
                f"return authorization {ra_number} {state} but its items"
                f" were refused: {exc.detail}",
                code=exc.code,
            ) from None

    def _header_saved(self, ra_number: str) -> bool:
        rows = self.client.read_all(
            "GetData",
            self.own.templates.return_authorizations,
            where=equals_clause("ReturnAuthorizationNumber", ra_number),
        )
        return any(r.get("ReturnAuthorizationNumber") == ra_number for r in rows)

    def _missing_lines(
        self, req: PushRequest, lines: Sequence[ItemLine] | None = None
    ) -> list[ItemLine]:
        """The item lines of this return that PeopleVox does not have yet (by SKU)."""
        ra_number = req.ret.id
        rows = self.client.read_all(
            "GetData",
            self.own.templates.return_authorization_items,
            where=equals_clause("ReturnAuthorizationNumber", ra_number),
        )
        saved = {
            r.get("ItemCode", "") for r in rows if r.get("ReturnAuthorizationNumber") == ra_number
        }
        wanted = self.item_lines(req.ret) if lines is None else lines
        return [line for line in wanted if line.sku not in saved]

    def _ref(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        return RmaRef(
            return_id=req.ret.id,
            rma_id=req.ret.id,
            extra={
                "sales_order_number": located.get("sales_order_number", ""),
                "expected": req.ret.units_by_sku(),
            },
        )

    # -- rows ------------------------------------------------------------------------------
    def item_lines(self, ret: LoopReturn) -> list[ItemLine]:
        """One line per SKU, each with the PeopleVox code of its Loop reason."""
        return item_lines(ret, self.reason_code)

    def reason_code(self, *loop_reasons: str) -> str:
        """The PeopleVox code mapped to a Loop reason; "" when unmapped (passes none)."""
        for reason in loop_reasons:
            configured = self.own.return_reasons.get(reason_key(reason)) if reason else None
            if configured:
                return self._known_reason_code(configured)
        return ""

    def _known_reason_code(self, configured: str) -> str:
        """Check the mapped value against the `Return reasons` export (a code, or a
        description standing for its code); an unknown one passes none, with a warning."""
        if self._reason_codes is None:
            self._reason_codes = reason_codes(
                self.client.read_all("GetData", self.own.templates.return_reasons)
            )
        code = self._reason_codes.get(reason_key(configured), "")
        if not code:
            log.warning("peoplevox.unknown_reason_code", configured=configured)
        return code

    # -- poll ------------------------------------------------------------------------------
    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        """Statuses of the RMAs whose returns data was read. Incremental: after the first
        poll only RMAs with rows dated since the cursor (less `overlap`), and RMAs new to
        the poll set, are read; the others are left out (nothing new)."""
        data = self.own.returns
        by_number = {ref.rma_id: ref for ref in rmas}
        cursor = stored_date_cursor(self.ctx.kv.get(self.KV_DATE_CURSOR), self._now_naive())
        seen_dates: list[datetime] = []
        to_read = set(by_number)
        if data.incremental and cursor is not None:
            since = cursor - data.overlap
            swept = self.client.read_all(
                data.operation,
                data.name,
                columns=data.columns.all(),
                where=since_clause(data.columns.date, since),
            )
            seen_dates += report_dates(swept, data)
            previous = set(self.ctx.kv.get(self.KV_POLLED) or [])
            to_read = (
                changed_ras(swept, data, since) | (by_number.keys() - previous)
            ) & by_number.keys()
        rows, unread = self.client.read_ras(
            data, sorted(to_read), batch=max(1, self.settings.poll_batch)
        )
        seen_dates += report_dates(rows, data)
        statuses, errors = ra_statuses(
            to_read, by_number, rows, data.columns, self.settings.statuses.flag_conditions, unread
        )
        held = {n for n, ref in by_number.items() if ref.return_id in errors}
        new_cursor = next_date_cursor(cursor, seen_dates, self._now_naive())

        def commit() -> None:
            if new_cursor is not None:
                self.ctx.kv.set(self.KV_DATE_CURSOR, new_cursor.isoformat())
            # A held RA counts as new to the poll set: read in full until it reads well.
            self.ctx.kv.set(self.KV_POLLED, sorted(set(by_number) - held))

        return PollResult(statuses=statuses, errors=errors, on_commit=commit)

    def _now_naive(self) -> datetime:
        return self.ctx.clock.now().astimezone(UTC).replace(tzinfo=None)
