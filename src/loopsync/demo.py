"""`loopsync demo` and `loopsync sandbox`: the whole flow on the built-in sandbox."""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from loopsync import logs
from loopsync.cycle import CycleResult
from loopsync.sandbox import emulator_class
from loopsync.sandbox.webhooks import WebhookFaults
from loopsync.testing import Sandbox, latency

# What the sandbox warehouse does with each pushed return, in turn (None: not yet arrived).
DEMO_SCENARIOS = ["full", "short", "damaged", "full", "over", None]
SANDBOX_SCENARIOS = ["full", "short", "damaged", "full"]
WEBHOOK_DEMO_EVERY = 10  # seconds between cycles in `demo --webhooks` (the minimum)


def _missing_extra(warehouse: str) -> bool:
    """True, after one line on stderr naming the extra to install, when the warehouse's
    emulator cannot load (graphql-core for ShipHero's is an optional dependency)."""
    try:
        emulator_class(warehouse)
    except ModuleNotFoundError as exc:
        print(f"loopsync: {exc}", file=sys.stderr)
        return True
    return False


def run_demo(*, warehouse: str = "shiphero", returns: int = 12, out: TextIO) -> int:
    if _missing_extra(warehouse):
        return 2
    logs.configure(level="warning")
    transport = "folder" if warehouse == "generic" else "http"
    # The demo shows the flow, not the APIs' rate limits (PeopleVox allows 15 requests in
    # 15 s, which would make it take a minute); the tests and benchmarks keep them on.
    with (
        tempfile.TemporaryDirectory(prefix="loopsync-demo-") as tmp,
        Sandbox(
            warehouse, transport=transport, folder_root=Path(tmp) / "3pl", rate_limits=False
        ) as sb,
    ):
        seeded = sb.seed(returns, states_weights=[("open", 1)])
        odd = _add_awkward_returns(sb)
        extra = {"rate_limit": {"requests": 1000, "per": "1s"}} if warehouse == "peoplevox" else {}
        cfg = sb.merchant_config(Path(tmp), merchant="demo", warehouse_extra=extra)

        def say(text: str = "") -> None:
            print(text, file=out)

        say(
            f"loopsync demo: sandbox Loop at {sb.loop_url}, sandbox {warehouse} at "
            f"{sb.warehouse_url}"
        )
        say(
            f"seeded {len(seeded) + len(odd)} Loop returns "
            f"({len(odd)} of them awkward on purpose)\n"
        )

        first = sb.run_cycle(cfg)
        say("cycle 1 (returns reach the warehouse):")
        _print_events(first, out, {"rma_created", "rma_linked"})
        _print_waits(cfg, out)

        received = _warehouse_receives(sb, first)
        say(
            "\nthe warehouse receives goods: "
            + ", ".join(f"{n} {s}" for s, n in Counter(received.values()).items())
        )
        second = sb.run_cycle(cfg)
        third = sb.run_cycle(cfg)  # nothing new: shows the cycle is idempotent
        say("\ncycle 2 (the warehouse finished some returns):")
        _print_events(second, out, {"processed", "flagged", "ignored", "reported", "settled"})
        c1, c2, c3 = first.counts, second.counts, third.counts
        say("\nsummary:")
        say(
            f"  RMAs created {c1.pushed + c1.linked + c2.pushed + c2.linked}; "
            f"processed {c2.processed}; flagged {c2.flagged}; ignored {c2.ignored}; "
            f"reported {c2.reported}; errors {c1.errors + c2.errors + c3.errors}"
        )
        say(
            f"  cycle 3 changed nothing: pushed {c3.pushed}, processed {c3.processed}, "
            f"flagged {c3.flagged}"
        )
        duplicates = [rid for rid in received if sb.warehouse.rma_count(rid) != 1]
        actions = Counter(a for r in seeded + odd for a in sb.loop.actions_for(str(r["id"])))
        twice = [str(r["id"]) for r in seeded + odd if len(sb.loop.actions_for(str(r["id"]))) > 1]
        say(
            f"  Loop saw {dict(actions)}; returns with more than one action: {len(twice)}; "
            f"returns with more than one RMA: {len(duplicates)}"
        )
        ok = not duplicates and not twice and c3.pushed == c3.processed == c3.flagged == 0
        say("\nall good." if ok else "\nSOMETHING IS WRONG (see above).")
        return 0 if ok else 1


def run_webhook_demo(*, warehouse: str = "shiphero", returns: int = 4, out: TextIO) -> int:
    """`loopsync demo --webhooks`: the real worker (`serve --http`) twice at once, on two
    sandboxes, one receiving the sandbox's webhooks and one polling only, both scheduled
    every WEBHOOK_DEMO_EVERY seconds; prints how long returns waited in each."""
    if _missing_extra(warehouse):
        return 2
    logs.configure(level="warning")
    specs = [
        latency.TrialSpec(
            mode, warehouse=warehouse, returns=returns, every=WEBHOOK_DEMO_EVERY, timeout=30
        )
        for mode in (latency.Mode.WEBHOOKS, latency.Mode.POLLING)
    ]
    print(
        f"loopsync demo --webhooks: the worker (serve --http, a cycle every "
        f"{WEBHOOK_DEMO_EVERY}s) against a sandbox Loop and {warehouse}, twice at once: "
        f"with webhooks, and polling only; {returns} new returns each, received by the "
        "warehouse a few seconds after their RMA ...",
        file=out,
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="loopsync-demo-") as tmp,
        ThreadPoolExecutor(max_workers=len(specs)) as pool,
    ):
        trials = [pool.submit(latency.run_trial, s, Path(tmp) / s.mode.value) for s in specs]
        results = [t.result() for t in trials]
    print("", *latency.summary(results), "", sep="\n", file=out)
    fast, slow = results
    print(
        f"with webhooks a new return reached the warehouse in {_p50(fast, 'rma')} instead of "
        f"{_p50(slow, 'rma')}, and a receipt was processed in {_p50(fast, 'process')} "
        f"instead of {_p50(slow, 'process')} (medians).",
        file=out,
    )
    hooks = fast.webhooks
    print(
        f"webhooks sent {hooks.get('attempts', 0)}, delivered {hooks.get('delivered', 0)}; "
        f"a cycle every {WEBHOOK_DEMO_EVERY}s here: with the default schedule (15m) polling "
        "alone waits minutes, webhooks do not.",
        file=out,
    )
    for r in results:
        if not r.ok:
            print(
                f"{r.spec.mode}: {r.problem or ''} returns without an RMA {r.no_rma}, not "
                f"processed {r.not_processed}, with two RMAs {r.duplicate_rmas}, with two "
                f"Loop actions {r.duplicate_actions}, worker exit {r.worker_exit}",
                file=out,
            )
    ok = all(r.ok for r in results)
    print("\nall good." if ok else "\nSOMETHING IS WRONG (see above).", file=out)
    return 0 if ok else 1


