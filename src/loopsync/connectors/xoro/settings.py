"""Xoro's `warehouse:` keys: `parse_settings` reads them into `XoroSettings`.

The ASN status, received-quantity, RMA-number and order-number field names are
UNCONFIRMED, hence configurable (docs/api/xoro.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from loopsync.configkit import Secret, Section

DATE_FORMATS = {"iso": "%Y-%m-%dT%H:%M:%SZ", "us": "%m/%d/%Y %I:%M:%S %p"}
# Stops a server that ignores `page` and never sends TotalPages or an empty page.
MAX_PAGES = 1000


@dataclass(frozen=True)
class XoroSettings:
    api_key: Secret
    api_secret: Secret
    match_by: str  # return_id | order_number
    asn_lookback: timedelta  # search ASNs from this long before the Loop return's creation
    date_format: str  # iso | us
    requests_per_second: int
    asn_status_field: str  # UNCONFIRMED, in AsnHeaderData
    received_qty_field: str  # UNCONFIRMED, in each AsnDetailData line
    rma_number_field: str  # UNCONFIRMED, in AsnHeaderData
    order_number_field: str  # UNCONFIRMED, in AsnHeaderData
    max_pages: int = MAX_PAGES  # pages one listing may take


def parse_settings(section: Section) -> XoroSettings:
    return XoroSettings(
        api_key=section.secret("api_key"),
        api_secret=section.secret("api_secret"),
        match_by=section.str("match_by", "return_id", choices=("return_id", "order_number")),
        asn_lookback=section.duration(
            "asn_lookback", "1d", min=timedelta(0), max=timedelta(days=30)
        ),
        # UNCONFIRMED which one getasn expects; both are seen in public clients.
        date_format=section.str("date_format", "iso", choices=tuple(DATE_FORMATS)),
        requests_per_second=section.int("requests_per_second", 2, min=1, max=10),
        asn_status_field=section.str("asn_status_field", "Status"),
        received_qty_field=section.str("received_qty_field", "QtyReceived"),
        rma_number_field=section.str("rma_number_field", "RmaNumber"),
        order_number_field=section.str("order_number_field", "OrderNumber"),
        max_pages=section.int("max_pages", MAX_PAGES, min=1),
    )
