"""The Loop Returns REST client (docs/api/loop.md): returns list, ASN, details, actions, notes,
grading and destinations.

Every call goes through `loopsync.http.HttpClient` (timeouts, the per-key limiter,
tenacity). Loop's quirks handled here:

- Actions answer HTTP 200 for state conflicts; success is only the body `"true"`/`true`.
- `nextPageUrl` may drop `from`/`state`/`paginate`, so each page is requested with our
  own parameters plus only the `cursor` taken from it. The walk goes through
  `paging.PageWalk`: a repeated or missing cursor, or the page cap, ends it instead of
  looping, loudly (`PaginationStopped`, after the pages read were yielded); the engine
  decides what that means for the window.
- Every list page carries Loop's `Date` header (`ReturnsPage.server_date`): Loop's own
  clock, so a window is never recorded as read past Loop's "now" when ours runs ahead.
- A 200 whose body is not JSON (a proxy's HTML page) is transient; for a write it means
  the outcome is unknown.

The pure helpers (`check_window`, `extract_cursor`, `classify_action_body`, ...) have no
I/O and are tested on their own.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import requests
import structlog

from loopsync.errors import (
    DryRunViolation,
    ErrorBody,
    OutcomeUnknown,
    PaginationStopped,
    PermanentError,
    StateConflict,
    TransientError,
)
from loopsync.http import (
    DEFAULT_MAX_BODY,
    HttpClient,
    HttpResult,
    RetryPolicy,
    error_text,
    shared_limiter,
)
from loopsync.loop_facts import (
    DISPOSITION_BATCH,
    LIST_FILTERS,
    LOOP_STATES,
    MAX_PAGE_SIZE,
    MAX_WINDOW,
    NOTE_MAX_CHARS,
    STATE_CONFLICT_CODES,
)
from loopsync.models import printable
from loopsync.paging import DEFAULT_MAX_PAGES, PageWalk, Step, WalkEnd
from loopsync.redaction import clip, redact, redact_obj
from loopsync.timeutil import Clock, loop_wire

log = structlog.get_logger("loopsync.loop_client")

SYSTEM = "loop"
# Re-exported: PaginationStopped lives in errors.py, the Loop facts in loop_facts.py.
__all__ = ["DISPOSITION_BATCH", "LOOP_STATES", "MAX_WINDOW", "PaginationStopped"]
# "Return is closed and therefore cannot be processed." / "Return is flagged and cannot be
# processed." (the cancel variant arrives as {"content": ...} without a code).
_STATE_CONFLICT_TEXT = re.compile(
    r"\breturn is (?:open|closed|cancell?ed|expired|review|flagged|processed)\b.*\bcannot be\b",
    re.IGNORECASE | re.DOTALL,
)

RETURN_LIST_PATH = "/warehouse/return/list"
RETURN_DETAILS_PATH = "/warehouse/return/details"
ASN_PATH = "/warehouse/reporting/asn"
GRADE_PATH = "/dispositioning/grade"
ASSESS_PATH = "/dispositioning/assess"
DESTINATIONS_PATH = "/destinations"

T = TypeVar("T")


@dataclass(frozen=True)
class ReturnsPage:
    """One page of the Detailed Returns List.

    `cursor` fetched this page (None for the first). `next_cursor` fetches the page after
    it: a checkpoint to resume from. None on the last page, and when a pagination guard
    trips after this page (nothing trustworthy to resume from: re-read the window).
    """

    returns: list[dict[str, Any]]
    next_cursor: str | None
    cursor: str | None
    server_date: datetime | None = None  # Loop's `Date` header: its own clock's "now"


# -- pure helpers ---------------------------------------------------------------------


def check_window(start: datetime, end: datetime) -> None:
    """Refuse what Loop would refuse (or we would misread): naive times, end < start,
    spans over 120 days (exactly 120 days is allowed)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("window bounds must be timezone-aware")
    if end < start:
        raise ValueError(f"window ends before it starts: {start.isoformat()} > {end.isoformat()}")
    if end - start > MAX_WINDOW:
        raise ValueError(
            f"window longer than {MAX_WINDOW.days} days: {start.isoformat()} .. {end.isoformat()}"
        )


