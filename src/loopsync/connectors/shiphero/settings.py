"""ShipHero's `warehouse:` keys: `parse_settings` reads them into `ShipHeroSettings`.

Defaults and their sources: docs/api/shiphero.md (credits 1001 and 15/s restored are from
ShipHero's 2019 announcement, UNCONFIRMED today; the label type of a label made outside
ShipHero is UNCONFIRMED, hence configurable).
"""

from __future__ import annotations

from dataclasses import dataclass

from loopsync.configkit import Secret, Section

# UNCONFIRMED: how a label made outside ShipHero (Loop's) should be typed; configurable.
LABEL_TYPES = ("FREE", "PAID", "FLAT_RATE", "SELF_RETURN")


@dataclass(frozen=True)
class ShipHeroSettings:
    refresh_token: Secret | None
    access_token: Secret | None
    customer_account_id: str | None
    shop_name: str | None
    label_type: str
    return_reason: str  # when a Loop line has no reason of its own
    credits_max: int
    credits_per_second: float
    order_page_size: int
    # Pages one connection walk may read; a look-up that needs more is a looping server.
    max_pages: int = 500


def parse_settings(section: Section) -> ShipHeroSettings:
    refresh = section.secret("refresh_token", None)
    access = section.secret("access_token", None)
    if refresh is None and access is None:
        raise section.error("refresh_token", "is required (or access_token)")
    if refresh is not None and access is not None:
        raise section.error("access_token", "set refresh_token or access_token, not both")
    return ShipHeroSettings(
        refresh_token=refresh,
        access_token=access,
        customer_account_id=section.str("customer_account_id", None),
        shop_name=section.str("shop_name", None),
        label_type=section.str("label_type", "SELF_RETURN", choices=LABEL_TYPES),
        return_reason=section.str("return_reason", "Returned through Loop"),
        # 2019 community announcement: 1001 credits, 15/s restored (UNCONFIRMED today).
        credits_max=section.int("credits_max", 1001, min=1),
        credits_per_second=section.float("credits_per_second", 15.0, min=0.1),
        order_page_size=section.int("order_page_size", 2, min=1, max=100),
        max_pages=section.int("max_pages", 500, min=1),
    )
