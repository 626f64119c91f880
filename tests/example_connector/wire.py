"""Shelfwise over HTTP: the bearer token, error answers, and the one listing walk.

Every call goes through `HttpClient.request` (timeouts, retries, limits); the create is
sent with `idempotent=False`, so an answer lost after sending reaches the engine as
`OutcomeUnknown` and the return is looked up before anything is sent again. The listing
follows `next_cursor` through `paging.PageWalk` (page cap, repeated-cursor guard) and
raises `PaginationStopped` for a walk that did not finish: a partial listing is never
taken for the whole one.
"""

from __future__ import annotations

from typing import Any

from loopsync.connectors.base import ConnectorContext, WarehouseSettings
from loopsync.errors import PermanentError, Rejected
from loopsync.http import HttpClient
from loopsync.paging import PageWalk, Step, record_walk

from .settings import ShelfwiseSettings

SYSTEM = "shelfwise"


class ShelfwiseClient:
    def __init__(
        self, settings: WarehouseSettings, own: ShelfwiseSettings, ctx: ConnectorContext
    ) -> None:
        self.own, self.ctx = own, ctx
        self.http = HttpClient(
            SYSTEM,
            settings.base_url,
            timeout=(min(5.0, settings.timeout), settings.timeout),
            deadline=settings.deadline,
            max_body=settings.max_body,
            policy=ctx.policy,
            clock=ctx.clock,
            headers={
                "Authorization": f"Bearer {own.api_token.value}",
                "Accept": "application/json",
            },
        )

    def orders_named(self, name: str) -> list[Any]:
        body = self.http.request("GET", "/v1/orders", params={"name": name}).data
        orders = body.get("orders") if isinstance(body, dict) else None
        return orders if isinstance(orders, list) else []

    def returns(self, references: list[str]) -> list[Any]:
        """Every Shelfwise return carrying one of `references`, page after page."""

        def fetch(cursor: Any) -> Step[list[Any]]:
            params = {"reference": ",".join(references), "limit": self.own.page_size}
            if cursor is not None:
                params["cursor"] = cursor
            body = self.http.request("GET", "/v1/returns", params=params).data
            rows = body.get("returns") if isinstance(body, dict) else None
            token = body.get("next_cursor") if isinstance(body, dict) else None
            token = token if isinstance(token, str) and token else None
            return Step(rows if isinstance(rows, list) else [], more=token is not None, token=token)

        walk: PageWalk[list[Any]] = PageWalk(
            fetch, name="shelfwise.returns", max_pages=self.own.max_pages, stop=self.ctx.stop
        )
        rows: list[Any] = []
        for page in walk:
            rows.extend(page.items)
        record_walk(self.ctx.kv, walk.result, self.ctx.clock.now())
        if walk.result is not None and not walk.result.complete:
            raise walk.result.error(SYSTEM)
        return rows

    def create(self, body: dict[str, Any]) -> Any:
        """POST the return; None when Shelfwise says the reference exists (409)."""
        try:
            answer = self.http.request("POST", "/v1/returns", json_body=body, idempotent=False)
        except PermanentError as exc:
            if exc.status == 409:
                return None
            if exc.status in (400, 422):
                raise Rejected(SYSTEM, exc.message, status=exc.status) from None
            raise
        return answer.data.get("return") if isinstance(answer.data, dict) else None

    def close(self) -> None:
        self.http.session.close()
