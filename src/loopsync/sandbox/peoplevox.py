"""Emulated Descartes PeopleVox IntegrationServiceV4 (SOAP 1.1) for tests and the demo.

What it plays (shared/reference/wms-apis.md, "PeopleVox fake (SOAP)"): SOAP envelopes
dispatched on SOAPAction or the body element at a case-insensitive path; Authenticate with
a base64 password; sessions that expire after `session_ttl` idle seconds on the injected
clock; in-band `ResponseId -1` errors; GetSaveTemplate; SaveData with real CSV parsing and
row validation; GetData / GetReportData with CSV Detail, TotalCount, paging and a small
filter language (GetData reads `SearchClause`, GetReportData `FilterClause`, each ignoring
the other's element as a SOAP service ignores an element it does not define; set
`honour_report_filter = False` to play a tenant that ignores the report filter); sessions
declared dead as an error answer or, with `session_fault = True`, as a SOAP Fault under
HTTP 500; throttling (more than 15 calls in 15 s -> SOAP Fault); a SOAP Fault
for malformed XML. Hooks play the warehouse people: receive, complete, cancel.

It shares no code with the connector on purpose: two readings of the protocol meet here.
"""

from __future__ import annotations

import base64
import binascii
import collections
import csv
import io
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loopsync.sandbox.base import SCENARIOS, WarehouseEmulator
from loopsync.sandbox.poison import FULL_WIDTH_DIGITS
from loopsync.sandbox.server import Request, Response, text_response
from loopsync.timeutil import Clock

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PVX_NS = "http://www.peoplevox.net/"
DATE_FORMAT = "%d/%m/%Y %H:%M:%S"  # how a UK tenant's reports show dates
PASSWORD_ENV = "PEOPLEVOX_PASSWORD"  # noqa: S105 - the name of a variable, not a password

RA_COLUMNS = [
    "ReturnAuthorizationNumber",
    "SalesOrderNumber",
    "ReturnTrackingNumber",
    "ReturnSenderName",
    "ReturnAuthorizationComments",
    "SiteReference",
    "CustomerPurchaseOrderReferenceNumber",
    "ExternalReference",
]
RA_ITEM_COLUMNS = [
    "ReturnAuthorizationNumber",
    "ItemCode",
    "ReturnAuthorizationItemLineNumber",
    "ReturnReason",
    "ReturnAuthorizationItemComments",
    "Quantity",
]
SALES_ORDER_COLUMNS = [
    "SalesOrderNumber",
    "CustomerPurchaseOrderReferenceNumber",
    "Attribute1",
    "Attribute2",
    "Attribute3",
    "Attribute4",
    "Attribute5",
]
RETURN_REASON_COLUMNS = ["Code", "Description"]
# An item-level returns report with the fields Refundid's PeopleVox guide lists.
REPORT_COLUMNS = [
    "Return code",
    "Return date",
    "Quantity",
    "Item name",
    "Item code",
    "Sales order number",
    "Return comments",
    "Is reusable",
    "RMA number",
    "RMA status",
    "RMA customer name",
    "RMA item line number",
    "RMA item reason",
    "RMA item expected state",
    "RMA item comment",
    "RMA comment",
    "RMA returns tracking number",
    "Return condition",
]

DEFAULT_REASONS = {
    "SIZE": "Wrong size",
    "DAMAGED": "Arrived damaged",
    "NOT_AS_DESCRIBED": "Not as described",
    "CHANGED_MIND": "Changed mind",
}


# -- SearchClause -----------------------------------------------------------------------


