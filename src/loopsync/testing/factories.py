"""Factories for the values tests build again and again: Loop returns (the raw dict Loop
lists, and the parsed `LoopReturn`) and merchant configurations for `FakeWarehouse`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from loopsync.config import LoopSettings, MerchantConfig
from loopsync.configkit import Secret
from loopsync.connectors.base import WarehouseSettings
from loopsync.models import LoopReturn
from loopsync.rules import GradingRules, StatusRules
from loopsync.timeutil import parse_timestamp

ALL_STATES = ("open", "closed", "cancelled", "review", "expired")
# FakeWarehouse's status words per action (its `default_statuses`).
FAKE_STATUSES: dict[str, list[str]] = {
    "process": ["complete"],
    "flag": ["damaged"],
    "ignore": ["pending"],
    "report": ["cancelled"],
}


def loop_return(
    rid: str,
    *,
    state: str = "open",
    updated: str = "2026-05-01T10:00:00Z",
    dest: int = 12,
    skus: Sequence[str] = ("A", "B"),
) -> dict[str, Any]:
    """A raw return as Loop lists it: order `#<rid>`, one line per SKU, destination `dest`."""
    return {
        "id": rid,
        "state": state,
        "updated_at": updated,
        "created_at": updated,
        "order_name": f"#{rid}",
        "provider_order_id": f"9{rid}",
        "destination_id": dest,
        "line_items": [
            {"line_item_id": int(rid) * 10 + i, "sku": s, "return_reason": "Too big"}
            for i, s in enumerate(skus)
        ],
    }


def loop_return_model(rid: str, **kw: Any) -> LoopReturn:
    """`loop_return(rid, **kw)`, parsed as the engine parses it."""
    return LoopReturn.from_api(loop_return(rid, **kw))


def warehouse_settings(*, grading: GradingRules | None = None) -> WarehouseSettings:
    """The `warehouse:` section of a merchant on `FakeWarehouse` (destination 12 -> WH-1)."""
    s = FAKE_STATUSES
    rules = StatusRules.build(
        s["process"], s["flag"], s["ignore"], s["report"], flag_conditions=["damaged"]
    )
    return WarehouseSettings(
        kind="fake",
        base_url="http://fake",
        destinations={"12": "WH-1"},
        statuses=rules,
        grading=grading or GradingRules(),
        order_wait=timedelta(days=7),
        poll_batch=50,
        timeout=5,
        connector=None,
    )


def merchant_config(
    tmp_path: Path, *, grading: GradingRules | None = None, states: Sequence[str] = ALL_STATES
) -> MerchantConfig:
    """Merchant `acme` on `FakeWarehouse`, its state file in `tmp_path`, Loop pages of 2."""
    loop = LoopSettings(
        base_url="http://loop",
        api_key=Secret("LOOP_API_KEY", "k-123456"),
        start_at=parse_timestamp("2026-04-01T00:00:00Z"),
        lookback=timedelta(minutes=15),
        window=timedelta(days=120),
        page_size=2,
        states=tuple(states),
        asn_enabled=False,
        asn_window=timedelta(days=1),
        requests_per_minute=280,
        timeout=5,
    )
    return MerchantConfig(
        file="test.yaml",
        merchant="acme",
        state_path=tmp_path / "acme.sqlite",
        every=timedelta(minutes=15),
        loop=loop,
        warehouse=warehouse_settings(grading=grading),
    )