def extract_cursor(next_page_url: str) -> str | None:
    """The `cursor` query parameter of a `nextPageUrl`, or None if absent or empty.

    Decoded with `unquote`, not form decoding: a literal '+' in a base64 cursor is data,
    not a space.
    """
    cursor = None
    for part in urlsplit(next_page_url).query.split("&"):
        name, sep, value = part.partition("=")
        if sep and unquote(name) == "cursor":
            cursor = unquote(value) or None
    return cursor


def truncate_note(content: str, limit: int = NOTE_MAX_CHARS) -> str:
    """Fit a note into Loop's limit, marking the cut with an ellipsis."""
    if len(content) <= limit:
        return content
    return content[: limit - 1] + "…"


def error_code(body: Any) -> str | None:
    """The `code` of an error envelope (`errors.code`, `error.code` or `code`)."""
    if not isinstance(body, dict):
        return None
    for key in ("errors", "error"):
        inner = body.get(key)
        if isinstance(inner, dict) and inner.get("code") is not None:
            return str(inner["code"])
    code = body.get("code")
    return None if code is None else str(code)


def is_state_conflict(code: str | None, message: str) -> bool:
    return code in STATE_CONFLICT_CODES or bool(_STATE_CONFLICT_TEXT.search(message))


def classify_action_body(body: Any, *, status: int = 200) -> None:
    """Return quietly when a 2xx action body means success (`"true"` or `true`).

    Otherwise raise StateConflict (the return's state refused the action) or ErrorBody.
    """
    if body is True or body == "true":
        return
    code = error_code(body)
    message = error_text(body) or f"unexpected action answer: {_snippet(body)}"
    if is_state_conflict(code, message):
        raise StateConflict(SYSTEM, message, status=status, code=code)
    raise ErrorBody(SYSTEM, message, status=status, code=code)


def parse_returns_body(body: Any, *, status: int = 200) -> tuple[list[dict[str, Any]], str | None]:
    """(returns, nextPageUrl) from a list answer: the paginated object or a bare array."""
    if isinstance(body, list):
        return body, None
    if isinstance(body, dict) and isinstance(body.get("returns"), list):
        next_url = body.get("nextPageUrl")
        return body["returns"], next_url if isinstance(next_url, str) and next_url else None
    raise read_error(body, "returns list", status)


def list_under(body: Any, key: str) -> list[dict[str, Any]]:
    """`body[key]` when the answer is `{key: [...]}`, else the answer is an error."""
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise read_error(body, key)
    return items


def read_error(body: Any, what: str, status: int = 200) -> ErrorBody:
    """The error for a 2xx read whose body is not what the endpoint returns."""
    try:
        message = error_text(body) or f"unexpected {what} body: {_snippet(body)}"
        code = error_code(body)
    except (RecursionError, ValueError):  # nested too deep, or an int too long to print
        message, code = f"unexpected {what} body (too deeply nested to show)", None
    return ErrorBody(
        SYSTEM, printable(message, 1000), status=status, code=printable(code, 100) if code else None
    )


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _snippet(value: Any, limit: int = 120) -> str:
    return clip(repr(value), limit)  # redacted before the cut: no secret prefix survives


def _return_path(return_id: str | int, action: str) -> str:
    rid = str(return_id).strip()
    if not (rid.isascii() and rid.isdigit()):  # it goes into the URL path ("１" is a digit)
        raise ValueError(f"Loop return id must be numeric: {return_id!r}")
    return f"/warehouse/return/{rid}/{action}"


def _require_json(result: HttpResult) -> None:
    """A read whose 200 body is not JSON came from something in between: retry it."""
    if not result.is_json:
        raise TransientError(
            SYSTEM, f"expected JSON, got {_snippet(result.text)}", status=result.status
        )


def _check_write(result: HttpResult) -> None:
    """A write whose 200 body is not JSON may or may not have happened."""
    if not result.is_json:
        raise OutcomeUnknown(
            SYSTEM, f"expected JSON, got {_snippet(result.text)}", status=result.status
        )


def _check_action(result: HttpResult) -> None:
    _check_write(result)
    classify_action_body(result.data, status=result.status)