def _p50(result: latency.TrialResult, which: str) -> str:
    return latency.fmt_seconds(result.p(which, 50))


def _add_awkward_returns(sb: Sandbox) -> list[dict[str, Any]]:
    """One return for an unmapped destination and one whose order the warehouse lacks."""
    from loopsync.sandbox.seed import make_return

    unmapped = make_return(rng=sb.rng, return_id=90000001, state="open", updated_at=sb.clock.now())
    unmapped["destination_id"] = 99
    sb.add_return(unmapped)
    missing = make_return(rng=sb.rng, return_id=90000002, state="open", updated_at=sb.clock.now())
    sb.add_return(missing, with_order=False)
    return [unmapped, missing]


def _warehouse_receives(sb: Sandbox, result: CycleResult) -> dict[str, str]:
    received = {}
    pushed = [e["return_id"] for e in result.events if e["event"] in ("rma_created", "rma_linked")]
    for n, rid in enumerate(pushed):
        scenario = DEMO_SCENARIOS[n % len(DEMO_SCENARIOS)]
        if scenario and sb.warehouse.receive(rid, scenario):
            received[rid] = scenario
    return received


def _print_events(result: CycleResult, out: TextIO, kinds: set[str]) -> None:
    labels = {
        "rma_created": "RMA created",
        "rma_linked": "RMA found",
        "processed": "processed",
        "flagged": "flagged",
        "ignored": "ignored",
        "reported": "left for a person",
        "settled": "already settled",
    }
    for e in result.events:
        if e["event"] in kinds:
            detail = e.get("rma") or e.get("reason") or ""
            print(f"  {e['return_id']:>10}  {labels[e['event']]:<18} {detail}", file=out)


def _print_waits(cfg: Any, out: TextIO) -> None:
    from loopsync.state import Stage, Store
    from loopsync.timeutil import SystemClock

    store = Store(cfg.state_path, SystemClock())
    try:
        for rid in sorted(store.returns.ids_in_stage(Stage.SKIPPED, Stage.WAITING, Stage.REJECTED)):
            row = store.returns.get(rid)
            if row is not None:
                print(f"  {row.id:>10}  {row.stage:<18} {row.reason}", file=out)
    finally:
        store.close()


def serve_sandbox(
    *,
    port: int,
    warehouse: str,
    returns: int,
    out: TextIO,
    webhooks: str | None = None,
    webhook_faults: WebhookFaults | None = None,
    webhook_seed: int = 7,
) -> int:
    """Serve the sandbox until SIGINT/SIGTERM; the warehouse receives a return now and then
    so `loopsync run` shows processing and flagging too. With `webhooks` (a worker's
    serve --http URL) Loop and the warehouse send it their webhooks, with `webhook_faults`."""
    if _missing_extra(warehouse):
        return 2
    workdir = Path("sandbox-config")
    transport = "folder" if warehouse == "generic" else "http"
    # Port 0 lets the OS pick two free ports (the printed config names them).
    sb = Sandbox(
        warehouse,
        loop_port=port,
        warehouse_port=port + 1 if port else 0,
        transport=transport,
        folder_root=workdir / "3pl",
    )
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    with sb:
        seeded = sb.seed(returns, states_weights=[("open", 1)])
        path = sb.write_config(
            workdir,
            merchant="sandbox",
            state_path="./state/sandbox.sqlite",
            webhooks=None if webhooks is None else {},
        )
        if webhooks is not None:
            sender = sb.send_webhooks(
                sb.webhook_targets(webhooks, "sandbox"), faults=webhook_faults, seed=webhook_seed
            )
            for target in sender.targets():
                print(f"{target.source} webhooks go to {target.url}", file=out)
        print(f"sandbox Loop at {sb.loop_url}, {warehouse} at {sb.warehouse_url}", file=out)
        print(f"config written to {path}:\n", file=out)
        print(path.read_text(), file=out)
        print("set the secrets it references, then run loopsync:\n", file=out)
        for k, v in sb.env().items():
            print(f"  export {k}={v}", file=out)
        print(f"\n  loopsync run --once -c {path}\n  loopsync status -c {path}\n", file=out)
        print("Ctrl-C stops the sandbox.", file=out, flush=True)
        waiting = [str(r["id"]) for r in seeded]
        while not stop.wait(15):
            # Play the warehouse: finish the next return that has an RMA by now.
            for n, rid in enumerate(waiting):
                if sb.warehouse.has_rma(rid):
                    sb.warehouse.receive(rid, SANDBOX_SCENARIOS[n % len(SANDBOX_SCENARIOS)])
                    waiting.remove(rid)
                    break
    return 0
