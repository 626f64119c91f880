"""PeopleVox's SOAP 1.1 transport (IntegrationServiceV4): envelopes, faults, sessions, CSV.

A session PeopleVox declares dead ("Invalid Session" and near wordings, in a
`ResponseId -1` answer, a SOAP Fault under HTTP 500, or a plain error page) is
re-established and the call repeated once, a write too: a call refused for its session did
not happen. Reads send the filter element their operation defines (`GetReportData`:
`FilterClause`; `GetData`: `SearchClause`); whether the report filter is honoured is
UNCONFIRMED, so callers filter the rows again. Every read walks its pages through
`paging.PageWalk`. Facts and their confidence: docs/api/peoplevox.md.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Union

import requests
import structlog

from loopsync import redaction
from loopsync.connectors.base import ConnectorContext, KeyValue, PollStopped, WarehouseSettings
from loopsync.connectors.peoplevox.settings import PeopleVoxSettings, ReturnsData
from loopsync.errors import (
    AuthError,
    DryRunViolation,
    ErrorBody,
    InvalidSession,
    OutcomeUnknown,
    PeopleVoxError,
    PermanentError,
    RateLimited,
    RemoteError,
    TransientError,
    Unreadable,
)
from loopsync.http import HttpClient, HttpResult, parse_retry_after, shared_limiter
from loopsync.models import guarded
from loopsync.paging import PageWalk, Step, record_walk
from loopsync.timeutil import Clock

log = structlog.get_logger("loopsync.peoplevox")


SYSTEM = "peoplevox"
ARRIVAL_SLACK = 0.5  # seconds
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PVX_NS = "http://www.peoplevox.net/"
SERVICE_PATH = "resources/integrationservicev4.asmx"


ET.register_namespace("soap", SOAP_NS)
ET.register_namespace("pvx", PVX_NS)

FILTER_ELEMENT = {"GetReportData": "FilterClause", "GetData": "SearchClause"}


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ELEMENT_START = re.compile(r"<[A-Za-z_:]")  # an element tag, not <? <! or </
_THROTTLE_WORDS = re.compile(
    r"throttl|too many (requests|calls)|rate limit|request limit", re.IGNORECASE
)
# PeopleVox declares a session dead in an error answer (ResponseId -1) or, through some
# paths, as a SOAP Fault under HTTP 500; the wording is UNCONFIRMED beyond "Invalid
# Session", so near variants count too. Either form: log in again and repeat once.
_DEAD_SESSION = re.compile(
    r"invalid session|session (has |is )?(expired|invalid|not valid|"
    r"unknown|timed? ?out)|(no|unknown) session",
    re.IGNORECASE,
)
# UNCONFIRMED wordings of a passing server problem in a `ResponseId -1` answer.
_PASSING_TROUBLE = re.compile(
    r"time ?out|timed out|deadlock|temporar|try again|unavailable|"
    r"server (is )?busy|internal (server )?error|an error has "
    r"occurred|connection (was )?(lost|closed|reset)",
    re.IGNORECASE,
)


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


# -- SOAP envelopes ------------------------------------------------------------------------

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


def build_envelope(
    operation: str, params: Params, credentials: SessionCredentials | None = None
) -> bytes:
    """A SOAP 1.1 request; `credentials` become the UserSessionCredentials header."""
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    if credentials is not None:
        header = ET.SubElement(envelope, f"{{{SOAP_NS}}}Header")
        _add_children(
            ET.SubElement(header, _pvx("UserSessionCredentials")),
            {"UserId": "0", "ClientId": credentials.client_id, "SessionId": credentials.session_id},
        )
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    _add_children(ET.SubElement(body, _pvx(operation)), params)
    # XML parsers turn a literal CR into LF; a character reference keeps CRs in CSV text.
    data: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return data.replace(b"\r", b"&#13;")


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
        root = ET.fromstring(text)  # noqa: S314 - a DTD is refused above: no entity to expand
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
    return SoapResult(
        response_id=int(response_id),
        detail=fields.get("Detail", ""),
        total_count=int(total) if _ascii_integer(total) else 0,
    )


def _ascii_integer(text: str) -> bool:
    """'-1', '0', '250': ASCII digits with an optional minus, at most 18 of them."""
    digits = text[1:] if text.startswith("-") else text
    return 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit()


def fault_error(
    fault: SoapFault, *, idempotent: bool, retry_after: float | None = None
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


# -- CSV and SearchClause ------------------------------------------------------------------


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
    return [
        dict(zip(header, values + [""] * (len(header) - len(values)), strict=False))
        for values in reader
        if values
    ]


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


# -- SOAP client ---------------------------------------------------------------------------


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
            if (
                fault is None
                and result.status in (401, 403, 500)
                and _DEAD_SESSION.search(result.text[:2000])
            ):
                # Not SOAP but says the session is gone: retrying with it cannot help.
                raise InvalidSession(
                    f"HTTP {result.status}", redaction.clip(result.text.strip(), 300)
                )
            if fault is not None:
                hint = parse_retry_after(result.headers.get("Retry-After"), self.clock.now())
                raise fault_error(
                    fault,
                    idempotent=idempotent,
                    retry_after=self.throttle_wait if hint is None else hint,
                )
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

    def __init__(
        self,
        http: HttpClient,
        settings: PeopleVoxSettings,
        clock: Clock,
        *,
        dry_run: bool = False,
        stop: threading.Event | None = None,
        kv: KeyValue | None = None,
    ) -> None:
        self.http = http
        self.settings = settings
        self.clock = clock
        self.dry_run = dry_run
        self.stop = stop  # checked between pages of a read
        self.kv = kv  # where unfinished reads are kept for `status`
        self._session: SessionCredentials | None = None
        self._last_used = 0.0
        self._save_columns: dict[str, list[str]] = {}

    # -- operations -----------------------------------------------------------------
    def get_save_template(self, template: str) -> list[str]:
        result = self.call("GetSaveTemplate", {"templateName": template})
        return csv_header(result.detail)

    def save_columns(self, template: str, required: Sequence[str]) -> list[str]:
        """The template's import columns (GetSaveTemplate, read once per client);
        PermanentError when a column loopsync fills is missing."""
        if template not in self._save_columns:
            columns = self.get_save_template(template)
            missing = [c for c in required if c not in columns]
            if missing:
                raise PermanentError(
                    SYSTEM,
                    f"template {template!r} lacks column(s) "
                    f"{', '.join(missing)}; configure its import as "
                    "Loop's PeopleVox guide shows",
                )
            self._save_columns[template] = columns
        return self._save_columns[template]

    def read_page(
        self,
        operation: str,
        name: str,
        *,
        page: int,
        where: str = "",
        columns: Sequence[str] = (),
        per_page: int | None = None,
    ) -> SoapResult:
        request: dict[str, str | int] = {
            "TemplateName": name,
            "PageNo": page,
            "ItemsPerPage": per_page or self.settings.items_per_page,
        }
        if operation == "GetReportData":
            request["Columns"] = ",".join(f"[{c}]" for c in columns)
        # Each operation's own filter element (docs/api/peoplevox.md): GetReportData's is
        # FilterClause, GetData's SearchClause. Whether the report filter is honoured is
        # UNCONFIRMED, so callers filter the rows themselves too.
        request[FILTER_ELEMENT[operation]] = where
        wrapper = "getReportRequest" if operation == "GetReportData" else "getRequest"
        return self.call(operation, {wrapper: request})

    def read_all(
        self, operation: str, name: str, *, where: str = "", columns: Sequence[str] = ()
    ) -> list[dict[str, str]]:
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
            return Step(
                page_rows,
                more=more,
                token=page + 1,
                fingerprint=hashlib.sha256(result.detail.encode("utf-8", "replace")).hexdigest(),
            )

        walk: PageWalk[list[dict[str, str]]] = PageWalk(
            fetch,
            name=f"peoplevox.{operation}.{name}",
            max_pages=self.settings.max_pages,
            stop=self.stop,
        )
        rows: list[dict[str, str]] = []
        for fetched in walk:
            rows.extend(fetched.items)
        if self.kv is not None:
            record_walk(self.kv, walk.result, self.clock.now())
        if walk.result is not None and not walk.result.complete:
            raise walk.result.error(SYSTEM)
        return rows

    def read_ras(
        self, data: ReturnsData, numbers: Sequence[str], *, batch: int
    ) -> tuple[list[dict[str, str]], dict[str, str]]:
        """The report rows of these RAs, and the RAs whose read failed after its retries
        (with why): one failed request holds back only its own chunk. When nothing could
        be read at all the error is raised, once, for the whole poll."""
        rows: list[dict[str, str]] = []
        unread: dict[str, str] = {}
        failure: RemoteError | None = None
        read_any = False
        for start in range(0, len(numbers), batch):
            if start and self.stop is not None and self.stop.is_set():
                raise PollStopped(f"PeopleVox: stopped after {start} of {len(numbers)} RAs")
            chunk = numbers[start : start + batch]
            wanted = set(chunk)
            try:
                read = self.read_all(
                    data.operation,
                    data.name,
                    columns=data.columns.all(),
                    where=any_of_clause(data.columns.rma_number, chunk),
                )
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

    def save(self, template: str, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> int:
        """SaveData; returns the rows saved. Raises PeopleVoxError on ResponseId -1."""
        if self.dry_run:
            raise DryRunViolation(f"SaveData on {template!r} in a dry run")
        request = {
            "saveRequest": {
                "TemplateName": template,
                "CsvData": csv_text(columns, rows),
                "Action": "0",
            }
        }
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
                raise TransientError(
                    SYSTEM, f"session lost again right after logging in: {exc.detail}"
                ) from None

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
            result = self._send(
                "Authenticate",
                {"clientId": s.client_id, "username": s.username, "password": password},
                None,
            )
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
        return SessionCredentials(
            client_id=client_id.strip() or s.client_id, session_id=session_id.strip()
        )

    def _send(
        self,
        operation: str,
        params: Params,
        credentials: SessionCredentials | None,
        *,
        write: bool = False,
    ) -> SoapResult:
        parsed: list[SoapResult] = []  # `check` runs inside the retry loop; keep its answer

        def check(result: HttpResult) -> None:
            parsed.append(
                read_answer(
                    result, operation, idempotent=not write, throttle_wait=self.settings.rate_period
                )
            )

        self.http.request(
            "POST",
            self.http.base_url,
            data=build_envelope(operation, params, credentials),
            headers={
                "Content-Type": "text/xml; charset=utf-8",
                "SOAPAction": f'"{PVX_NS}{operation}"',
            },
            idempotent=not write,
            check=check,
        )
        self._last_used = self.clock.monotonic()
        return parsed[-1]


def read_answer(
    result: HttpResult, operation: str, *, idempotent: bool, throttle_wait: float
) -> SoapResult:
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
        raise RateLimited(SYSTEM, f"{operation}: {detail}", retry_after=throttle_wait, status=None)
    if _PASSING_TROUBLE.search(detail):
        # The server's own trouble, not the request's: a read is retried with backoff; a
        # write may have been applied, so it is looked up before it is repeated.
        raise (TransientError if idempotent else OutcomeUnknown)(
            SYSTEM, f"{operation}: {detail}", code="ResponseId -1"
        )
    raise PeopleVoxError(operation, detail)


def build_client(settings: WarehouseSettings, ctx: ConnectorContext) -> PeopleVoxClient:
    """The session client of one merchant's PeopleVox account, paced by the account's
    shared limiter."""
    own: PeopleVoxSettings = settings.connector
    url = service_url(settings.base_url, own.region, own.client_id)
    http = SoapHttpClient(
        SYSTEM,
        url,
        session=_xml_session(),
        timeout=settings.timeout,
        deadline=settings.deadline,
        max_body=settings.max_body,
        # The server counts arrivals, we count departures: a little slack on the period
        # keeps network jitter from pushing the 16th request into the same window.
        # One budget per PeopleVox client account in this process (merchants on one
        # account share it); the runner keeps its log across runs (`http.LimitHistory`).
        limiter=shared_limiter(
            SYSTEM, url, own.rate_limit, own.rate_period + ARRIVAL_SLACK, ctx.clock
        ),
        policy=ctx.policy,
        clock=ctx.clock,
        throttle_wait=own.rate_period,
    )
    return PeopleVoxClient(http, own, ctx.clock, dry_run=ctx.dry_run, stop=ctx.stop, kv=ctx.kv)
