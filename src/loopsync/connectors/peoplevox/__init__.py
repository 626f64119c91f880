"""Descartes PeopleVox (SOAP 1.1, IntegrationServiceV4): the connector package.

`settings` reads the `warehouse:` keys, `wire` talks SOAP (sessions, faults, CSV, paging),
`mapping` turns rows into typed models and Loop returns into RA rows (pure), `connector`
is the glue the engine uses. Facts and their confidence: docs/api/peoplevox.md.
"""

from loopsync.connectors.peoplevox.connector import PeopleVoxConnector
from loopsync.connectors.peoplevox.mapping import (
    ItemLine,
    header_row,
    item_row,
    next_date_cursor,
    parse_report_date,
    rma_status_from_rows,
)
from loopsync.connectors.peoplevox.settings import (
    PeopleVoxSettings,
    ReturnsColumns,
    ReturnsData,
    TemplateNames,
    parse_settings,
)
from loopsync.connectors.peoplevox.wire import (
    PeopleVoxClient,
    csv_rows,
    csv_text,
    parse_fault,
    parse_result,
    read_answer,
)
from loopsync.errors import InvalidSession, PeopleVoxError

__all__ = [
    "InvalidSession",
    "ItemLine",
    "PeopleVoxClient",
    "PeopleVoxConnector",
    "PeopleVoxError",
    "PeopleVoxSettings",
    "ReturnsColumns",
    "ReturnsData",
    "TemplateNames",
    "csv_rows",
    "csv_text",
    "header_row",
    "item_row",
    "next_date_cursor",
    "parse_fault",
    "parse_report_date",
    "parse_result",
    "parse_settings",
    "read_answer",
    "rma_status_from_rows",
]
