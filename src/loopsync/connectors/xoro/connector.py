"""Xoro glue (XoroERP REST): watch-only.

Xoro's own Shopify app imports each Loop return as an RMA and creates a linked ASN, so
loopsync never creates anything in Xoro. It finds the ASN of each Loop return by date
window (`asn/getasn?created_at_min&created_at_max&page`), and polls the ASNs of the open
RMAs the same way. When an ASN is closed the engine's rules process it (every line
received as expected) or flag it (a line short or over); an ASN received but not closed
waits, because Xoro keys its own action on the close.

Merchants who let loopsync decide must switch off Xoro's own Loop processing, or each
return is processed or flagged twice (docs/api/xoro.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import structlog

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    PollResult,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.connectors.xoro.mapping import (
    ASN_NUMBER,
    asn_header,
    asn_matches,
    asn_number_of,
    asn_status,
    field_text,
    order_key,
)
from loopsync.connectors.xoro.settings import XoroSettings, parse_settings
from loopsync.connectors.xoro.wire import SYSTEM, XoroClient
from loopsync.errors import Ambiguous, Unreadable
from loopsync.models import LoopReturn, RmaRef
from loopsync.timeutil import iso, parse_timestamp

log = structlog.get_logger("loopsync.connectors.xoro")


# Linking by return id, one ASN listing serves every return linked within this long (a
# push stage); an ASN Xoro imports meanwhile is found on the next cycle.
LISTING_REUSE = timedelta(seconds=60)


class XoroConnector(WarehouseConnector):
    kind: ClassVar[str] = "xoro"
    default_base_url: ClassVar[str] = "https://res.xorosoft.io/api/xerp"
    creates_rmas: ClassVar[bool] = False
    polls_all_at_once: ClassVar[bool] = True  # one ASN listing covers every open RMA
    # Xoro keys its own Loop action on the ASN close; "received" means not closed yet.
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["closed"],
        "flag": [],
        "ignore": ["open", "received"],
    }

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.conf: XoroSettings = settings.connector
        self._listing: tuple[datetime, datetime, list[dict[str, Any]]] | None = None
        self.client = XoroClient(self.conf, settings, ctx)

    @classmethod
    def parse_settings(cls, section: Section) -> XoroSettings:
        return parse_settings(section)

    # -- engine interface ------------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        return {}

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        """The ASN Xoro's app created for this Loop return, or None while it has not
        imported the return yet."""
        ret = req.ret
        # Never from the future: a return stamped 2099 would search an empty window.
        since = min(ret.created_at or ret.updated_at, self.ctx.clock.now()) - self.conf.asn_lookback
        matches = [asn for asn in self._asns_for_linking(since) if asn_matches(asn, req, self.conf)]
        if not matches:
            return None
        if len(matches) > 1:
            numbers = ", ".join(sorted(asn_number_of(a) for a in matches))
            raise Ambiguous(
                SYSTEM,
                f"several Xoro ASNs match return {ret.id} by "
                f"{self.conf.match_by}: {numbers}; use match_by: return_id",
            )
        header = asn_header(matches[0])
        asn_number = asn_number_of(matches[0])
        if not asn_number:  # it could never be polled: hold the return with the reason
            raise Unreadable(
                f"the Xoro ASN matching return {ret.id} has no readable {ASN_NUMBER}",
                field=ASN_NUMBER,
            )
        rma_number = field_text(header.get(self.conf.rma_number_field)) or asn_number
        log.info("xoro.asn_found", return_id=ret.id, rma=rma_number, asn=asn_number)
        return RmaRef(ret.id, rma_number, {"asn_number": asn_number, "search_from": iso(since)})

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        """One date-window listing covers every RMA in the batch."""
        if not rmas:
            return PollResult({})
        since = min(parse_timestamp(ref.extra["search_from"]) for ref in rmas)
        asns, failure = self.client.read_asns(since, in_poll=True)
        by_number = {asn_number_of(asn): asn for asn in asns}
        result = PollResult({})
        for ref in rmas:
            asn = by_number.get(ref.extra["asn_number"])
            if asn is None:
                # With the listing cut short the ASN may be on an unread page: it waits
                # for the next cycle; the ASNs read meanwhile still decide their returns.
                result.errors[ref.return_id] = (
                    f"Xoro ASN {ref.extra['asn_number']} not read this cycle: the ASN "
                    f"listing stopped early ({failure})"
                    if failure is not None
                    else f"Xoro ASN {ref.extra['asn_number']} not found among the ASNs created "
                    f"since {iso(since)}"
                )
                continue
            try:
                result.statuses[ref.return_id] = asn_status(ref, asn, self.conf)
            except ValueError as exc:
                result.errors[ref.return_id] = str(exc)
        return result

    def rma_label(self, ref: RmaRef) -> str:
        return f"Xoro RMA {ref.rma_id} (ASN {ref.extra.get('asn_number')})"

    @property
    def weak_matching(self) -> bool:
        return self.conf.match_by != "return_id"

    def match_key(self, ret: LoopReturn) -> str | None:
        """By order number two Loop returns of one order cannot be told apart (Xoro's app
        may make one ASN for both): the engine refuses to guess between them."""
        if self.conf.match_by == "return_id":
            return None
        key = order_key(ret.order_number) or order_key(ret.order_name)
        return f"order {key}" if key else None

    def close(self) -> None:
        self.client.close()

    # -- matching --------------------------------------------------------------------------
    def _asns_for_linking(self, since: datetime) -> list[dict[str, Any]]:
        """ASNs created since `since`, or more. By return id, a listing from an earlier
        `since` made moments ago serves too: older ASNs cannot carry this return's id. By
        order number they could (an earlier return of the same order), so list afresh."""
        if self.conf.match_by != "return_id":
            return self.client.list_asns(since)
        now = self.ctx.clock.now()
        if self._listing is not None:
            listed_since, listed_at, asns = self._listing
            # A clock set back makes the age negative: that listing is not fresh.
            if listed_since <= since and timedelta(0) <= now - listed_at <= LISTING_REUSE:
                return asns
        asns = self.client.list_asns(since)
        self._listing = (since, now, asns)
        return asns
