"""Descartes PeopleVox (SOAP 1.1, IntegrationServiceV4): return authorizations (RAs) from
Loop returns, and receipt status, item condition and reusability back.

The flow follows Loop's own PeopleVox integration:
- match the Loop return to a PeopleVox sales order (`Sales orders` export template);
- save the RA header (`Return authorizations` import) and one row per SKU
  (`Return authorizations items` import), the Loop return id being the RA number;
- read a merchant-built, item-level returns report (or an export template) for the RA
  status and per-item quantity, condition and reusability.

A session PeopleVox declares dead ("Invalid Session" and near wordings, in a
`ResponseId -1` answer, a SOAP Fault under HTTP 500, or a plain error page) is
re-established and the call repeated once, a write too: a call refused for its session did
not happen. Reads send the filter element their operation defines (`GetReportData`:
`FilterClause`; `GetData`: `SearchClause`), and the rows are filtered again here, since
whether the report filter is honoured is UNCONFIRMED.

Template and column names differ between tenants, so save columns come from
`GetSaveTemplate` and every name is configurable. Facts and their confidence:
shared/reference/wms-apis.md §B.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import threading
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Union

import requests
import structlog

from loopsync import redaction
from loopsync.configkit import Secret, Section
from loopsync.connectors.base import (ConnectorContext, NotReady, PollResult, PollStopped,
    PushRequest, WarehouseConnector, WarehouseSettings)
from loopsync.rules import normalize_status
from loopsync.errors import (Ambiguous, AuthError, DryRunViolation, ErrorBody, OutcomeUnknown,
                             PermanentError, RateLimited, Rejected, RemoteError,
                             TransientError, Unreadable)
from loopsync.http import HttpClient, HttpResult, parse_retry_after, shared_limiter
from loopsync.models import (MAX_YEAR, MIN_YEAR, ItemStatus, LoopReturn, ReturnLine, RmaRef,
                             RmaStatus, free_text, guarded, identifier, whole_number)
from loopsync.timeutil import Clock
from loopsync.connectors.base import KeyValue  # noqa: I001 - kept apart: fewer merge conflicts
from loopsync.paging import PageWalk, Step, record_walk

log = structlog.get_logger("loopsync.peoplevox")

SYSTEM = "peoplevox"
ARRIVAL_SLACK = 0.5  # seconds
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PVX_NS = "http://www.peoplevox.net/"
SERVICE_PATH = "resources/integrationservicev4.asmx"

ET.register_namespace("soap", SOAP_NS)
ET.register_namespace("pvx", PVX_NS)

ORDER_REFERENCES = ("SalesOrderNumber", "CustomerPurchaseOrderReferenceNumber",
                    "Attribute1", "Attribute2", "Attribute3", "Attribute4", "Attribute5")
LOOP_ORDER_FIELDS = ("order_name", "order_number", "provider_order_id", "order_id")
READ_OPERATIONS = ("GetReportData", "GetData")
FILTER_ELEMENT = {"GetReportData": "FilterClause", "GetData": "SearchClause"}

# Columns loopsync fills; the starred ones in Loop's guide must exist in the template.
RA_REQUIRED = ("ReturnAuthorizationNumber", "SiteReference")
RA_ITEM_REQUIRED = ("ReturnAuthorizationNumber", "ItemCode", "Quantity")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ELEMENT_START = re.compile(r"<[A-Za-z_:]")  # an element tag, not <? <! or </
_THROTTLE_WORDS = re.compile(r"throttl|too many (requests|calls)|rate limit|request limit",
                             re.IGNORECASE)
# PeopleVox declares a session dead in an error answer (ResponseId -1) or, through some
# paths, as a SOAP Fault under HTTP 500; the wording is UNCONFIRMED beyond "Invalid
# Session", so near variants count too. Either form: log in again and repeat once.
_DEAD_SESSION = re.compile(r"invalid session|session (has |is )?(expired|invalid|not valid|"
                           r"unknown|timed? ?out)|(no|unknown) session", re.IGNORECASE)
# UNCONFIRMED wordings of a passing server problem in a `ResponseId -1` answer.
_PASSING_TROUBLE = re.compile(r"time ?out|timed out|deadlock|temporar|try again|unavailable|"
                              r"server (is )?busy|internal (server )?error|an error has "
                              r"occurred|connection (was )?(lost|closed|reset)", re.IGNORECASE)
_TRUE_WORDS = frozenset({"yes", "y", "true", "1"})
_FALSE_WORDS = frozenset({"no", "n", "false", "0"})


# -- settings ---------------------------------------------------------------------------

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
        return [self.rma_number, self.rma_status, self.item_code, self.quantity,
                self.condition, self.reusable, self.date]


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
    max_pages: int = 1000       # pages one read may take (200,000 rows at the default size)


def parse_peoplevox_settings(section: Section) -> PeopleVoxSettings:
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
        order_reference=section.str("order_reference", "SalesOrderNumber",
                                    choices=ORDER_REFERENCES),
        loop_order_field=section.str("loop_order_field", "order_name",
                                     choices=LOOP_ORDER_FIELDS),
        return_reasons={reason_key(k): v for k, v in reasons.items()},
        rate_limit=rate_limit,
        rate_period=rate_period.total_seconds(),
        items_per_page=section.int("items_per_page", 200, min=1, max=5000),
        session_refresh=section.duration("session_refresh", timedelta(minutes=25),
                                         min=timedelta(minutes=1)),
        max_pages=section.int("max_pages", 1000, min=1),
    )


def _parse_templates(section: Section) -> tuple[TemplateNames, ReturnsData]:
    d = TemplateNames()
    names = TemplateNames(
        sales_orders=section.str("sales_orders", d.sales_orders),
        return_reasons=section.str("return_reasons", d.return_reasons),
        return_authorizations=section.str("return_authorizations", d.return_authorizations),
        return_authorization_items=section.str("return_authorization_items",
                                               d.return_authorization_items),
    )
    returns = _parse_returns(section.section("returns"))
    section.done()
    return names, returns


def _parse_returns(section: Section) -> ReturnsData:
    d = ReturnsData()
    cols = section.section("columns")
    dc = ReturnsColumns()
    columns = ReturnsColumns(**{name: cols.str(name, getattr(dc, name))
                                for name in ReturnsColumns.__dataclass_fields__})
    cols.done()
    date_format = section.str("date_format", d.date_format)
    if not _round_trips(date_format):
        raise section.error("date_format", f"{date_format!r} does not read back the date and"
                                           " time it writes (use e.g. %d/%m/%Y %H:%M:%S)")
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
    sample = datetime(2026, 1, 2, 3, 4, 5)
    try:
        return datetime.strptime(sample.strftime(date_format), date_format) == sample
    except ValueError:
        return False


def service_url(base_url: str, region: str | None, client_id: str) -> str:
    """The IntegrationServiceV4 address. `base_url` is a host ("https://emea.peoplevox.net",
    the default being a {region} template) or a full ...asmx address."""
    if "{region}" in base_url:
        if not region:
            raise ValueError("warehouse.region is required when base_url is not set")
        base_url = base_url.replace("{region}", region)
    base_url = base_url.rstrip("/")
    if base_url.lower().endswith(".asmx"):
        return base_url
    return f"{base_url}/{client_id}/{SERVICE_PATH}"


def reason_key(reason: str) -> str:
    """Loop reasons match the configured mapping ignoring case and spacing."""
    return " ".join(reason.casefold().split())


# -- errors -----------------------------------------------------------------------------

class PeopleVoxError(ErrorBody):
    """PeopleVox answered `ResponseId -1`; `detail` is its `Detail` text."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(SYSTEM, f"{operation}: {detail}", code="ResponseId -1")


