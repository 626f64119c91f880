"""Benchmark 3, polling: one poll stage over 5,000 open RMAs, for ShipHero, PeopleVox and
Xoro.

    .venv/bin/python -m benchmarks.poll [--rmas N] [--no-record]

For each warehouse a fresh sandbox (emulated Loop and warehouse on 127.0.0.1, one FakeClock
shared by the worker and the emulators) holds N open Loop returns (default 5,000). The
state is built directly, so that building it does not take minutes: the returns are
ingested by `Engine.ingest()`, their RMAs are put into the emulated warehouse as the
warehouse would hold them after a create (ShipHero returns, PeopleVox return
authorizations with the rows the connector's own `header_row`/`item_row` write, Xoro
ASNs imported by Xoro's own Loop app), and each is linked in the store as the push stage
links it (RMA reference, stage `open`). Then, with the warehouse's limits ON at default
settings (ShipHero's credit accounting, PeopleVox's 15 requests per 15 seconds, Xoro's
concurrency limit), one poll stage is timed: `Engine.poll()` with a fresh connector, as
at the start of a cycle. Nothing has been received, so no Loop call follows.

The waits that the warehouses' limits impose (ShipHero credits, PeopleVox's rate) run on
the FakeClock: they are reported as simulated seconds and are not in the wall time.
PeopleVox is measured twice: the first (full) poll, which reads every RMA, and the
incremental poll of a later cycle, which sweeps the returns report by date (1% of the
RAs have items received, still "Partially received", so the report has dates), and the
later poll once more with 500 RMAs, which the engine hands to the connector in one call
(it polls in chunks of 500: `stages.poll.POLL_CHUNK`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    Bench,
    append_row,
    cli,
    close_engine,
    fmt_s,
    print_table,
    quiet_logs,
    verdict,
)
from loopsync.connectors.base import PushRequest
from loopsync.stages.poll import POLL_CHUNK
from loopsync.models import LoopReturn, RmaRef
from loopsync.state import Stage, Store
from loopsync.timeutil import iso

TARGET_PER_REQUEST = 25  # ShipHero: at least 25 open RMAs per request


def build(b: Bench, kind: str, n: int) -> Any:
    """n open returns, ingested, with an RMA in the warehouse, linked in the store."""
    seeded = b.seed(n, days=14, states=(("open", 1),), warehouse_knows=True)
    cfg = b.config(f"poll-{kind}", start_days=30)
    engine = b.engine(cfg)
    engine.ingest()
    store: Store = engine.store
    add_rma = ADD_RMA[kind]
    context = _context(b, kind)
    with store.atomic():
        for raw in seeded:
            ret = LoopReturn.from_api(raw)
            ref = add_rma(b, engine, ret, context)
            store.rmas.link(ret.id, ref.rma_id, ref.extra)
            store.returns.move(ret.id, Stage.OPEN)
    close_engine(engine)
    store = Store(cfg.state_path, b.clock)
    assert len(store.rmas.open()) == n
    store.close()
    return cfg


def _context(b: Bench, kind: str) -> dict[str, Any]:
    if kind == "shiphero":
        return {"orders": {o.partner_order_id: o for o in b.warehouse.orders.values()}}
    return {}


def _shiphero_rma(b: Bench, engine: Any, ret: LoopReturn, ctx: dict[str, Any]) -> RmaRef:
    """A ShipHero return as `return_create` makes one (the emulator's own classes)."""
    from loopsync.sandbox.shiphero import DESTINATIONS, _Return, _ReturnLine

    sh = b.warehouse
    order = ctx["orders"][ret.provider_order_id]
    lines = [
        _ReturnLine(
            legacy_id=next(sh._ids),
            order_line=order.line_for(sku),
            quantity=qty,
            reason="Returned through Loop",
        )
        for sku, qty in sorted(ret.units_by_sku().items())
    ]
    rma = _Return(
        legacy_id=3394300 + next(sh._ids),
        order=order,
        partner_id=ret.id,
        warehouse_id=DESTINATIONS[str(ret.destination_id)],
        reason="Returned through Loop",
        label_type="SELF_RETURN",
        label_cost="0.00",
        shipping_carrier=ret.carrier or "other",
        shipping_method=ret.carrier or "other",
        tracking_number=ret.tracking_number,
        created_at=b.clock.now(),
        lines=lines,
    )
    sh.returns[rma.legacy_id] = rma
    return RmaRef(ret.id, rma.id, {"legacy_id": rma.legacy_id, "order_id": order.id})


def _peoplevox_rma(b: Bench, engine: Any, ret: LoopReturn, ctx: dict[str, Any]) -> RmaRef:
    """A return authorization with the header and item rows the connector saves."""
    from loopsync.connectors.peoplevox.mapping import header_row, item_row
    from loopsync.sandbox.peoplevox import _Ra, _RaItem

    conn = engine.connector
    req = PushRequest(ret, engine.cfg.warehouse.destinations[str(ret.destination_id)])
    located = {
        "sales_order_number": (ret.order_name or "").lstrip("#"),
        "customer_po_reference": ret.order_number or "",
    }
    ra = _Ra(fields=header_row(req, located))
    ra.items = [_RaItem(fields=item_row(ret.id, line)) for line in conn.item_lines(ret)]
    b.warehouse.ras[ret.id] = ra
    return RmaRef(
        ret.id,
        ret.id,
        {"sales_order_number": located["sales_order_number"], "expected": ret.units_by_sku()},
    )


def _xoro_rma(b: Bench, engine: Any, ret: LoopReturn, ctx: dict[str, Any]) -> RmaRef:
    """Xoro's app imported the return (its ASN exists): link it as find_rma does."""
    asn = b.warehouse.asn(ret.id)
    since = (ret.created_at or ret.updated_at) - engine.connector.conf.asn_lookback
    return RmaRef(
        ret.id, asn.rma_number or asn.number, {"asn_number": asn.number, "search_from": iso(since)}
    )


# Per-kind knowledge (keys checked against `connectors.KINDS` by tests/test_kinds.py): how
# to plant an RMA the warehouse already has. The generic 3PL has no poll benchmark.
ADD_RMA: dict[str, Callable[[Bench, Any, LoopReturn, dict[str, Any]], RmaRef]] = {
    "shiphero": _shiphero_rma,
    "peoplevox": _peoplevox_rma,
    "xoro": _xoro_rma,
}


def poll_once(b: Bench, cfg: Any) -> dict[str, Any]:
    """One poll stage with a fresh connector (a new cycle): requests, time, waits."""
    engine = b.engine(cfg)
    b.reset_calls()
    slept = sum(b.clock.slept)
    server = b.server_s
    started = time.perf_counter()
    engine.poll()
    wall = time.perf_counter() - started
    server = b.server_s - server
    waited = sum(b.clock.slept) - slept
    calls = b.sb.recorder.calls(b.sb.kind)
    errors = engine.counts.errors
    polled = engine.counts.polled
    close_engine(engine)
    return {
        "wall": wall,
        "server": server,
        "waited": waited,
        "requests": len(calls),
        "polled": polled,
        "errors": errors,
        "mix": Counter(_op(b, c) for c in calls),
        "loop_calls": b.calls("loop"),
    }


def _op(b: Bench, call: Any) -> str:
    if b.sb.kind == "peoplevox":
        action = str(call.headers.get("SOAPAction", "")).strip('"').rsplit("/", 1)[-1]
        return action or str(call.path)
    return f"{call.method} {call.path}"


def shiphero(n: int) -> dict[str, Any]:
    from loopsync.sandbox.shiphero import CreditMeter

    with Bench.start("shiphero", rate_limits=False) as b:
        cfg = build(b, "shiphero", n)
        sh = b.warehouse
        # Default settings on both sides: 1001 credits, 15 a second; enforced.
        sh.credits = CreditMeter(
            b.clock, cfg.warehouse.connector.credits_max, cfg.warehouse.connector.credits_per_second
        )
        res = poll_once(b, cfg)
        res.update(
            throttled=sh.credits.throttled,
            min_balance=sh.credits.min_balance,
            spent=sh.credits.spent,
            data_requests=res["mix"].get("POST /graphql", 0),
        )
        return res


def peoplevox(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    with Bench.start("peoplevox", rate_limits=False) as b:
        cfg = build(b, "peoplevox", n)
        # The warehouse has started on 1% of them (items dated, status still to be
        # ignored), so the returns report has dates to sweep by after the first poll.
        for rid in sorted(b.warehouse.ras)[: max(1, n // 100)]:
            b.warehouse.complete(rid, "Partially received")
        b.sb._set_warehouse_rate_limits(True)  # 15 requests in 15 seconds
        full = poll_once(b, cfg)
        full["throttled"] = b.warehouse.throttled
        b.clock.advance(900)
        incremental = poll_once(b, cfg)
        incremental["throttled"] = b.warehouse.throttled - full["throttled"]
        for res in (full, incremental):
            res["data_requests"] = res["requests"] - res["mix"].get("Authenticate", 0)
        return full, incremental


def xoro(n: int) -> dict[str, Any]:
    with Bench.start("xoro", rate_limits=False) as b:
        cfg = build(b, "xoro", n)
        b.sb._set_warehouse_rate_limits(True)
        res = poll_once(b, cfg)
        res.update(
            throttled=b.warehouse.throttled,
            data_requests=res["requests"],
            asns=len(b.warehouse.asns),
            page_size=b.warehouse.page_size,
        )
        return res


def run(n: int = 5_000, record: bool = True) -> dict[str, Any]:
    quiet_logs()
    sh = shiphero(n)
    pv_full, pv_inc = peoplevox(n)
    _, pv_small = peoplevox(POLL_CHUNK)
    xo = xoro(n)
    ok = (
        sh["data_requests"] * TARGET_PER_REQUEST <= n
        and sh["throttled"] == 0
        and sh["min_balance"] >= 0
        and sh["errors"] == 0
        and sh["polled"] == n
    )

    def row(name: str, r: dict[str, Any], throttle: str, rmas: int = n) -> list[Any]:
        per = r["data_requests"] / rmas
        return [
            name,
            f"{rmas:,}",
            r["requests"],
            f"{per:.4f}",
            f"{rmas / r['data_requests']:.0f}" if r["data_requests"] else "-",
            fmt_s(r["wall"]),
            fmt_s(r["server"]),
            f"{r['waited']:.0f} s",
            throttle,
            r["errors"],
        ]

    print_table(
        f"Polling: one poll stage over {n:,} open RMAs (limits on, default settings; "
        "waits simulated on the fake clock)",
        [
            "warehouse",
            "open RMAs",
            "requests",
            "requests/RMA",
            "RMAs/request",
            "wall time",
            "of which emulator",
            "limit waits (simulated)",
            "throttled",
            "errors",
        ],
        [
            row(
                "ShipHero (GraphQL, 50 aliases a query)",
                sh,
                f"{sh['throttled']} (min balance {sh['min_balance']:.0f})",
            ),
            row("PeopleVox, first poll (reads every RA)", pv_full, str(pv_full["throttled"])),
            row("PeopleVox, later poll (date sweep)", pv_inc, str(pv_inc["throttled"])),
            row(
                "PeopleVox, later poll, one engine chunk",
                pv_small,
                str(pv_small["throttled"]),
                POLL_CHUNK,
            ),
            row(f"Xoro (ASN listing, {xo['page_size']} a page)", xo, str(xo["throttled"])),
        ],
    )
    for name, r in (
        ("ShipHero", sh),
        ("PeopleVox first", pv_full),
        ("PeopleVox later", pv_inc),
        (f"PeopleVox later ({POLL_CHUNK})", pv_small),
        ("Xoro", xo),
    ):
        print(f"{name}: " + ", ".join(f"{k} x{v}" for k, v in sorted(r["mix"].items())))
    print(
        f"ShipHero: {sh['data_requests']} GraphQL requests for {n:,} RMAs = 1 per "
        f"{n / sh['data_requests']:.0f} (target: 1 per >= {TARGET_PER_REQUEST}), "
        f"{sh['spent']:,} credits, throttled {sh['throttled']}, lowest balance "
        f"{sh['min_balance']:.0f}: {verdict(ok)}"
    )
    if record:
        append_row(
            "poll",
            [
                f"{n:,}",
                sh["data_requests"],
                f"{n / sh['data_requests']:.0f}",
                fmt_s(sh["wall"]),
                f"{sh['waited']:.0f} s",
                sh["throttled"],
                f"{sh['min_balance']:.0f}",
                f"{pv_full['requests']} / {pv_inc['requests']}",
                f"{fmt_s(pv_full['wall'])} / {fmt_s(pv_inc['wall'])}",
                xo["requests"],
                fmt_s(xo["wall"]),
                verdict(ok),
            ],
        )
    return {
        "shiphero": sh,
        "peoplevox_full": pv_full,
        "peoplevox_incremental": pv_inc,
        "peoplevox_one_chunk": pv_small,
        "xoro": xo,
        "ok": ok,
    }


def main() -> None:
    cli(__doc__, run, rmas=5_000)


if __name__ == "__main__":
    main()
