"""`loopsync status`: where a merchant's sync stands, read from its state file alone.

It changes no file (the state is opened read-only, see `Store(read_only=True)`) and
needs no secret: configuration is read with any missing ${VAR} standing in. A last run
still marked running while no process holds the merchant's lock died without finishing
(killed, power cut, disk full): it is shown as `interrupted`."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loopsync import refusals
from loopsync.config import MerchantConfig
from loopsync.errors import StateError
from loopsync.state import Store, lock_is_held, state_error
from loopsync.timeutil import SystemClock

# Stands in for an unset ${VAR}: long and plain enough for every secret check, and never
# used, since status contacts no remote.
PLACEHOLDER = "unset-not-needed-by-status"


class _EnvForStatus(Mapping[str, str]):
    """The environment, where every variable is set (to PLACEHOLDER when it is not)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def __getitem__(self, name: str) -> str:
        return self.env.get(name) or PLACEHOLDER

    def __contains__(self, name: object) -> bool:
        return True

    def get(self, name: str, default: Any = None) -> Any:
        # A plain look-up (LOOPSYNC_STATE_DIR, which places the state file) reads the real
        # environment: a placeholder there would point status at a folder that is not it.
        return self.env.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def status_env(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return _EnvForStatus(os.environ if env is None else env)


def merchant_status(cfg: MerchantConfig) -> dict[str, Any]:
    path = Path(cfg.state_path)
    report: dict[str, Any] = {
        "merchant": cfg.merchant,
        "state_path": str(path),
        "warehouse": cfg.warehouse.kind,
    }
    if not path.exists():
        report["note"] = "no state yet: the first run has not happened"
        return report
    try:
        store = Store(path, SystemClock(), read_only=True)
    except StateError as exc:
        return _with_state_error(report, exc)
    try:
        if not store.initialised:
            # Zero bytes, or a database no run has written yet: `run` starts it afresh, so
            # it is no state fault (it was reported as an I/O error, exit 74).
            report["note"] = "no state yet: the first run has not happened"
            return report
        _read_state(store, path, report)
    except StateError as exc:
        _with_state_error(report, exc)
    except sqlite3.Error as exc:  # a damaged file found while reading it: named likewise
        _with_state_error(report, state_error(path, exc))
    finally:
        store.close()
    return report


def _with_state_error(report: dict[str, Any], exc: StateError) -> dict[str, Any]:
    report["state_error"] = {"message": str(exc), "exit_code": exc.exit_code}
    report["note"] = str(exc)
    return report


def _read_state(store: Store, path: Path, report: dict[str, Any]) -> None:
    """The report's sections, as plain JSON-ready values (`status --json` prints them)."""
    report["schema_version"] = store.schema_version
    report["cursors"] = [asdict(c) for c in store.cursors.all()]
    report["stages"] = {str(k): v for k, v in store.returns.stage_counts().items()}
    report["actions"] = store.returns.action_counts()
    report["effects"] = {
        str(kind): {str(status): n for status, n in counts.items()}
        for kind, counts in store.ledger.counts().items()
    }
    runs = store.runs.last(1)
    if runs:
        run = asdict(runs[0])
        if run["status"] == "running" and not lock_is_held(path):
            run["status"] = "interrupted"  # no process works it: it died mid-run
            run["note"] = "the process ended without finishing this run"
        report["last_run"] = run
    refusal = refusals.load(store.kv(refusals.KV_NAMESPACE))
    if refusal is not None:
        report["credentials"] = {
            k: v for k, v in refusal.to_json().items() if k not in ("salt", "fingerprint")
        }
        report["credentials"]["reason"] = refusal.reason
    report["waiting"] = [asdict(w) for w in store.returns.held(50)]
    report["problems"] = [asdict(p) for p in store.runs.problems(20)]
    report["clock"] = clock_events(store)


def render_status(r: dict[str, Any]) -> str:
    lines = [f"{r['merchant']}  ({r['warehouse']}, state {r['state_path']})"]
    if "note" in r:
        return "\n".join([*lines, f"  {r['note']}", ""]) + "\n"
    cred = r.get("credentials")
    if cred:
        lines.append(
            f"  {cred['reason']} ({cred['failures']} in a row since "
            f"{cred['first_at']}); next try after {cred['retry_at']}: "
            f"{cred['message']}"
        )
    run = r.get("last_run")
    if run:
        lines.append(_run_line(run))
    lines += _cursor_lines(r.get("cursors", []))
    lines += clock_lines(r.get("clock", {}))
    lines += _count_lines(r)
    lines += _waiting_lines(r.get("waiting", []))
    lines += _problem_lines(r.get("problems", []))
    return "\n".join(lines) + "\n\n"


def _run_line(run: dict[str, Any]) -> str:
    c = run.get("counts", {})
    ended = run.get("ended_at") or f"({run['status']})"
    return (
        f"  last run  {run['started_at']} -> {ended}  "
        f"{run['status']}  pulled={c.get('pulled', 0)} pushed={c.get('pushed', 0)} "
        f"processed={c.get('processed', 0)} flagged={c.get('flagged', 0)} "
        f"errors={run.get('errors', 0)}" + (f"  error: {run['error']}" if run.get("error") else "")
    )


def _cursor_lines(cursors: list[dict[str, Any]]) -> list[str]:
    lines = ["  cursors"]
    for cur in cursors:
        where = f"done until {cur['done_until'] or '(not yet)'}"
        if cur.get("window_from"):
            where += f"; in window {cur['window_from']} -> {cur['window_to']}" + (
                " at a saved page" if cur.get("page_cursor") else ""
            )
        lines.append(f"    {cur['stream']}/{cur['state']:<10} {where}")
    return lines


def _count_lines(r: dict[str, Any]) -> list[str]:
    stages = r.get("stages", {})
    lines = [
        "  returns by stage  "
        + (", ".join(f"{k} {v}" for k, v in sorted(stages.items())) or "none")
    ]
    actions = r.get("actions", {})
    if actions:
        lines.append(
            "  loop actions      " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items()))
        )
    failed = {k: v.get("failed", 0) for k, v in r.get("effects", {}).items() if v.get("failed")}
    if failed:
        lines.append("  failed effects    " + ", ".join(f"{k} {v}" for k, v in failed.items()))
    return lines