class InvalidSession(PeopleVoxError):
    """The session expired or is unknown; the client logs in again and retries once."""


# -- SOAP envelopes ---------------------------------------------------------------------

Params = Mapping[str, Union[str, int, "Params"]]


@dataclass(frozen=True)
class SessionCredentials:
    client_id: str
    session_id: str


@dataclass(frozen=True)
class SoapResult:
    response_id: int
    detail: str
    total_count: int


@dataclass(frozen=True)
class SoapFault:
    code: str
    message: str


def _pvx(name: str) -> str:
    return f"{{{PVX_NS}}}{name}"


def _add_children(parent: ET.Element, params: Params) -> None:
    for name, value in params.items():
        child = ET.SubElement(parent, _pvx(name))
        if isinstance(value, Mapping):
            _add_children(child, value)
        else:
            child.text = str(value)


def build_envelope(operation: str, params: Params,
                   credentials: SessionCredentials | None = None) -> bytes:
    """A SOAP 1.1 request; `credentials` become the UserSessionCredentials header."""
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    if credentials is not None:
        header = ET.SubElement(envelope, f"{{{SOAP_NS}}}Header")
        _add_children(ET.SubElement(header, _pvx("UserSessionCredentials")),
                      {"UserId": "0", "ClientId": credentials.client_id,
                       "SessionId": credentials.session_id})
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    _add_children(ET.SubElement(body, _pvx(operation)), params)
    # XML parsers turn a literal CR into LF; a character reference keeps CRs in CSV text.
    return ET.tostring(envelope, encoding="utf-8", xml_declaration=True).replace(b"\r", b"&#13;")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _soap_body(text: str) -> ET.Element:
    """The Body element; ValueError when the text is not a SOAP envelope."""
    doctype = text.find("<!DOCTYPE")
    if doctype >= 0 and doctype < _first_element(text):
        # SOAP forbids a DTD; refusing it leaves no entity (billion laughs, an external
        # file) to expand, whatever the expat version's own limits.
        raise ValueError("not a SOAP envelope: it declares a DTD")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    body = root.find(f"{{{SOAP_NS}}}Body")
    if _local(root.tag) != "Envelope" or body is None:
        raise ValueError("not a SOAP envelope")
    return body


def _first_element(text: str) -> int:
    """Where the first element starts (a DTD may only come before it); len(text) if none."""
    found = _ELEMENT_START.search(text)
    return found.start() if found else len(text)


def parse_fault(text: str) -> SoapFault | None:
    """The SOAP Fault in `text`, or None when there is none (or the text is not SOAP)."""
    try:
        body = _soap_body(text)
    except ValueError:
        return None
    return _fault_in(body)


def parse_result(text: str, operation: str) -> SoapResult:
    """`<Op>Response/<Op>Result` -> SoapResult. ValueError when the answer is not one."""
    return _result_in(_soap_body(text), operation)


def _fault_in(body: ET.Element) -> SoapFault | None:
    """The Fault in a parsed SOAP Body, or None."""
    fault = body.find(f"{{{SOAP_NS}}}Fault")
    if fault is None:
        return None
    code = (fault.findtext("faultcode") or "").strip()
    return SoapFault(code=code, message=(fault.findtext("faultstring") or "").strip())