def server_date(headers: Any) -> datetime | None:
    """The answer's `Date` header as an aware UTC datetime, None if absent or unreadable.
    It is the remote's clock: a second opinion on our own `now`."""
    value = headers.get("Date") if headers is not None else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):  # 3.10+: never None
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# Loop's names for how a walk ended early (kept: logs and stored problems use them).
_LOOP_REASONS = {
    WalkEnd.REPEATED: "repeated_cursor",
    WalkEnd.NO_CURSOR: "next_page_url_without_cursor",
    WalkEnd.CAPPED: "page_cap",
    WalkEnd.STOPPED: "stopped",
}


# -- the client -----------------------------------------------------------------------


class LoopClient:
    """One merchant's Loop API key. Reads retry; writes are sent once unless they
    certainly did not happen (see `loopsync.http`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        clock: Clock,
        policy: RetryPolicy | None = None,
        requests_per_minute: int = 280,
        page_size: int = 250,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        session: requests.Session | None = None,
        dry_run: bool = False,
        max_pages: int = DEFAULT_MAX_PAGES,
        stop: threading.Event | None = None,
        deadline: float | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}: {page_size}")
        if max_pages < 1:
            raise ValueError(f"max_pages must be >= 1: {max_pages}")
        self.page_size = page_size
        self.max_pages = max_pages
        self.stop = stop  # checked between pages of a walk (shutdown)
        self.last_server_date: datetime | None = None  # `Date` of the last ASN report
        self.details_server_date: datetime | None = None  # `Date` of the last details read
        self.dry_run = dry_run
        # Shared per key: merchants using one key share Loop's 300/min budget.
        limiter = shared_limiter(SYSTEM, api_key, requests_per_minute, 60, clock)
        self.http = HttpClient(
            SYSTEM,
            base_url,
            session=session,
            timeout=timeout,
            deadline=deadline,
            max_body=max_body,
            limiter=limiter,
            policy=policy,
            clock=clock,
            headers={"X-Authorization": api_key},
        )

    # -- reads --------------------------------------------------------------------------

    def iter_returns(
        self,
        start: datetime,
        end: datetime,
        state: str,
        *,
        cursor: str | None = None,
        filter: str = "updated_at",
    ) -> Iterator[ReturnsPage]:
        """Walk one window of one state, page by page, both bounds inclusive.

        `cursor` resumes a walk (a `next_cursor` saved from an earlier page). Raises
        PaginationStopped, after yielding what it read, when a guard ends the walk early.
        """
        check_window(start, end)
        if state not in LOOP_STATES:
            raise ValueError(f"unknown Loop state {state!r}; one of {', '.join(LOOP_STATES)}")
        if filter not in LIST_FILTERS:
            raise ValueError(f"unknown list filter {filter!r}; one of {', '.join(LIST_FILTERS)}")
        params = {
            "from": loop_wire(start),
            "to": loop_wire(end),
            "filter": filter,
            "state": state,
            "paginate": "true",
            "pageSize": str(self.page_size),
        }
        walk_info = {
            "state": state,
            "filter": filter,
            "window_from": params["from"],
            "window_to": params["to"],
        }

        def fetch(token: Any) -> Step[tuple[list[dict[str, Any]], datetime | None]]:
            query = params if token is None else {**params, "cursor": token}
            result = self.http.request("GET", RETURN_LIST_PATH, params=query, check=_require_json)
            returns, next_url = parse_returns_body(result.data, status=result.status)
            if next_url is not None and extract_cursor(next_url) is None:
                log.warning("loop.next_link_without_cursor", next_page_url=next_url, **walk_info)
            return Step(
                (returns, server_date(result.headers)),
                more=next_url is not None,
                token=extract_cursor(next_url) if next_url else None,
            )

        pages = PageWalk(
            fetch,
            name=f"loop.returns.{state}",
            first=cursor,
            max_pages=self.max_pages,
            stop=self.stop,
            **walk_info,
        )
        for page in pages:
            returns, date = page.items
            yield ReturnsPage(
                returns,
                page.next_token,  # type: ignore[arg-type]
                page.token,
                date,
            )  # type: ignore[arg-type]
        if pages.result is not None and not pages.result.complete:
            reason = _LOOP_REASONS[pages.result.outcome]
            log.warning(
                "loop.pagination_guard", reason=reason, pages=pages.result.pages, **walk_info
            )
            raise PaginationStopped(
                reason,
                f"pagination stopped early ({reason}) for state "
                f"{state} {params['from']}..{params['to']}; "
                "the window is incomplete",
                walk=pages.result,
            )

    def asn_report(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """ASN rows (one per returned line item) for the window; not paginated."""
        check_window(start, end)  # the 120-day cap is UNCONFIRMED for ASN; stay inside it
        result = self.http.request(
            "GET",
            ASN_PATH,
            check=_require_json,
            params={"from": loop_wire(start), "to": loop_wire(end)},
        )
        self.last_server_date = server_date(result.headers)
        body = result.data
        if not isinstance(body, list):
            raise read_error(body, "ASN report")
        return body

    def return_details(self, return_id: str | int) -> dict[str, Any]:
        result = self.http.request(
            "GET", RETURN_DETAILS_PATH, check=_require_json, params={"return_id": str(return_id)}
        )
        # Loop's clock at this read: settle delays are checked against it too (ours may jump).
        self.details_server_date = server_date(result.headers)
        body = result.data
        if not isinstance(body, dict) or "id" not in body:
            raise read_error(body, "return details")
        return body

    def notes(self, return_id: str | int) -> list[dict[str, Any]]:
        """The return's notes; Loop answers 422 when there are none."""
        try:
            body = self._get_json(_return_path(return_id, "notes"))
        except PermanentError as exc:
            if exc.status == 422:
                return []
            raise
        if body is False or body == "false":
            return []
        return list_under(body, "notes")

    def destinations(self) -> list[dict[str, Any]]:
        return list_under(self._get_json(DESTINATIONS_PATH), "destinations")

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.http.request("GET", path, params=params, check=_require_json).data

    # -- writes -------------------------------------------------------------------------

    def process(self, return_id: str | int, details: dict[str, Any] | None = None) -> None:
        """Queue processing. `details` become "Additional Details" on created orders."""
        self._action(return_id, "process", details)

    def flag(self, return_id: str | int) -> None:
        self._action(return_id, "flag")

    def cancel(self, return_id: str | int) -> None:
        self._action(return_id, "cancel")

    def close(self, return_id: str | int) -> None:
        self._action(return_id, "close")

    def add_note(self, return_id: str | int, content: str) -> None:
        """Add a note (not idempotent: every call adds one). Long text is truncated."""
        if not content.strip():
            raise ValueError("a Loop note needs content")
        self._refuse_in_dry_run("note", return_id)
        self.http.request(
            "POST",
            _return_path(return_id, "note"),
            json_body={"content": truncate_note(redact(content))},
            idempotent=False,
            check=_check_action,
        )

    def grade(self, items: list[dict[str, Any]]) -> list[Any]:
        """Grade line items in batches of 20. If a batch fails, the earlier ones stand."""
        return self._disposition(GRADE_PATH, items)

    def assess(self, items: list[dict[str, Any]]) -> list[Any]:
        """Set dispositions in batches of 20. If a batch fails, the earlier ones stand."""
        return self._disposition(ASSESS_PATH, items)

    def _action(
        self, return_id: str | int, action: str, body: dict[str, Any] | None = None
    ) -> None:
        self._refuse_in_dry_run(action, return_id)
        self.http.request(
            "POST",
            _return_path(return_id, action),
            json_body=None if body is None else redact_obj(body),
            idempotent=False,
            check=_check_action,
        )
        log.info("loop.action", action=action, return_id=str(return_id))

    def _disposition(self, path: str, items: list[dict[str, Any]]) -> list[Any]:
        self._refuse_in_dry_run(path.rsplit("/", 1)[-1], None)
        accepted: list[Any] = []
        for batch in batched(items, DISPOSITION_BATCH):
            # warehouse words may ride in the items: none of them is a secret for Loop
            result = self.http.request(
                "POST",
                path,
                json_body={"items": redact_obj(batch)},
                idempotent=False,
                check=_check_write,
            )
            if not isinstance(result.data, list):
                raise read_error(result.data, path.rsplit("/", 1)[-1], result.status)
            accepted.extend(result.data)
        return accepted

    def _refuse_in_dry_run(self, action: str, return_id: str | int | None) -> None:
        if self.dry_run:
            target = f" return {return_id}" if return_id is not None else ""
            raise DryRunViolation(f"dry run: refused to {action}{target} in Loop")
