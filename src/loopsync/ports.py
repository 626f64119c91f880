"""What the cycle's stages and effects need from the outside world, as protocols.

`LoopApi` is the part of `loop_client.LoopClient` the stages and effects call; tests pass
in-memory fakes of the same shape. It lives here, below `cycle`, `stages` and `effects`, so
each of them can name it without importing another (no import cycle). The warehouse side
is `connectors.base.WarehouseConnector`, an ABC every connector subclasses.

Two attributes are read with `getattr` by the ingest stage and the action effects, because
fakes may lack them: `last_server_date` (Loop's `Date` at the last ASN report) and
`details_server_date` (at the last return-details read); both are `datetime | None`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from loopsync.loop_client import ReturnsPage


class LoopApi(Protocol):
    """What the stages and effects need from loopsync.loop_client.LoopClient."""

    def iter_returns(
        self, start: datetime, end: datetime, state: str, *, cursor: str | None = None
    ) -> Iterable[ReturnsPage]: ...

    def asn_report(self, start: datetime, end: datetime) -> list[dict[str, Any]]: ...

    def return_details(self, return_id: str) -> dict[str, Any]: ...

    def process(self, return_id: str) -> None: ...

    def flag(self, return_id: str) -> None: ...

    def add_note(self, return_id: str, content: str) -> None: ...

    def notes(self, return_id: str) -> list[dict[str, Any]]: ...

    def grade(self, items: list[dict[str, Any]]) -> object: ...

    def assess(self, items: list[dict[str, Any]]) -> object: ...
