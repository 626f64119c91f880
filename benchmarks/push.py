"""Benchmark 6, push cost: requests (and ShipHero credits) per RMA for one push of N open
returns, and what a run after the state file was lost costs and repeats.

    .venv/bin/python -m benchmarks.push [--returns N] [--no-record]

For each creating connector (ShipHero, PeopleVox, the generic 3PL over HTTP and over
folders) a fresh sandbox on a FakeClock holds N open Loop returns whose orders the
warehouse knows (default 200). One cycle ingests them and pushes every one (one RMA and
one Loop note each; nothing is received yet, so no process or flag follows). Counted from
the sandbox's own call records: warehouse requests per RMA, Loop requests per RMA
outside the list walk (the note and, since the lost-state protection, the notes read
before it), and ShipHero credits per RMA from the emulator's credit meter.

Then the state file is deleted (a lost volume, or a run from another folder) and one more
cycle runs: before the protection this made a second RMA and a second note for every
return; now each create and note is looked up first. The table gives what that second run
repeated (should be 0) and what it cost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import append_row, cli, print_table, quiet_logs, verdict
from loopsync.connectors import KINDS, variants
from loopsync.http import RetryPolicy
from loopsync.runner import run_merchant
from loopsync.testing import Sandbox
from loopsync.testing import FakeClock

# Every variant of every kind that creates RMAs (a watch-only kind pushes nothing).
CONNECTORS = tuple((kind, transport) for kind, transport in variants() if KINDS[kind].creates_rmas)
POLICY = RetryPolicy(attempts=6, base=0.05, cap=0.5, retry_after_cap=30)


def _spent(sb: Sandbox) -> int:
    meter = getattr(sb.warehouse, "credits", None)
    return int(getattr(meter, "spent", 0))


def _cycle(sb: Sandbox, cfg: Any) -> Any:
    return run_merchant(cfg, clock=sb.clock, policy=POLICY)


def measure(kind: str, transport: str, n: int, root: Path) -> dict[str, Any]:
    folder = root / f"{kind}-{transport}-share"
    sb = Sandbox(
        kind,
        clock=FakeClock(),
        rate_limits=True,
        transport=transport,
        folder_root=folder if transport == "folder" else None,
    ).start()
    try:
        seeded = sb.seed(n, days=2, states_weights=[("open", 1)])
        cfg = sb.merchant_config(root / f"{kind}-{transport}")
        sb.recorder.clear()
        credits = _spent(sb)
        first = _cycle(sb, cfg)
        pushed = max(first.counts.pushed, 1)
        wh = [c for c in sb.recorder.calls() if c.api != "loop"]
        loop_effects = [c for c in sb.recorder.calls("loop") if "/list" not in c.path]
        row = {
            "connector": f"{kind} ({transport})",
            "rmas": first.counts.pushed,
            "wh_per_rma": len(wh) / pushed,
            "loop_per_rma": len(loop_effects) / pushed,
            "credits_per_rma": (_spent(sb) - credits) / pushed,
        }
        # The state file is lost: the next run must find what the first one made.
        for suffix in ("", "-wal", "-shm"):
            Path(str(cfg.state_path) + suffix).unlink(missing_ok=True)
        sb.recorder.clear()
        credits = _spent(sb)
        assert isinstance(sb.clock, FakeClock)
        sb.clock.advance(3600)
        _cycle(sb, cfg)
        ids = [str(r["id"]) for r in seeded]
        row["dup_rmas"] = sum(max(0, sb.warehouse.rma_count(i) - 1) for i in ids)
        row["dup_notes"] = sum(max(0, len(sb.loop.notes_for(i)) - 1) for i in ids)
        row["rerun_wh"] = len([c for c in sb.recorder.calls() if c.api != "loop"])
        row["rerun_loop"] = len([c for c in sb.recorder.calls("loop") if "/list" not in c.path])
        row["rerun_credits"] = _spent(sb) - credits
        return row
    finally:
        sb.stop()


def run(returns: int = 200, *, record: bool) -> dict[str, Any]:
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(kind, transport, returns, Path(tmp)) for kind, transport in CONNECTORS]
    print_table(
        f"Push of {returns} open returns, then a run after the state file was lost",
        [
            "connector",
            "RMAs",
            "warehouse req/RMA",
            "Loop req/RMA",
            "credits/RMA",
            "lost state: dup RMAs",
            "dup notes",
            "warehouse req",
            "Loop req",
            "credits",
        ],
        [
            [
                r["connector"],
                r["rmas"],
                f"{r['wh_per_rma']:.2f}",
                f"{r['loop_per_rma']:.2f}",
                f"{r['credits_per_rma']:.1f}",
                r["dup_rmas"],
                r["dup_notes"],
                r["rerun_wh"],
                r["rerun_loop"],
                r["rerun_credits"],
            ]
            for r in rows
        ],
    )
    if record:
        for r in rows:
            append_row(
                "push",
                [
                    r["connector"],
                    returns,
                    r["rmas"],
                    f"{r['wh_per_rma']:.2f}",
                    f"{r['loop_per_rma']:.2f}",
                    f"{r['credits_per_rma']:.1f}",
                    r["dup_rmas"],
                    r["dup_notes"],
                    r["rerun_wh"],
                    r["rerun_loop"],
                    r["rerun_credits"],
                    verdict(r["dup_rmas"] == 0 and r["dup_notes"] == 0),
                ],
            )
    return {"ok": all(r["dup_rmas"] == 0 and r["dup_notes"] == 0 for r in rows), "rows": rows}


if __name__ == "__main__":
    cli(__doc__, run, returns=200)