class ClauseError(ValueError):
    """The SearchClause cannot be read, or names a field the data does not have."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<field>\[[^\]]+\])
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<date>DateTime\s*\(\s*\d+(?:\s*,\s*\d+){2,5}\s*\))
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<method>\.\s*(?:Equals|Contains|StartsWith|EndsWith)\s*\()
    | (?P<op>==|!=|>=|<=|>|<|&&|\|\|)
    | (?P<paren>[()])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)

Row = Mapping[str, str]
Predicate = Callable[[Row], bool]
Literal = str | float | datetime


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ClauseError(f"cannot read the search clause at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word" and value.upper() in ("AND", "OR"):
            kind, value = "op", value.upper()
        elif kind == "op" and value in ("&&", "||"):
            value = "AND" if value == "&&" else "OR"
        out.append((kind, value))
        pos = m.end()
    return out


class _ClauseParser:
    """expr := term (OR term)* ; term := factor (AND factor)* ;
    factor := '(' expr ')' | field '.Method(' literal ')' | field op literal"""

    def __init__(self, text: str, columns: Sequence[str]) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.columns = columns

    def parse(self) -> Predicate:
        predicate = self.expr()
        if self.pos != len(self.tokens):
            raise ClauseError(f"unexpected {self.tokens[self.pos][1]!r} in the search clause")
        return predicate

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got = self.peek()
        if got[0] != kind or (value is not None and got[1] != value):
            raise ClauseError(f"expected {value or kind}, found {got[1] or 'the end'!r}")
        self.pos += 1
        return got[1]

    def expr(self) -> Predicate:
        left = self.term()
        while self.peek() == ("op", "OR"):
            self.pos += 1
            right = self.term()
            left = _either(left, right)
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.peek() == ("op", "AND"):
            self.pos += 1
            right = self.factor()
            left = _both(left, right)
        return left

    def factor(self) -> Predicate:
        if self.peek() == ("paren", "("):
            self.pos += 1
            inner = self.expr()
            self.take("paren", ")")
            return inner
        column = self.column()
        kind, value = self.peek()
        if kind == "method":
            self.pos += 1
            method = value.strip(". (\t")
            literal = self.literal()
            self.take("paren", ")")
            op = {
                "Equals": "==",
                "Contains": "contains",
                "StartsWith": "startswith",
                "EndsWith": "endswith",
            }[method]
        else:
            op = self.take("op")
            if op in ("AND", "OR"):
                raise ClauseError(f"expected a comparison after {column!r}")
            literal = self.literal()
        return lambda row: _compare(row.get(column, ""), op, literal)

    def column(self) -> str:
        kind, value = self.peek()
        if kind not in ("field", "word"):
            raise ClauseError(f"expected a field name, found {value or 'the end'!r}")
        self.pos += 1
        name = value[1:-1].strip() if kind == "field" else value
        for col in self.columns:
            if col.lower() == name.lower():
                return col
        raise ClauseError(f"Unknown field '{name}'")

    def literal(self) -> Literal:
        kind, value = self.peek()
        self.pos += 1
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        if kind == "number":
            return float(value)
        if kind == "date":
            parts = [int(p) for p in re.findall(r"\d+", value)]
            # PeopleVox clause dates carry no zone, nor do the cells they are compared with.
            return datetime(*parts)  # type: ignore[arg-type]  # noqa: DTZ001 - naive on purpose
        raise ClauseError(f"expected a value, found {value or 'the end'!r}")


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda row: a(row) or b(row)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda row: a(row) and b(row)


def compile_clause(text: str, columns: Sequence[str]) -> Predicate:
    """SearchClause -> row predicate; an empty clause matches everything."""
    if not text.strip():
        return lambda row: True
    return _ClauseParser(text, columns).parse()


def _compare(cell: str, op: str, literal: Literal) -> bool:
    value: Any
    if isinstance(literal, datetime):
        value = _read_date(cell)
    elif isinstance(literal, float):
        try:
            value = float(cell)
        except ValueError:
            value = None
    else:
        value = cell
    if value is None:
        return False
    if op in ("contains", "startswith", "endswith"):
        return isinstance(literal, str) and bool(
            {
                "contains": literal in value,
                "startswith": value.startswith(literal),
                "endswith": value.endswith(literal),
            }[op]
        )
    return bool(
        {
            "==": value == literal,
            "!=": value != literal,
            ">=": value >= literal,
            "<=": value <= literal,
            ">": value > literal,
            "<": value < literal,
        }[op]
    )


def _read_date(text: str) -> datetime | None:
    try:
        # Naive like the clause's dates (PeopleVox shows warehouse-local times, no zone).
        return datetime.strptime(text.strip(), DATE_FORMAT)  # noqa: DTZ007 - see above
    except ValueError:
        return None


# -- SOAP -------------------------------------------------------------------------------


@dataclass
class _SoapCall:
    operation: str
    params: dict[str, Any]
    credentials: dict[str, str]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _as_params(element: ET.Element) -> dict[str, Any]:
    """Children by local name: text for leaves, nested dicts for elements with children."""
    return {
        _local(child.tag): (_as_params(child) if len(child) else child.text or "")
        for child in element
    }


def _parse_envelope(body: bytes) -> tuple[ET.Element, dict[str, str]]:
    """(the operation element, the UserSessionCredentials fields). ValueError if not SOAP."""
    try:
        # The sandbox parses its own client's requests; the client refuses DTDs itself.
        root = ET.fromstring(body)  # noqa: S314 - trusted input, no defusedxml dependency
    except ET.ParseError as exc:
        raise ValueError(f"There is an error in XML document: {exc}") from None
    soap_body = root.find(f"{{{SOAP_NS}}}Body")
    if _local(root.tag) != "Envelope" or soap_body is None or len(soap_body) == 0:
        raise ValueError("The request is not a SOAP 1.1 envelope with a body")
    credentials: dict[str, str] = {}
    header = root.find(f"{{{SOAP_NS}}}Header")
    if header is not None:
        for el in header:
            if _local(el.tag) == "UserSessionCredentials":
                credentials = {k: v for k, v in _as_params(el).items() if isinstance(v, str)}
    return soap_body[0], credentials


def _envelope(body_child: ET.Element) -> bytes:
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    ET.SubElement(envelope, f"{{{SOAP_NS}}}Body").append(body_child)
    raw: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return raw.replace(b"\r", b"&#13;")  # keep CRs inside CSV text


def _xml(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, body, {"Content-Type": "text/xml; charset=utf-8", **(headers or {})})


def soap_fault(code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A SOAP 1.1 Fault (HTTP 500, as SOAP 1.1 sends faults); code is Client or Server."""
    fault = ET.Element(f"{{{SOAP_NS}}}Fault")
    ET.SubElement(fault, "faultcode").text = f"soap:{code}"
    ET.SubElement(fault, "faultstring").text = message
    return _xml(_envelope(fault), 500, headers)