def _result_in(body: ET.Element, operation: str) -> SoapResult:
    """`<Op>Response/<Op>Result` in a parsed SOAP Body. ValueError when there is none."""
    result = next((el for el in body.iter() if _local(el.tag) == f"{operation}Result"), None)
    if result is None:
        raise ValueError(f"no {operation}Result in the answer")
    fields = {_local(child.tag): child.text or "" for child in result}
    response_id = fields.get("ResponseId", "").strip()
    if not _ascii_integer(response_id):  # int() would also read "１" or " 0 "
        raise ValueError(f"{operation}Result has no numeric ResponseId")
    total = fields.get("TotalCount", "").strip()
    return SoapResult(response_id=int(response_id), detail=fields.get("Detail", ""),
                      total_count=int(total) if _ascii_integer(total) else 0)


def _ascii_integer(text: str) -> bool:
    """'-1', '0', '250': ASCII digits with an optional minus, at most 18 of them."""
    digits = text[1:] if text.startswith("-") else text
    return 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit()


def fault_error(fault: SoapFault, *, idempotent: bool, retry_after: float | None = None
                ) -> Exception:
    """A SOAP Fault as loopsync's error: throttling, the client's mistake, or the server's."""
    text = f"SOAP fault {fault.code}: {fault.message}"
    if _DEAD_SESSION.search(fault.message):  # not a server error: the session is gone
        return InvalidSession("SOAP fault", text)
    if _THROTTLE_WORDS.search(fault.message):
        return RateLimited(SYSTEM, text, retry_after=retry_after, status=None, code=fault.code)
    if fault.code.split(":")[-1].lower().startswith("client"):
        return PermanentError(SYSTEM, text, code=fault.code)
    if idempotent:
        return TransientError(SYSTEM, text, code=fault.code)
    return OutcomeUnknown(SYSTEM, text, code=fault.code)


# -- CSV and SearchClause ---------------------------------------------------------------

def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    """CsvData: a header row, then each row in exactly `columns` (missing values empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(col, "") for col in columns])
    return out.getvalue()


@guarded("PeopleVox CSV")
def csv_rows(text: str) -> list[dict[str, str]]:
    """A Detail CSV (header row first) as dicts; quoted commas and newlines survive.
    Unreadable when it is not CSV (a field over the csv module's limit, ...)."""
    if not text.strip():
        return []
    try:
        return _csv_dicts(text)
    except csv.Error as exc:
        if "field limit" not in str(exc):
            raise Unreadable(f"PeopleVox CSV: {exc}") from None
    # One cell longer than the csv module's limit (a long comment) is its row's trouble,
    # not the whole report's: read again with a limit that fits the text (already capped
    # by the HTTP layer); the row parsers refuse an oversized value in a field they read.
    with _CSV_LIMIT_LOCK:
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, len(text) + 1))
        try:
            return _csv_dicts(text)
        except csv.Error as exc:
            raise Unreadable(f"PeopleVox CSV: {exc}") from None
        finally:
            csv.field_size_limit(limit)


_CSV_LIMIT_LOCK = threading.Lock()


