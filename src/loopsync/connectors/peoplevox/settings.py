"""PeopleVox's `warehouse:` keys: `parse_settings` reads them into `PeopleVoxSettings`.

Template and column names differ between tenants, so every name is configurable; the
defaults are the names in Loop's PeopleVox guide (docs/api/peoplevox.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from loopsync.configkit import Secret, Section

ORDER_REFERENCES = (
    "SalesOrderNumber",
    "CustomerPurchaseOrderReferenceNumber",
    "Attribute1",
    "Attribute2",
    "Attribute3",
    "Attribute4",
    "Attribute5",
)
LOOP_ORDER_FIELDS = ("order_name", "order_number", "provider_order_id", "order_id")
READ_OPERATIONS = ("GetReportData", "GetData")


@dataclass(frozen=True)
class TemplateNames:
    sales_orders: str = "Sales orders"
    return_reasons: str = "Return reasons"
    return_authorizations: str = "Return authorizations"
    return_authorization_items: str = "Return authorizations items"


@dataclass(frozen=True)
class ReturnsColumns:
    """Column names of the returns data (defaults: the Refundid item-level report fields)."""

    rma_number: str = "RMA number"
    rma_status: str = "RMA status"
    item_code: str = "Item code"
    quantity: str = "Quantity"
    condition: str = "Return condition"
    reusable: str = "Is reusable"
    date: str = "Return date"

    def all(self) -> list[str]:
        return [
            self.rma_number,
            self.rma_status,
            self.item_code,
            self.quantity,
            self.condition,
            self.reusable,
            self.date,
        ]


@dataclass(frozen=True)
class ReturnsData:
    """Where receipt status is read: a saved report (GetReportData) or an export template."""

    name: str = "Loop returns"
    operation: str = "GetReportData"
    columns: ReturnsColumns = field(default_factory=ReturnsColumns)
    incremental: bool = True
    overlap: timedelta = timedelta(minutes=10)
    date_format: str = "%d/%m/%Y %H:%M:%S"


@dataclass(frozen=True)
class PeopleVoxSettings:
    client_id: str
    username: str
    password: Secret
    region: str | None = None
    templates: TemplateNames = field(default_factory=TemplateNames)
    returns: ReturnsData = field(default_factory=ReturnsData)
    order_reference: str = "SalesOrderNumber"
    loop_order_field: str = "order_name"
    return_reasons: dict[str, str] = field(default_factory=dict)  # Loop reason -> PVX code
    rate_limit: int = 15
    rate_period: float = 15.0
    items_per_page: int = 200
    session_refresh: timedelta = timedelta(minutes=25)
    max_pages: int = 1000  # pages one read may take (200,000 rows at the default size)


def parse_settings(section: Section) -> PeopleVoxSettings:
    # With a base_url override the region is not needed to build the address.
    if section.has("base_url"):
        region = section.str("region", None, pattern=r"[A-Za-z0-9-]+")
    else:
        region = section.str("region", pattern=r"[A-Za-z0-9-]+")
    rate = section.section("rate_limit")
    rate_limit = rate.int("requests", 15, min=1)
    rate_period = rate.duration("per", timedelta(seconds=15), min=timedelta(seconds=1))
    rate.done()
    templates, returns = _parse_templates(section.section("templates"))
    reasons = section.str_map("return_reasons", {})
    return PeopleVoxSettings(
        client_id=section.str("client_id", pattern=r"[A-Za-z0-9_.-]+"),
        username=section.str("username"),
        password=section.secret("password"),
        region=region,
        templates=templates,
        returns=returns,
        order_reference=section.str(
            "order_reference", "SalesOrderNumber", choices=ORDER_REFERENCES
        ),
        loop_order_field=section.str("loop_order_field", "order_name", choices=LOOP_ORDER_FIELDS),
        return_reasons={reason_key(k): v for k, v in reasons.items()},
        rate_limit=rate_limit,
        rate_period=rate_period.total_seconds(),
        items_per_page=section.int("items_per_page", 200, min=1, max=5000),
        session_refresh=section.duration(
            "session_refresh", timedelta(minutes=25), min=timedelta(minutes=1)
        ),
        max_pages=section.int("max_pages", 1000, min=1),
    )


def _parse_templates(section: Section) -> tuple[TemplateNames, ReturnsData]:
    d = TemplateNames()
    names = TemplateNames(
        sales_orders=section.str("sales_orders", d.sales_orders),
        return_reasons=section.str("return_reasons", d.return_reasons),
        return_authorizations=section.str("return_authorizations", d.return_authorizations),
        return_authorization_items=section.str(
            "return_authorization_items", d.return_authorization_items
        ),
    )
    returns = _parse_returns(section.section("returns"))
    section.done()
    return names, returns


def _parse_returns(section: Section) -> ReturnsData:
    d = ReturnsData()
    cols = section.section("columns")
    dc = ReturnsColumns()
    columns = ReturnsColumns(
        **{name: cols.str(name, getattr(dc, name)) for name in ReturnsColumns.__dataclass_fields__}
    )
    cols.done()
    date_format = section.str("date_format", d.date_format)
    if not _round_trips(date_format):
        raise section.error(
            "date_format",
            f"{date_format!r} does not read back the date and"
            " time it writes (use e.g. %d/%m/%Y %H:%M:%S)",
        )
    data = ReturnsData(
        name=section.str("name", d.name),
        operation=section.str("operation", d.operation, choices=READ_OPERATIONS),
        columns=columns,
        incremental=section.bool("incremental", d.incremental),
        overlap=section.duration("overlap", d.overlap),
        date_format=date_format,
    )
    section.done()
    return data


def _round_trips(date_format: str) -> bool:
    # Naive on purpose: the format reads PeopleVox's naive, tenant-local report dates.
    sample = datetime(2026, 1, 2, 3, 4, 5)  # noqa: DTZ001 - see above
    try:
        return (
            datetime.strptime(  # noqa: DTZ007 - see above
                sample.strftime(date_format), date_format
            )
            == sample
        )
    except ValueError:
        return False


def reason_key(reason: str) -> str:
    """Loop reasons match the configured mapping ignoring case and spacing."""
    return " ".join(reason.casefold().split())
