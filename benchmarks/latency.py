"""Webhook latency: how long a return waits, with webhooks and with polling only.

    .venv/bin/python -m benchmarks.latency                    # 200 returns a mode, ~11 min
    .venv/bin/python -m benchmarks.latency --returns 40 --every 10
    .venv/bin/python -m benchmarks.latency --record           # + a row per mode in BENCHMARKS.md

Two latency trials (`loopsync.testing.latency`), side by side on two sandboxes (ShipHero by
default): the real worker (`loopsync serve --http`, a cycle every `--every` seconds) with
the sandbox's webhooks on, and the same worker polling only. A new open return arrives in
the emulated Loop every `--spacing` seconds; the warehouse receives each one in full a
random 0.5 s to `--every` s after its RMA exists. Measured per return: Loop return created
-> RMA in the warehouse, and warehouse receipt -> Loop process call; reported as p50 and
p95 (seconds, real time, accurate to 20 ms). Target: with webhooks, p95 under 5 s for
both. With polling only a return waits for the next cycle: about half the interval on
average and up to a whole one (the default schedule is 15 minutes; 30 s here keeps the
run short).

Both modes run at once (each worker is its own process with its own state file and its
own client-side Loop budget of 280 requests a minute): the machine's load is the same for
both. The warehouses' client budgets are loosened as in the soak (ShipHero's credits,
PeopleVox's and Xoro's request rates; `loopsync.testing.latency.CLIENT_LIMITS`); Loop's is
not: a return costs the worker about seven Loop requests with webhooks (its read, the
notes read and the RMA note, the process, and a read per later event), so `--spacing`
(3 s: 20 returns a minute, a busy shop) keeps them under it. At one return every 1.5 s
the budget is full and events queue behind it (measured: webhooks p50 0.2 s, p95 17 s);
that measures the rate limiter, not the webhooks.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/latency.py`
    sys.path.insert(0, str(REPO))

from benchmarks.common import BENCHMARKS_MD, append_row, quiet_logs, verdict  # noqa: E402
from loopsync.connectors import KINDS  # noqa: E402
from loopsync.testing import latency  # noqa: E402

TARGET_P95 = 5.0  # seconds, with webhooks (issue 13)
SECTION = "latency"
HEADING = "## 8. Webhooks: created -> RMA and receipt -> process, with and without"
TABLE = (
    "| date | machine | commit | mode | warehouse | returns | every | created -> RMA p50 "
    "| p95 | receipt -> process p50 | p95 | webhooks delivered / refused forgeries "
    "| target p95 < 5 s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run(
    returns: int = 200,
    every: int = 30,
    spacing: float = 3.0,
    warehouse: str = "shiphero",
    *,
    sequential: bool = False,
    record: bool = False,
) -> dict[str, Any]:
    quiet_logs()
    specs = [
        latency.TrialSpec(
            mode,
            warehouse=warehouse,
            returns=returns,
            every=every,
            spacing=spacing,
            timeout=2.0 * every + 30,
        )
        for mode in (latency.Mode.WEBHOOKS, latency.Mode.POLLING)
    ]
    print(
        f"{returns} returns per mode, one every {spacing:g} s; worker cycle every {every} s; "
        f"{warehouse} sandbox; modes {'one after the other' if sequential else 'side by side'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="loopsync-latency-") as tmp:
        root = Path(tmp)
        if sequential:
            results = [latency.run_trial(s, root / s.mode.value) for s in specs]
        else:
            with ThreadPoolExecutor(max_workers=len(specs)) as pool:
                futures = [pool.submit(latency.run_trial, s, root / s.mode.value) for s in specs]
                results = [f.result() for f in futures]
    print("", *latency.summary(results), sep="\n")
    hooks = results[0]
    met = hooks.ok and max(hooks.p("rma", 95), hooks.p("process", 95)) < TARGET_P95
    for r in results:
        stats = r.webhooks
        print(
            f"{r.spec.mode}: {r.seconds:.0f} s; without RMA {r.no_rma}, not processed "
            f"{r.not_processed}, duplicate RMAs {r.duplicate_rmas}, duplicate actions "
            f"{r.duplicate_actions}, worker exit {r.worker_exit}"
            + (f"; webhooks {dict(sorted(stats.items()))}" if stats else "")
            + (f"; {r.problem}" if r.problem else "")
        )
    print(f"\ntarget (webhooks p95 < {TARGET_P95:g} s for both): {verdict(met)}")
    if record:
        _ensure_section()
        for r in results:
            append_row(SECTION, _cells(r, met))
    return {"ok": met and all(r.ok for r in results), "results": results}


def _cells(r: latency.TrialResult, met: bool) -> list[str]:
    stats = r.webhooks
    hooks = (
        f"{stats.get('delivered', 0)} / {stats.get('forged_refused', 0)}"
        if r.spec.mode is latency.Mode.WEBHOOKS
        else "-"
    )
    return [
        r.spec.mode.value,
        r.spec.warehouse,
        str(len(r.to_rma)),
        f"{r.spec.every} s",
        _s(r.p("rma", 50)),
        _s(r.p("rma", 95)),
        _s(r.p("process", 50)),
        _s(r.p("process", 95)),
        hooks,
        verdict(met) if r.spec.mode is latency.Mode.WEBHOOKS else "-",
    ]


def _s(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.2f} s"  # NaN: no value


def _ensure_section() -> None:
    """The section and its table, at the end of BENCHMARKS.md, the first time."""
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else ""
    if f"<!-- rows:{SECTION} -->" in text:
        return
    doc = (__doc__ or "").split("\n\n", 2)[2].strip()
    # one line a paragraph, as in the soak's section
    doc = "\n\n".join(" ".join(par.split("\n")) for par in doc.split("\n\n"))
    block = f"{HEADING}\n\n`benchmarks/latency.py`: {doc[0].lower()}{doc[1:]}\n\n{TABLE}"
    block += f"\n<!-- rows:{SECTION} -->\n"
    BENCHMARKS_MD.write_text(text.rstrip("\n") + "\n\n" + block, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--returns", type=int, default=200, help="new returns per mode (200)")
    p.add_argument("--every", type=int, default=30, help="seconds between cycles (30; min 10)")
    p.add_argument("--spacing", type=float, default=3.0, help="seconds between returns (3)")
    p.add_argument("--warehouse", default="shiphero", choices=sorted(KINDS))
    p.add_argument("--sequential", action="store_true", help="one mode after the other")
    p.add_argument("--record", action="store_true", help="add a row per mode to BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.returns < 1 or args.every < 10 or args.spacing <= 0:
        p.error("--returns >= 1, --every >= 10 (the schedule's minimum), --spacing > 0")
    result = run(
        args.returns,
        args.every,
        args.spacing,
        args.warehouse,
        sequential=args.sequential,
        record=args.record,
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