def _waiting_lines(waiting: list[dict[str, Any]]) -> list[str]:
    if not waiting:
        return []
    return [f"  waiting on something ({len(waiting)} shown)"] + [
        f"    {w['id']:<12} {w['stage']:<9} {w.get('order_name') or '':<8} {w.get('reason') or ''}"
        for w in waiting
    ]


def _problem_lines(problems: list[dict[str, Any]]) -> list[str]:
    if not problems:
        return []
    return [f"  recent problems ({len(problems)} shown)"] + [
        f"    {p['at']}  {p.get('return_id') or '-':<12} {p['stage']:<6} {p['message']}"
        for p in problems
    ]


def clock_events(store: Store) -> dict[str, Any]:
    """Cursors pulled back from the future, clock skew against Loop, and walks that ended
    before the remote's last page (kv entries the engine and connectors keep)."""
    return {
        "pulled_back": [
            e.value | {"cursor": e.key.split(":", 1)[1]}
            for e in store.kv_with_prefix("pulled_back:")
        ],
        "skew": [e.value for e in store.kv_with_prefix("clock_skew") if e.namespace == "cursors"],
        "walks": [
            e.value | {"walk": e.key.split(":", 1)[1]}
            for e in store.kv_with_prefix("walk:")
            if isinstance(e.value, dict)
        ],
    }


def clock_lines(events: dict[str, Any]) -> list[str]:
    lines = [
        f"  cursor {p['cursor']} was in the future; pulled back at {p.get('at')} "
        f"from {p.get('from') or '-'} to {p.get('to') or '(start)'}"
        for p in events.get("pulled_back", [])
    ]
    lines += [
        f"  clock skew: ours ran {k.get('ahead_seconds')} s ahead of Loop's "
        f"at {k.get('at')} (cursors kept to Loop's clock)"
        for k in events.get("skew", [])
    ]
    lines += [
        f"  unfinished walk {w['walk']}: {w.get('outcome')} after "
        f"{w.get('pages')} pages, {w.get('times')} time(s) since {w.get('since')} "
        "(what it feeds waits)"
        for w in events.get("walks", [])
    ]
    return lines