def _csv_dicts(text: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    return [dict(zip(header, values + [""] * (len(header) - len(values)), strict=False))
            for values in reader if values]


@guarded("PeopleVox CSV header")
def csv_header(text: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise Unreadable(f"PeopleVox CSV header: {exc}") from None


def field_ref(name: str) -> str:
    """A column in a SearchClause: bare when an identifier, else [bracketed]."""
    return name if _IDENTIFIER.fullmatch(name) else f"[{name}]"


def string_literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def equals_clause(column: str, value: str) -> str:
    return f"{field_ref(column)}.Equals({string_literal(value)})"


def any_of_clause(column: str, values: Iterable[str]) -> str:
    return " OR ".join(f"{field_ref(column)} == {string_literal(v)}" for v in values)


def since_clause(column: str, when: datetime) -> str:
    return f"{field_ref(column)} >= DateTime({when:%Y,%m,%d,%H,%M,%S})"


# -- SOAP client ------------------------------------------------------------------------

class SoapHttpClient(HttpClient):
    """HttpClient that reads a SOAP Fault (HTTP 500 in SOAP 1.1) before the status code
    decides, so a client fault is not retried and a throttle fault waits.

    `throttle_wait` is the wait after a throttle answer without Retry-After: one window
    of the limit."""

    def __init__(self, *args: Any, throttle_wait: float = 15.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.throttle_wait = throttle_wait

    def raise_for_status(self, result: HttpResult, *, idempotent: bool) -> None:
        if result.status >= 400:
            fault = parse_fault(result.text)
            if fault is None and result.status in (401, 403, 500) and \
                    _DEAD_SESSION.search(result.text[:2000]):
                # Not SOAP but says the session is gone: retrying with it cannot help.
                raise InvalidSession(f"HTTP {result.status}",
                                     redaction.clip(result.text.strip(), 300))
            if fault is not None:
                hint = parse_retry_after(result.headers.get("Retry-After"), self.clock.now())
                raise fault_error(fault, idempotent=idempotent,
                                  retry_after=self.throttle_wait if hint is None else hint)
        super().raise_for_status(result, idempotent=idempotent)


def _xml_session() -> requests.Session:
    session = requests.Session()

    def utf8_unless_declared(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        # requests assumes ISO-8859-1 for text/* without a charset; XML's default is UTF-8.
        if "charset" not in resp.headers.get("Content-Type", "").lower():
            resp.encoding = "utf-8"

    session.hooks["response"].append(utf8_unless_declared)
    return session


class PeopleVoxClient:
    """IntegrationServiceV4 calls with a session: log in on first use, after
    `session_refresh` idle, and once more when PeopleVox says "Invalid Session"."""

    def __init__(self, http: HttpClient, settings: PeopleVoxSettings, clock: Clock, *,
                 dry_run: bool = False, stop: threading.Event | None = None,
                 kv: KeyValue | None = None) -> None:
        self.http = http
        self.settings = settings
        self.clock = clock
        self.dry_run = dry_run
        self.stop = stop  # checked between pages of a read
        self.kv = kv      # where unfinished reads are kept for `status`
        self._session: SessionCredentials | None = None
        self._last_used = 0.0

    # -- operations -----------------------------------------------------------------
    def get_save_template(self, template: str) -> list[str]:
        result = self.call("GetSaveTemplate", {"templateName": template})
        return csv_header(result.detail)

    def read_page(self, operation: str, name: str, *, page: int, where: str = "",
                  columns: Sequence[str] = (), per_page: int | None = None) -> SoapResult:
        request: dict[str, str | int] = {"TemplateName": name, "PageNo": page,
                                         "ItemsPerPage": per_page or self.settings.items_per_page}
        if operation == "GetReportData":
            request["Columns"] = ",".join(f"[{c}]" for c in columns)
        # Each operation's own filter element (wms-apis.md): GetReportData's is
        # FilterClause, GetData's SearchClause. Whether the report filter is honoured is
        # UNCONFIRMED, so callers filter the rows themselves too.
        request[FILTER_ELEMENT[operation]] = where
        wrapper = "getReportRequest" if operation == "GetReportData" else "getRequest"
        return self.call(operation, {wrapper: request})

    def read_all(self, operation: str, name: str, *, where: str = "",
                 columns: Sequence[str] = ()) -> list[dict[str, str]]:
        """Every matching row, paging while PageNo * ItemsPerPage < TotalCount.

        Through `paging.PageWalk`: a page identical to the one before (a server ignoring
        PageNo), the page cap or a stop between pages raises PaginationStopped rather
        than returning part of the rows as if they were all."""
        per_page = self.settings.items_per_page

        def fetch(token: Any) -> Step[list[dict[str, str]]]:
            page = token or 1
            result = self.read_page(operation, name, page=page, where=where, columns=columns)
            page_rows = csv_rows(result.detail)
            more = bool(page_rows) and page * per_page < result.total_count
            return Step(page_rows, more=more, token=page + 1,
                        fingerprint=hashlib.sha256(result.detail.encode("utf-8", "replace"))
                        .hexdigest())

        walk: PageWalk[list[dict[str, str]]] = PageWalk(
            fetch, name=f"peoplevox.{operation}.{name}", max_pages=self.settings.max_pages,
            stop=self.stop)
        rows: list[dict[str, str]] = []
        for fetched in walk:
            rows.extend(fetched.items)
        if self.kv is not None:
            record_walk(self.kv, walk.result, self.clock.now())
        if walk.result is not None and not walk.result.complete:
            raise walk.result.error(SYSTEM)
        return rows

    def save(self, template: str, columns: Sequence[str], rows: Sequence[Mapping[str, str]]
             ) -> int:
        """SaveData; returns the rows saved. Raises PeopleVoxError on ResponseId -1."""
        if self.dry_run:
            raise DryRunViolation(f"SaveData on {template!r} in a dry run")
        request = {"saveRequest": {"TemplateName": template,
                                   "CsvData": csv_text(columns, rows), "Action": "0"}}
        return self.call("SaveData", request, write=True).total_count

    # -- plumbing -------------------------------------------------------------------
    def call(self, operation: str, params: Params, *, write: bool = False) -> SoapResult:
        """One operation with the session header; a lost session is re-established and
        the call repeated once (it certainly did not happen)."""
        try:
            return self._send(operation, params, self._credentials(), write=write)
        except InvalidSession:
            log.info("peoplevox.session_expired", operation=operation)
            self._session = None
            try:
                return self._send(operation, params, self._credentials(), write=write)
            except InvalidSession as exc:
                # The login itself succeeded, so the credentials are good: a session that
                # dies at once is PeopleVox's passing trouble, not a refusal to back off
                # from (a refused login raises AuthError in _authenticate). Nothing ran.
                raise TransientError(SYSTEM, f"session lost again right after logging in: "
                                             f"{exc.detail}") from None

    def _credentials(self) -> SessionCredentials:
        idle = self.clock.monotonic() - self._last_used
        if self._session is None or idle >= self.settings.session_refresh.total_seconds():
            self._session = self._authenticate()
        # in use: kept among the masked tokens, whatever other merchants' logins register
        redaction.register(self._session.session_id, transient=True)
        return self._session

    def _authenticate(self) -> SessionCredentials:
        s = self.settings
        password = base64.b64encode(s.password.value.encode("utf-8")).decode("ascii")
        try:
            result = self._send("Authenticate", {"clientId": s.client_id,
                                                 "username": s.username,
                                                 "password": password}, None)
        except InvalidSession as exc:
            # A login answered with "Invalid Session" speaks of a session, not of the
            # credentials: PeopleVox's passing confusion, tried again next cycle rather
            # than backed off from as a refusal.
            raise TransientError(SYSTEM, f"Authenticate answered: {exc.detail}") from None
        except PeopleVoxError as exc:
            raise AuthError(SYSTEM, f"Authenticate refused: {exc.detail}") from None
        client_id, _, session_id = result.detail.partition(",")
        if not session_id.strip():
            raise AuthError(SYSTEM, "Authenticate answered without a session id")
        redaction.register(session_id.strip(), transient=True)  # a credential while it lives
        log.info("peoplevox.authenticated", client_id=client_id.strip() or s.client_id)
        return SessionCredentials(client_id=client_id.strip() or s.client_id,
                                  session_id=session_id.strip())

    def _send(self, operation: str, params: Params, credentials: SessionCredentials | None,
              *, write: bool = False) -> SoapResult:
        parsed: list[SoapResult] = []  # `check` runs inside the retry loop; keep its answer

        def check(result: HttpResult) -> None:
            parsed.append(read_answer(result, operation, idempotent=not write,
                                      throttle_wait=self.settings.rate_period))

        self.http.request("POST", self.http.base_url, data=build_envelope(operation, params,
                                                                         credentials),
                          headers={"Content-Type": "text/xml; charset=utf-8",
                                   "SOAPAction": f'"{PVX_NS}{operation}"'},
                          idempotent=not write, check=check)
        self._last_used = self.clock.monotonic()
        return parsed[-1]


def read_answer(result: HttpResult, operation: str, *, idempotent: bool,
                throttle_wait: float) -> SoapResult:
    """Turn a 2xx answer into a SoapResult or the error it carries."""
    try:
        body = _soap_body(result.text)  # parsed once, read for a Fault, then the Result
        fault = _fault_in(body)
        if fault is not None:  # fault_error's errors are no ValueError: they pass through
            raise fault_error(fault, idempotent=idempotent, retry_after=throttle_wait)
        answer = _result_in(body, operation)
    except ValueError as exc:
        message = f"{operation}: unreadable answer ({exc})"
        # A write whose answer is garbage may have happened: look it up before repeating.
        raise (TransientError if idempotent else OutcomeUnknown)(SYSTEM, message) from None
    if answer.response_id == 0:
        return answer
    detail = answer.detail.strip()
    if _DEAD_SESSION.search(detail):
        raise InvalidSession(operation, detail)
    if _THROTTLE_WORDS.search(detail):
        raise RateLimited(SYSTEM, f"{operation}: {detail}", retry_after=throttle_wait,
                          status=None)
    if _PASSING_TROUBLE.search(detail):
        # The server's own trouble, not the request's: a read is retried with backoff; a
        # write may have been applied, so it is looked up before it is repeated.
        raise (TransientError if idempotent else OutcomeUnknown)(
            SYSTEM, f"{operation}: {detail}", code="ResponseId -1")
    raise PeopleVoxError(operation, detail)


# -- the connector ----------------------------------------------------------------------

@dataclass(frozen=True)
class ItemLine:
    """One RA item row: a SKU with its units, reason code and comments."""

    line_number: int
    sku: str
    quantity: int
    reason: str
    comment: str


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
        http = SoapHttpClient(
            SYSTEM, service_url(settings.base_url, own.region, own.client_id),
            session=_xml_session(), timeout=settings.timeout,
            deadline=settings.deadline, max_body=settings.max_body,
            # The server counts arrivals, we count departures: a little slack on the period
            # keeps network jitter from pushing the 16th request into the same window.
            # One budget per PeopleVox client account in this process (merchants on one
            # account share it); the runner keeps its log across runs (`http.LimitHistory`).
            limiter=shared_limiter(SYSTEM, service_url(settings.base_url, own.region,
                                                       own.client_id),
                                   own.rate_limit, own.rate_period + ARRIVAL_SLACK, ctx.clock),
            policy=ctx.policy, clock=ctx.clock, throttle_wait=own.rate_period)
        self.client = PeopleVoxClient(http, own, ctx.clock, dry_run=ctx.dry_run, stop=ctx.stop,
                                      kv=ctx.kv)
        self._save_columns: dict[str, list[str]] = {}
        self._reason_codes: dict[str, str] | None = None

    @classmethod
    def parse_settings(cls, section: Section) -> PeopleVoxSettings:
        return parse_peoplevox_settings(section)

    def close(self) -> None:
        self.client.http.session.close()

    def rma_label(self, ref: RmaRef) -> str:
        return f"PeopleVox return authorization {ref.rma_id}"

    # -- locate ---------------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        """The sales order this Loop return belongs to (NotReady while it is missing)."""
        field_name = self.own.order_reference
        value = loop_order_value(req.ret, self.own.loop_order_field)
        if not value:
            raise Rejected(SYSTEM, f"Loop return {req.ret.id} has no {self.own.loop_order_field}"
                                   " to match a PeopleVox sales order")
        result = self.client.read_page("GetData", self.own.templates.sales_orders, page=1,
                                       where=equals_clause(field_name, value), per_page=10)
        orders = {row.get("SalesOrderNumber", ""): row for row in csv_rows(result.detail)}
        if not orders:
            raise NotReady(f"sales order {field_name} = {value!r} not found in PeopleVox")
        if len(orders) > 1:
            raise Ambiguous(SYSTEM, f"{len(orders)} PeopleVox sales orders have {field_name} = "
                                   f"{value!r}: {', '.join(sorted(orders))}")
        number, row = next(iter(orders.items()))
        if not number:
            raise PermanentError(SYSTEM, f"template {self.own.templates.sales_orders!r} does "
                                         "not export SalesOrderNumber")
        # Both go back to PeopleVox in the RA's CSV: refuse what would corrupt it.
        return {"sales_order_number": identifier(number, "SalesOrderNumber") or "",
                "customer_po_reference": free_text(
                    row.get("CustomerPurchaseOrderReferenceNumber", ""))}

    # -- find / create --------------------------------------------------------------
    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        """The RA if it exists with all its items. A header without (all) its items
        counts as missing: `create_rma` then saves only what is missing."""
        if not self._header_saved(req.ret.id):
            return None
        if self._missing_lines(req):
            return None
        return self._ref(req, located)

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        ra_number = req.ret.id
        lines = self.item_lines(req.ret)
        if not lines:
            raise Rejected(SYSTEM, f"Loop return {ra_number} has no line item with a SKU")
        # Both templates are checked before anything is saved: no header without items
        # because of a template set-up problem.
        header_columns = self._columns(self.own.templates.return_authorizations, RA_REQUIRED)
        item_columns = self._columns(self.own.templates.return_authorization_items,
                                     RA_ITEM_REQUIRED)
        header_existed = self._save_header(req, located, header_columns)
        if header_existed:
            lines = self._missing_lines(req, lines)
        if lines:
            self._save_items(ra_number, lines, item_columns, header_existed)
        log.info("peoplevox.ra_saved", return_id=ra_number, items=len(lines),
                 header_existed=header_existed)
        return self._ref(req, located)

    def _save_header(self, req: PushRequest, located: dict[str, Any], columns: list[str]
                     ) -> bool:
        """Save the RA header; True when an earlier attempt had already saved it."""
        template = self.own.templates.return_authorizations
        try:
            self.client.save(template, columns, [self.header_row(req, located)])
        except PeopleVoxError as exc:
            if self._header_saved(req.ret.id):
                return True  # a lost or failed earlier attempt got this far
            raise Rejected(SYSTEM, f"return authorization {req.ret.id} refused: {exc.detail}",
                           code=exc.code) from None
        return False

    def _save_items(self, ra_number: str, lines: Sequence[ItemLine], columns: list[str],
                    header_existed: bool) -> None:
        template = self.own.templates.return_authorization_items
        rows = [item_row(ra_number, line) for line in lines]
        try:
            self.client.save(template, columns, rows)
        except PeopleVoxError as exc:
            state = "existed" if header_existed else "was saved"
            raise Rejected(SYSTEM, f"return authorization {ra_number} {state} but its items"
                                   f" were refused: {exc.detail}", code=exc.code) from None

    def _header_saved(self, ra_number: str) -> bool:
        rows = self.client.read_all("GetData", self.own.templates.return_authorizations,
                                    where=equals_clause("ReturnAuthorizationNumber", ra_number))
        return any(r.get("ReturnAuthorizationNumber") == ra_number for r in rows)

    def _missing_lines(self, req: PushRequest, lines: Sequence[ItemLine] | None = None
                       ) -> list[ItemLine]:
        """The item lines of this return that PeopleVox does not have yet (by SKU)."""
        ra_number = req.ret.id
        rows = self.client.read_all("GetData", self.own.templates.return_authorization_items,
                                    where=equals_clause("ReturnAuthorizationNumber", ra_number))
        saved = {r.get("ItemCode", "") for r in rows
                 if r.get("ReturnAuthorizationNumber") == ra_number}
        wanted = self.item_lines(req.ret) if lines is None else lines
        return [line for line in wanted if line.sku not in saved]

    def _columns(self, template: str, required: Sequence[str]) -> list[str]:
        """The template's import columns (GetSaveTemplate, read once per connector)."""
        if template not in self._save_columns:
            columns = self.client.get_save_template(template)
            missing = [c for c in required if c not in columns]
            if missing:
                raise PermanentError(SYSTEM, f"template {template!r} lacks column(s) "
                                             f"{', '.join(missing)}; configure its import as "
                                             "Loop's PeopleVox guide shows")
            self._save_columns[template] = columns
        return self._save_columns[template]

    def _ref(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        return RmaRef(return_id=req.ret.id, rma_id=req.ret.id,
                      extra={"sales_order_number": located.get("sales_order_number", ""),
                             "expected": req.ret.units_by_sku()})

    # -- rows -----------------------------------------------------------------------
    def header_row(self, req: PushRequest, located: dict[str, Any]) -> dict[str, str]:
        ret = req.ret
        return {
            "ReturnAuthorizationNumber": ret.id,
            "SalesOrderNumber": str(located.get("sales_order_number", "")),
            "ReturnTrackingNumber": tracking_number(ret, req.asn_rows),
            "ReturnSenderName": ret.customer or "",
            "ReturnAuthorizationComments": f"Loop return {ret.id}"
                                           + (f" for order {ret.order_name}" if ret.order_name
                                              else ""),
            "SiteReference": req.destination,
            "CustomerPurchaseOrderReferenceNumber": str(located.get("customer_po_reference", "")),
            "ExternalReference": ret.order_name or "",
        }

    def item_lines(self, ret: LoopReturn) -> list[ItemLine]:
        """One line per SKU, in the order the SKUs first appear on the Loop return."""
        by_sku: dict[str, list[ReturnLine]] = defaultdict(list)
        for line in ret.line_items:
            if line.sku:
                by_sku[line.sku].append(line)
        out = []
        for number, (sku, loop_lines) in enumerate(by_sku.items(), start=1):
            comments = dict.fromkeys(li.comment.strip() for li in loop_lines if li.comment.strip())
            codes = (self.reason_code(li.return_reason, li.parent_return_reason)
                     for li in loop_lines)
            reason = next((code for code in codes if code), "")
            out.append(ItemLine(number, sku, len(loop_lines), reason, " | ".join(comments)))
        return out

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
            rows = self.client.read_all("GetData", self.own.templates.return_reasons)
            codes: dict[str, str] = {}
            for row in rows:
                code = row.get("Code", "")
                if code:
                    codes[reason_key(row.get("Description", ""))] = code
                    codes[reason_key(code)] = code
            self._reason_codes = codes
        code = self._reason_codes.get(reason_key(configured), "")
        if not code:
            log.warning("peoplevox.unknown_reason_code", configured=configured)
        return code

    # -- poll -----------------------------------------------------------------------
    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        """Statuses of the RMAs whose returns data was read. Incremental: after the first
        poll only RMAs with rows dated since the cursor (less `overlap`), and RMAs new to
        the poll set, are read; the others are left out (nothing new)."""
        data = self.own.returns
        cols = data.columns
        by_number = {ref.rma_id: ref for ref in rmas}
        cursor = self._date_cursor()
        seen_dates: list[datetime] = []
        if data.incremental and cursor is not None:
            swept = self.client.read_all(data.operation, data.name, columns=cols.all(),
                                         where=since_clause(cols.date, cursor - data.overlap))
            seen_dates += self._dates(swept)
            # Filtered here too: a service that ignores the filter sends the whole report.
            since = cursor - data.overlap
            changed = {row.get(cols.rma_number, "") for row in swept
                       if (d := parse_report_date(row.get(cols.date, ""), data.date_format))
                       is None or d >= since}
            previous = set(self.ctx.kv.get(self.KV_POLLED) or [])
            to_read = (changed | (by_number.keys() - previous)) & by_number.keys()
        else:
            to_read = set(by_number)
        rows, unread = self._rows_of(sorted(to_read))
        seen_dates += self._dates(rows)
        grouped: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in rows:
            grouped[row.get(cols.rma_number, "")].append(row)
        flag_conditions = self.settings.statuses.flag_conditions
        statuses, errors = {}, {}
        for n, why in unread.items():  # held: read in full next cycle (not in KV_POLLED)
            errors[by_number[n].return_id] = f"PeopleVox RA {n} not read this cycle: {why}"
        for n in sorted(to_read):
            if grouped.get(n):
                try:
                    statuses[by_number[n].return_id] = rma_status_from_rows(
                        by_number[n], grouped[n], cols, flag_conditions)
                except ValueError as exc:  # held, with the reason, until the data is fixed
                    errors[by_number[n].return_id] = f"PeopleVox RA {n}: {exc}"
        held = {n for n, ref in by_number.items() if ref.return_id in errors}
        new_cursor = next_date_cursor(cursor, seen_dates, self._now_naive())

        def commit() -> None:
            if new_cursor is not None:
                self.ctx.kv.set(self.KV_DATE_CURSOR, new_cursor.isoformat())
            # A held RA counts as new to the poll set: read in full until it reads well.
            self.ctx.kv.set(self.KV_POLLED, sorted(set(by_number) - held))

        return PollResult(statuses=statuses, errors=errors, on_commit=commit)

    def _rows_of(self, numbers: Sequence[str]
                 ) -> tuple[list[dict[str, str]], dict[str, str]]:
        """The report rows of these RAs, and the RAs whose read failed after its retries
        (with why): one failed request holds back only its own chunk. When nothing could
        be read at all the error is raised, once, for the whole poll."""
        data = self.own.returns
        batch = max(1, self.settings.poll_batch)
        rows: list[dict[str, str]] = []
        unread: dict[str, str] = {}
        failure: RemoteError | None = None
        read_any = False
        for start in range(0, len(numbers), batch):
            if start and self.ctx.stop.is_set():
                raise PollStopped(f"PeopleVox: stopped after {start} of {len(numbers)} RAs")
            chunk = numbers[start:start + batch]
            wanted = set(chunk)
            try:
                read = self.client.read_all(data.operation, data.name,
                                            columns=data.columns.all(),
                                            where=any_of_clause(data.columns.rma_number, chunk))
            except (TransientError, ErrorBody) as exc:  # credentials refused: stop now
                failure = exc
                unread.update(dict.fromkeys(chunk, str(exc)))
                log.warning("peoplevox.report_chunk_unread", ras=len(chunk), error=str(exc))
                continue
            read_any = True
            # Only this chunk's rows: with the filter ignored every chunk reads the whole
            # report, and keeping all of it would count each receipt once per chunk.
            rows += [row for row in read if row.get(data.columns.rma_number, "") in wanted]
        if failure is not None and not read_any:
            raise failure
        return rows, unread

    def _date_cursor(self) -> datetime | None:
        """The sweep's date cursor, pulled back to our clock if it was stored in the future
        (before the clamp, one row dated 2099 set it there for good)."""
        raw = self.ctx.kv.get(self.KV_DATE_CURSOR)
        try:
            stored = datetime.fromisoformat(raw).replace(tzinfo=None) if raw else None
        except (TypeError, ValueError):
            return None  # unreadable: sweep everything once, as on a first poll
        now = self._now_naive()
        if stored is not None and stored > now:
            log.warning("peoplevox.date_cursor_pulled_back", was=stored.isoformat(),
                        now=now.isoformat())
            return now
        return stored

    def _now_naive(self) -> datetime:
        return self.ctx.clock.now().astimezone(UTC).replace(tzinfo=None)

    def _dates(self, rows: Iterable[Mapping[str, str]]) -> list[datetime]:
        data = self.own.returns
        return [d for row in rows
                if (d := parse_report_date(row.get(data.columns.date, ""), data.date_format))]


# -- pure helpers -----------------------------------------------------------------------

def loop_order_value(ret: LoopReturn, loop_field: str) -> str:
    """The Loop value matched against the sales order reference ('#1001' -> '1001')."""
    value = getattr(ret, loop_field) or ""
    return value.lstrip("#").strip() if loop_field == "order_name" else value.strip()


def tracking_number(ret: LoopReturn, asn_rows: Sequence[Mapping[str, Any]]) -> str:
    """The return's tracking number, else the first one on its Loop ASN rows."""
    if ret.tracking_number:
        return ret.tracking_number
    return next((str(row["tracking_number"]) for row in asn_rows
                 if row.get("tracking_number")), "")


def item_row(ra_number: str, line: ItemLine) -> dict[str, str]:
    return {
        "ReturnAuthorizationNumber": ra_number,
        "ItemCode": line.sku,
        "ReturnAuthorizationItemLineNumber": str(line.line_number),
        "ReturnReason": line.reason,
        "ReturnAuthorizationItemComments": line.comment,
        "Quantity": str(line.quantity),
    }


def next_date_cursor(cursor: datetime | None, seen: Iterable[datetime],
                     now: datetime) -> datetime | None:
    """Where the returns sweep starts next time: the newest report date seen, never past
    our clock (`now`, naive UTC). A date after `now` is left out, not trusted: one row dated
    2099 would otherwise blind the sweep for good. Report dates are tenant-local, so a
    tenant east of UTC has recent rows that look future; leaving them out only re-reads
    them (the safe side)."""
    candidates = [d for d in seen if d <= now]
    if cursor is not None:
        candidates.append(min(cursor, now))
    return max(candidates, default=None)


def parse_report_date(text: str, date_format: str) -> datetime | None:
    """A report date (ISO or the configured format, tenant-local and naive); None if blank
    or unreadable, or outside MIN_YEAR..MAX_YEAR (it feeds the sweep cursor, which date
    arithmetic on year 1 would overflow)."""
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        return None
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, date_format)):
        try:
            when = parse(text).replace(tzinfo=None)
        except (ValueError, OverflowError):
            continue
        if MIN_YEAR <= when.year <= MAX_YEAR:
            return when
        break
    log.warning("peoplevox.unreadable_date", value=text[:40].encode("ascii", "replace").decode())
    return None


def disposition(reusable_words: Iterable[str]) -> str | None:
    """'Is reusable' over a SKU's rows: any 'no' wins, since a unit is not resellable."""
    words = {w.strip().lower() for w in reusable_words if w.strip()}
    if words & _FALSE_WORDS:
        return "not reusable"
    if words & _TRUE_WORDS:
        return "reusable"
    return None


def pick_condition(conditions: Sequence[str], flag_conditions: frozenset[str]) -> str | None:
    """A SKU received over several rows keeps the condition the flag rules care about,
    else its latest one."""
    present = [c.strip() for c in conditions if c.strip()]
    flagged = [c for c in present if normalize_status(c) in flag_conditions]
    return (flagged or present or [None])[-1]


@guarded("PeopleVox returns rows")
def rma_status_from_rows(ref: RmaRef, rows: Sequence[Mapping[str, str]], cols: ReturnsColumns,
                         flag_conditions: frozenset[str] = frozenset()) -> RmaStatus:
    """One RA's rows of the returns data -> RmaStatus. Expected units come from the RA as
    created (`ref.extra["expected"]`); received units, condition and reusability from rows.
    Unreadable naming the row and column when a row cannot be read."""
    expected = {str(sku): int(n) for sku, n in (ref.extra.get("expected") or {}).items()}
    received: dict[str, int] = defaultdict(int)
    conditions: dict[str, list[str]] = defaultdict(list)
    reusable: dict[str, list[str]] = defaultdict(list)
    for n, row in enumerate(rows, start=1):
        # A row that cannot be read holds the RA back (Unreadable): guessing a bad quantity
        # as 0, or skipping a row without an item code, would flag it as short.
        sku = identifier(row.get(cols.item_code), f"row {n}: {cols.item_code}")
        if not sku:
            raise Unreadable(f"row {n}: no {cols.item_code}", field=cols.item_code)
        text = row.get(cols.quantity) or ""
        text = text.strip() if isinstance(text, str) else text
        received[sku] += whole_number(text, f"row {n}: quantity") if text else 0
        conditions[sku].append(identifier(row.get(cols.condition), f"row {n}: {cols.condition}")
                               or "")
        reusable[sku].append(identifier(row.get(cols.reusable), f"row {n}: {cols.reusable}")
                             or "")
    skus = list(dict.fromkeys([*expected, *received]))
    items = tuple(ItemStatus(sku=sku, expected=expected.get(sku, 0), received=received.get(sku, 0),
                             condition=pick_condition(conditions[sku], flag_conditions),
                             disposition=disposition(reusable[sku]))
                  for sku in skus)
    status = next((s for n, row in enumerate(rows, start=1)
                   if (s := identifier(row.get(cols.rma_status), f"row {n}: {cols.rma_status}"))),
                  "")
    if not status:
        raise Unreadable(f"no {cols.rma_status} on any row", field=cols.rma_status)
    return RmaStatus(return_id=ref.return_id, rma_id=ref.rma_id, status=status,
                     expected_units=sum(i.expected for i in items),
                     received_units=sum(i.received for i in items), items=items)