def _result(operation: str, *, detail: str = "", total: int = 0, ok: bool = True) -> Response:
    response = ET.Element(f"{{{PVX_NS}}}{operation}Response")
    result = ET.SubElement(response, f"{{{PVX_NS}}}{operation}Result")
    ET.SubElement(result, f"{{{PVX_NS}}}ResponseId").text = "0" if ok else "-1"
    ET.SubElement(result, f"{{{PVX_NS}}}TotalCount").text = str(total)
    ET.SubElement(result, f"{{{PVX_NS}}}Detail").text = detail
    return _xml(_envelope(response))


def _csv(columns: Sequence[str], rows: Iterable[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # .NET CSV writers end lines with CRLF
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue()


# -- state ------------------------------------------------------------------------------


@dataclass
class _RaItem:
    fields: dict[str, str]
    received: int = 0
    condition: str = ""
    reusable: bool | None = None
    changed_at: datetime | None = None

    @property
    def sku(self) -> str:
        return self.fields["ItemCode"]

    @property
    def expected(self) -> int:
        return int(self.fields["Quantity"])


@dataclass
class _Ra:
    fields: dict[str, str]
    items: list[_RaItem] = field(default_factory=list)
    status: str = "Open"
    poison: dict[str, str] = field(default_factory=dict)  # report cells served as given

    @property
    def number(self) -> str:
        return self.fields["ReturnAuthorizationNumber"]


class _Refused(Exception):
    """A SaveData row PeopleVox would refuse; the message becomes part of Detail."""


class PeopleVoxEmulator(WarehouseEmulator):
    name = "peoplevox"
    kind = "peoplevox"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        client_id: str = "loopsync01",
        username: str = "api",
        password: str = "pvx-Pässwörd!",  # noqa: S107 - made up
        sites: Mapping[str, str] | None = None,
        session_ttl: float = 1800.0,
        throttle_enabled: bool = True,
        throttle_limit: int = 15,
        throttle_period: float = 15.0,
        returns_report: str = "Loop returns",
    ) -> None:
        super().__init__(clock=clock)
        self.client_id = client_id
        self.username = username
        self.password = password
        # Loop destination id -> PeopleVox site reference.
        self.destinations = dict(sites or {"12": "MAIN", "13": "RETURNS-UK"})
        self.session_ttl = session_ttl
        self.throttle_enabled = throttle_enabled
        self.throttle_limit = throttle_limit
        self.throttle_period = throttle_period
        self.returns_report = returns_report
        self.ra_template = "Return authorizations"
        self.ra_items_template = "Return authorizations items"
        # Import (save) template columns; tests may edit them to play another tenant.
        self.save_templates: dict[str, list[str]] = {
            self.ra_template: list(RA_COLUMNS),
            self.ra_items_template: list(RA_ITEM_COLUMNS),
        }
        self.sales_orders: list[dict[str, str]] = []
        self.items: dict[str, str] = {}  # SKU -> item name
        self.return_reasons: dict[str, str] = dict(DEFAULT_REASONS)
        self.ras: dict[str, _Ra] = {}
        self.operations: list[str] = []  # operations answered (not throttled), in order
        self.throttled = 0
        self.session_fault = False  # a dead session as a SOAP Fault (HTTP 500)
        self.honour_report_filter = True  # UNCONFIRMED upstream: may be ignored
        self._sessions: dict[str, float] = {}  # session id -> last used (monotonic)
        self._recent: collections.deque[float] = collections.deque()
        self._path = re.compile(
            rf"^/{re.escape(client_id)}/resources/integrationservicev4\.asmx/?$", re.IGNORECASE
        )

    # -- HTTP -----------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        if not self._path.match(req.path):
            return text_response("The resource cannot be found.", 404, "text/html")
        if req.method != "POST":
            return text_response("Request format is invalid.", 405, "text/html")
        if self.throttle_enabled and (wait := self._throttle_wait()) is not None:
            self.throttled += 1
            return soap_fault(
                "Server",
                f"Request limit exceeded: more than {self.throttle_limit}"
                f" requests in {self.throttle_period:g} seconds",
                {"Retry-After": f"{wait:.0f}"},
            )
        try:
            call = self._read_call(req)
        except ValueError as exc:
            return soap_fault("Client", f"Server was unable to read request. ---> {exc}")
        handler = self._handlers().get(call.operation)
        if handler is None:
            return soap_fault(
                "Client",
                f"Server did not recognize the value of HTTP Header SOAPAction: {call.operation}.",
            )
        self.operations.append(call.operation)
        if call.operation != "Authenticate" and not self._session_ok(call.credentials):
            if self.session_fault:
                return soap_fault(
                    "Server", "System.Web.Services.Protocols.SoapException: Invalid Session"
                )
            return _result(call.operation, detail="Invalid Session", ok=False)
        return handler(call.params)

    def is_write(self, req: Request) -> bool:
        return self.operation(req) == "SaveData"

    @staticmethod
    def operation(req: Request) -> str:
        """The operation a request asks for (SOAPAction, else the body element); "" when
        unreadable. Handy in `faults.inject(..., when=...)`."""
        action = (req.headers.get("SOAPAction") or "").strip().strip('"')
        if action:
            return action.rstrip("/").rsplit("/", 1)[-1]
        try:
            element, _ = _parse_envelope(req.body)
        except ValueError:
            return ""
        return _local(element.tag)

    def _read_call(self, req: Request) -> _SoapCall:
        element, credentials = _parse_envelope(req.body)
        body_op = _local(element.tag)
        action = self.operation(req)
        if action != body_op:
            raise ValueError(f"SOAPAction {action!r} does not match the body's {body_op!r}")
        return _SoapCall(body_op, _as_params(element), credentials)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Response]]:
        return {
            "Authenticate": self._authenticate,
            "GetSaveTemplate": self._get_save_template,
            "SaveData": self._save_data,
            "GetData": self._get_data,
            "GetReportData": self._get_report_data,
        }

    def _throttle_wait(self) -> float | None:
        """Seconds until a call is allowed again, or None when this one may go (and counts)."""
        now = self.clock.monotonic()
        while self._recent and self._recent[0] <= now - self.throttle_period:
            self._recent.popleft()
        if len(self._recent) >= self.throttle_limit:
            return max(1.0, self._recent[0] + self.throttle_period - now)
        self._recent.append(now)
        return None

    # -- sessions -------------------------------------------------------------------
    def _authenticate(self, params: dict[str, Any]) -> Response:
        try:
            password = base64.b64decode(str(params.get("password", "")), validate=True)
        except (binascii.Error, ValueError):
            return _result("Authenticate", detail="Password is not base64 encoded", ok=False)
        if (
            params.get("clientId") != self.client_id
            or params.get("username") != self.username
            or password != self.password.encode("utf-8")
        ):
            return _result("Authenticate", detail="Invalid username or password", ok=False)
        session_id = uuid.uuid4().hex
        self._sessions[session_id] = self.clock.monotonic()
        return _result("Authenticate", detail=f"{self.client_id},{session_id}")

    def _session_ok(self, credentials: Mapping[str, str]) -> bool:
        session_id = credentials.get("SessionId", "")
        last = self._sessions.get(session_id)
        now = self.clock.monotonic()
        if (
            last is None
            or credentials.get("ClientId") != self.client_id
            or now - last > self.session_ttl
        ):
            self._sessions.pop(session_id, None)
            return False
        self._sessions[session_id] = now
        return True

    def expire_sessions(self) -> None:
        """Every session ends now (the next call gets "Invalid Session")."""
        self._sessions.clear()

    # -- templates and data ---------------------------------------------------------
    def _get_save_template(self, params: dict[str, Any]) -> Response:
        columns = self._save_columns(str(params.get("templateName", "")))
        if columns is None:
            return _result(
                "GetSaveTemplate",
                ok=False,
                detail=f"Template '{params.get('templateName', '')}' does not exist",
            )
        return _result("GetSaveTemplate", detail=_csv(columns, []).rstrip("\r\n"))

    def _save_columns(self, template: str) -> list[str] | None:
        name = self._template_name(template)
        return None if name is None else self.save_templates[name]

    def _template_name(self, template: str) -> str | None:
        """The save template's own name; PeopleVox template names ignore case."""
        return next(
            (name for name in self.save_templates if name.lower() == template.strip().lower()), None
        )

    def _datasets(self) -> dict[str, tuple[list[str], Callable[[], list[dict[str, str]]]]]:
        """Exportable data by lower-case name: (columns, rows)."""
        return {
            "sales orders": (SALES_ORDER_COLUMNS, lambda: list(self.sales_orders)),
            "return reasons": (
                RETURN_REASON_COLUMNS,
                lambda: [{"Code": c, "Description": d} for c, d in self.return_reasons.items()],
            ),
            self.ra_template.lower(): (
                self.save_templates[self.ra_template],
                lambda: [ra.fields for ra in self.ras.values()],
            ),
            self.ra_items_template.lower(): (
                self.save_templates[self.ra_items_template],
                lambda: [i.fields for ra in self.ras.values() for i in ra.items],
            ),
            self.returns_report.lower(): (REPORT_COLUMNS, self._report_rows),
        }

    def _get_data(self, params: dict[str, Any]) -> Response:
        return self._read("GetData", params.get("getRequest") or {})

    def _get_report_data(self, params: dict[str, Any]) -> Response:
        return self._read("GetReportData", params.get("getReportRequest") or {})

    def _read(self, operation: str, request: Mapping[str, Any]) -> Response:
        name = str(request.get("TemplateName", ""))
        dataset = self._datasets().get(name.strip().lower())
        if dataset is None:
            return _result(operation, detail=f"Template '{name}' does not exist", ok=False)
        columns, rows_of = dataset
        try:
            wanted = self._wanted_columns(str(request.get("Columns", "")), columns)
            # Each operation reads its own element and ignores the other's.
            element = "FilterClause" if operation == "GetReportData" else "SearchClause"
            clause = str(request.get(element, ""))
            if operation == "GetReportData" and not self.honour_report_filter:
                clause = ""
            matches = compile_clause(clause, columns)
            page, per_page = int(request.get("PageNo") or 1), int(request.get("ItemsPerPage") or 0)
        except (ClauseError, ValueError) as exc:
            return _result(operation, detail=str(exc), ok=False)
        rows = [row for row in rows_of() if matches(row)]
        shown = rows if per_page <= 0 else rows[(page - 1) * per_page : page * per_page]
        return _result(operation, detail=_csv(wanted, shown), total=len(rows))

    @staticmethod
    def _wanted_columns(spec: str, columns: Sequence[str]) -> list[str]:
        """GetReportData's `Columns` ("[Item code],[Quantity]"); all when empty."""
        names = re.findall(r"\[([^\]]+)\]", spec)
        for name in names:
            if name not in columns:
                raise ClauseError(f"Unknown column '{name}'")
        return names or list(columns)

    def _save_data(self, params: dict[str, Any]) -> Response:
        request = params.get("saveRequest") or {}
        template = str(request.get("TemplateName", ""))
        name = self._template_name(template)
        if name is None:
            return _result("SaveData", detail=f"Template '{template}' does not exist", ok=False)
        columns = self.save_templates[name]
        records = list(csv.reader(io.StringIO(str(request.get("CsvData", "")), newline="")))
        if not records:
            return _result("SaveData", detail="CsvData is empty", ok=False)
        header, data = records[0], records[1:]
        unknown = [c for c in header if c not in columns]
        if unknown:
            return _result(
                "SaveData",
                ok=False,
                detail=f"Column '{unknown[0]}' is not in template '{template}'",
            )
        save_row = self._save_ra if name == self.ra_template else self._save_ra_item
        saved, problems = 0, []
        for number, values in enumerate(data, start=1):
            if len(values) != len(header):
                problems.append(f"Row {number}: {len(values)} values for {len(header)} columns")
                continue
            row = dict.fromkeys(columns, "") | dict(zip(header, values, strict=True))
            try:
                save_row(row)
                saved += 1
            except _Refused as exc:
                problems.append(f"Row {number}: {exc}")
        if problems:
            return _result("SaveData", detail="; ".join(problems), total=saved, ok=False)
        return _result("SaveData", total=saved)

    def _save_ra(self, row: dict[str, str]) -> None:
        number = row["ReturnAuthorizationNumber"].strip()
        if not number:
            raise _Refused("ReturnAuthorizationNumber is required")
        if number in self.ras:
            raise _Refused(f"Return authorization '{number}' already exists")
        site = row.get("SiteReference", "")
        if site not in self.destinations.values():
            raise _Refused(f"Site '{site}' does not exist")
        order = row.get("SalesOrderNumber", "")
        if order and not any(so["SalesOrderNumber"] == order for so in self.sales_orders):
            raise _Refused(f"Sales order '{order}' does not exist")
        self.ras[number] = _Ra(fields=row)

    def _save_ra_item(self, row: dict[str, str]) -> None:
        ra = self.ras.get(row["ReturnAuthorizationNumber"])
        if ra is None:
            raise _Refused(
                f"Return authorization '{row['ReturnAuthorizationNumber']}' does not exist"
            )
        if row["ItemCode"] not in self.items:
            raise _Refused(f"Item code '{row['ItemCode']}' does not exist")
        if not row["Quantity"].isdigit() or int(row["Quantity"]) < 1:
            raise _Refused(f"Quantity '{row['Quantity']}' is not a positive whole number")
        reason = row.get("ReturnReason", "")
        if reason and reason not in self.return_reasons:
            raise _Refused(f"Return reason '{reason}' does not exist")
        ra.items.append(_RaItem(fields=row))

    def _report_rows(self) -> list[dict[str, str]]:
        """One row per RA item line, joined with what the warehouse received for it."""
        rows = []
        for ra in self.ras.values():
            for n, item in enumerate(ra.items, start=1):
                rows.append(
                    {
                        "Return code": f"RT-{ra.number}-{n}" if item.received else "",
                        "Return date": item.changed_at.strftime(DATE_FORMAT)
                        if item.changed_at
                        else "",
                        "Quantity": str(item.received),
                        "Item name": self.items.get(item.sku, ""),
                        "Item code": item.sku,
                        "Sales order number": ra.fields.get("SalesOrderNumber", ""),
                        "Return comments": "",
                        "Is reusable": ""
                        if item.reusable is None
                        else ("Yes" if item.reusable else "No"),
                        "RMA number": ra.number,
                        "RMA status": ra.status,
                        "RMA customer name": ra.fields.get("ReturnSenderName", ""),
                        "RMA item line number": item.fields.get(
                            "ReturnAuthorizationItemLineNumber", ""
                        ),
                        "RMA item reason": item.fields.get("ReturnReason", ""),
                        "RMA item expected state": "",
                        "RMA item comment": item.fields.get("ReturnAuthorizationItemComments", ""),
                        "RMA comment": ra.fields.get("ReturnAuthorizationComments", ""),
                        "RMA returns tracking number": ra.fields.get("ReturnTrackingNumber", ""),
                        "Return condition": item.condition,
                    }
                    | ra.poison
                )
        return rows

    # -- hooks ----------------------------------------------------------------------
    def add_item(self, sku: str, name: str = "") -> None:
        self.items.setdefault(sku, name)

    def add_sales_order(self, number: str, **fields: str) -> None:
        if any(so["SalesOrderNumber"] == number for so in self.sales_orders):
            return
        self.sales_orders.append(
            dict.fromkeys(SALES_ORDER_COLUMNS, "") | {"SalesOrderNumber": number} | fields
        )

    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        """Know the return's SKUs and (unless with_order is False) its sales order:
        SalesOrderNumber = order name without '#', CustomerPurchaseOrderReferenceNumber =
        order number, Attribute1 = Shopify order id, Attribute2 = Loop order id."""
        with self.lock:
            for line in loop_return.get("line_items") or []:
                if line.get("sku"):
                    self.add_item(str(line["sku"]), str(line.get("title") or ""))
            if with_order:
                name = str(
                    loop_return.get("order_name")
                    or loop_return.get("order_number")
                    or loop_return["id"]
                )
                self.add_sales_order(
                    name.lstrip("#"),
                    CustomerPurchaseOrderReferenceNumber=str(loop_return.get("order_number") or ""),
                    Attribute1=str(loop_return.get("provider_order_id") or ""),
                    Attribute2=str(loop_return.get("order_id") or ""),
                )

    def has_rma(self, return_id: str) -> bool:
        return str(return_id) in self.ras

    def rma_count(self, return_id: str) -> int:
        with self.lock:
            return sum(
                1
                for ra in self.ras.values()
                if str(return_id) in (ra.number, ra.fields.get("ExternalReference"))
            )

    def ra(self, return_id: str) -> dict[str, Any] | None:
        """A copy of the RA as saved: header fields, item rows and status."""
        with self.lock:
            ra = self.ras.get(str(return_id))
            if ra is None:
                return None
            return {
                "header": dict(ra.fields),
                "items": [dict(i.fields) for i in ra.items],
                "status": ra.status,
            }

    def receive(self, return_id: str, scenario: str) -> bool:
        """full -> Completed; short/over -> Completed with discrepancies (first SKU one unit
        less/more); damaged -> Completed with the first SKU "Damaged", not reusable;
        cancelled -> Cancelled, nothing received."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        with self.lock:
            ra = self.ras.get(str(return_id))
            if ra is None or not ra.items:
                return False
            first = ra.items[0].sku
            expected = {i.sku: i.expected for i in ra.items}
        if scenario == "cancelled":
            self.complete(return_id, "Cancelled", received=dict.fromkeys(expected, 0))
        elif scenario in ("short", "over"):
            delta = -1 if scenario == "short" else 1
            self.complete(
                return_id,
                "Completed with discrepancies",
                received={first: max(0, expected[first] + delta)},
            )
        elif scenario == "damaged":
            self.complete(
                return_id, "Completed", conditions={first: "Damaged"}, reusable={first: False}
            )
        else:
            self.complete(return_id, "Completed")
        return True

    def poison(self, return_id: str) -> bool:
        """Completed, everything received, but the report's Quantity cells are in
        full-width digits ("１": Python's int() and str.isdigit() take it; no reader may)."""
        with self.lock:
            ra = self.ras.get(str(return_id))
            if ra is None or not ra.items:
                return False
        self.complete(return_id, "Completed")
        with self.lock:
            ra.poison = {"Quantity": str(ra.items[0].expected).translate(FULL_WIDTH_DIGITS)}
        return True

    def complete(
        self,
        return_id: str,
        status: str,
        *,
        conditions: Mapping[str, str] | None = None,
        reusable: Mapping[str, bool] | None = None,
        received: Mapping[str, int] | None = None,
    ) -> None:
        """Set the RA status and what arrived per SKU (default: everything expected, in
        "Good" condition, reusable). Every item's date moves to now."""
        conditions, reusable, received = conditions or {}, reusable or {}, received or {}
        now = self.clock.now().replace(tzinfo=None)
        with self.lock:
            ra = self.ras[str(return_id)]
            ra.status = status
            for item in ra.items:
                item.received = received.get(item.sku, item.expected)
                item.condition = conditions.get(item.sku, "Good" if item.received else "")
                item.reusable = reusable.get(item.sku, True) if item.received else None
                item.changed_at = now

    # -- sandbox wiring -------------------------------------------------------------
    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        return {
            "kind": "peoplevox",
            "base_url": base_url,
            "client_id": self.client_id,
            "username": self.username,
            "password": f"${{{PASSWORD_ENV}}}",
            "destinations": dict(self.destinations),
            # The seed's other reasons stay unmapped: they pass none, as Loop's guide says.
            "return_reasons": {
                "Too small": "SIZE",
                "Too large": "SIZE",
                "Damaged on arrival": "DAMAGED",
                "Not as described": "NOT_AS_DESCRIBED",
            },
            "grading": {
                "conditions": {"Good": "grade_a", "Worn": "grade_c", "Damaged": "grade_d"},
                "dispositions": {"reusable": "back_to_stock", "not reusable": "recycle"},
            },
        }

    def secret_env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.password}
