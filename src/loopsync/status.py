"""`loopsync status`: where a merchant's sync stands, read from its state file alone.

It changes no file (the state is opened read-only, see `Store(read_only=True)`; a file of
an older schema is read as it is, never migrated: tables it lacks read as empty) and
needs no secret: configuration is read with any missing ${VAR} standing in. A last run
still marked running while no process holds the merchant's lock died without finishing
(killed, power cut, disk full): it is shown as `interrupted`.

The typed API (the CLI, the status page and metrics build on it; `report` decides):
    merchant_view(cfg, now=)      -> report.MerchantView   the verdict and what backs it
    return_story(cfg, query)      -> report.ReturnStory | None   by Loop id, RMA id or number
    outcomes_by_hour(cfg, hours=) -> [report.HourCount]    processed/flagged per hour
`merchant_status` / `render_status` are the older detail sections (cursors, counts,
waiting returns, clock events) that `status` prints below the verdict."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loopsync import refusals, report, webhooks
from loopsync.config import MerchantConfig
from loopsync.errors import StateCorrupt, StateError
from loopsync.state import ReturnRow, Store, lock_is_held, state_error
from loopsync.state.runs import NEXT_DUE_KEY, NEXT_DUE_NAMESPACE, WEBHOOK_MODE
from loopsync.timeutil import SystemClock, iso, parse_timestamp

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


# A row damaged by hand or written by a newer loopsync (a stage or effect kind this one
# does not know, JSON that does not parse) fails as one of these while it is read.
ROW_FAULTS = (ValueError, TypeError, AttributeError, KeyError)


def _row_fault(path: Path, exc: Exception) -> StateCorrupt:
    return StateCorrupt(str(path), f"holds a row this loopsync cannot read ({type(exc).__name__})")


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
    except ROW_FAULTS as exc:
        _with_state_error(report, _row_fault(path, exc))
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


# -- the typed views (report.py decides; these read the state file) ------------------------
RECENT_RUNS = 10
PROBLEM_ROWS = 500  # the newest problem rows grouped (older ones are history)


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_timestamp(value, assume_utc=True)
    except ValueError:
        return None


def _base_view(
    cfg: MerchantConfig, now: datetime, verdict: report.Verdict, reason: str
) -> report.MerchantView:
    return report.MerchantView(
        cfg.merchant, cfg.warehouse.kind, str(Path(cfg.state_path).absolute()), verdict, reason, now
    )


def merchant_view(cfg: MerchantConfig, *, now: datetime | None = None) -> report.MerchantView:
    """The merchant's verdict and what backs it, read from its state file alone
    (read-only, no migration: an older schema is read as it is)."""
    now = now or SystemClock().now()
    path = Path(cfg.state_path)
    if not path.exists():
        return _base_view(
            cfg, now, report.Verdict.NEVER_RUN, "no state yet: the first run has not happened"
        )
    try:
        store = Store(path, SystemClock(), read_only=True)
    except StateError as exc:
        return _blocked(cfg, now, str(exc))
    try:
        if not store.initialised:
            return _base_view(
                cfg, now, report.Verdict.NEVER_RUN, "no state yet: the first run has not happened"
            )
        return _read_view(cfg, store, path, now)
    except StateError as exc:
        return _blocked(cfg, now, str(exc))
    except sqlite3.Error as exc:
        return _blocked(cfg, now, str(state_error(path, exc)))
    except ROW_FAULTS as exc:
        return _blocked(cfg, now, str(_row_fault(path, exc)))
    finally:
        store.close()


def _blocked(cfg: MerchantConfig, now: datetime, message: str) -> report.MerchantView:
    facts = report.Facts(cfg.every, cfg.stall_limit, state_error=message)
    verdict, reason = report.verdict(facts, now)
    return _base_view(cfg, now, verdict, reason)


def _runs(store: Store, path: Path) -> tuple[report.RunView, ...]:
    rows = store.runs.last(RECENT_RUNS)
    if all(r.mode == WEBHOOK_MODE for r in rows):  # webhooks' runs hid the last cycle
        rows += store.runs.last(1, cycles_only=True)
    failures: dict[str, list[report.StageFailure]] = {}
    for f in store.runs.stage_failures([r.id for r in rows]):
        failures.setdefault(f.run_id, []).append(
            report.StageFailure(f.run_id, f.stage, f.reason, _when(f.at))
        )
    held = None
    views = []
    for i, r in enumerate(rows):
        status = r.status or "running"
        if status == "running" and i == 0:
            held = lock_is_held(path) if held is None else held
            status = "running" if held else "interrupted"
        elif status == "running":
            status = "interrupted"  # a later run started: this one died
        views.append(
            report.RunView(
                r.id,
                _when(r.started_at),
                _when(r.ended_at),
                status,
                {k: v for k, v in r.counts.items() if isinstance(v, int)},
                r.errors,
                tuple(failures.get(r.id, ())),
                r.mode,
                r.error,
            )
        )
    return tuple(views)


def read_facts(cfg: MerchantConfig, store: Store, path: Path) -> report.Facts:
    refusal = refusals.load(store.kv(refusals.KV_NAMESPACE))
    refused = (
        None
        if refusal is None
        else report.CredentialsRefused(
            refusal.system, refusal.failures, refusal.first_at, refusal.retry_at, refusal.message
        )
    )
    due = store.kv(NEXT_DUE_NAMESPACE).get(NEXT_DUE_KEY)
    return report.Facts(
        cfg.every,
        cfg.stall_limit,
        runs=_runs(store, path),
        first_run_at=_when(store.runs.first_started()),
        last_ok_at=_when(store.runs.last_ok()),
        refusal=refused,
        next_due=_when(due if isinstance(due, str) else None),
    )


def _read_view(cfg: MerchantConfig, store: Store, path: Path, now: datetime) -> report.MerchantView:
    facts = read_facts(cfg, store, path)
    verdict, reason = report.verdict(facts, now)
    problems = [
        report.ProblemFact(p.return_id, p.stage, p.message, _when(p.at), p.run_id)
        for p in store.runs.problems(PROBLEM_ROWS)
    ]
    places = _places(store, {p.return_id for p in problems if p.return_id})
    groups = report.group_problems(problems, places, facts.runs)
    return report.MerchantView(
        cfg.merchant,
        cfg.warehouse.kind,
        str(path.absolute()),
        verdict,
        reason,
        now,
        last_run=facts.runs[0] if facts.runs else None,
        last_ok_at=facts.last_ok_at,
        next_due=facts.next_due,
        backlog={str(k): v for k, v in store.returns.stage_counts().items()},
        problems=tuple(groups),
        recent_runs=facts.runs,
        refusal=facts.refusal,
        schema_version=store.schema_version,
        effects={
            str(kind): {str(s): n for s, n in counts.items()}
            for kind, counts in store.ledger.counts().items()
        },
        waiting=tuple((w.id, str(w.stage), w.reason or "") for w in store.returns.held(20)),
        webhooks=webhook_view(cfg, store, now),
    )


def webhook_view(cfg: MerchantConfig, store: Store, now: datetime) -> report.WebhookView | None:
    """The inbox's figures (schema 4); None when the merchant has no webhook secret and
    no event was ever stored."""
    if not store.runs.has_table("inbox"):
        return None
    fig = store.inbox.figures()
    if not cfg.webhooks.secrets() and not fig.accepted:
        return None
    last = _when(fig.last_event_at)
    within = cfg.webhooks.healthy_within
    heard = {k: _when(v) for k, v in fig.last_by_source.items()}
    # every sender with a secret must be heard (ShipHero disables an unhealthy webhook
    # while Loop's may go on), as for the poll deferral (inbox.WebhookService.poll_due)
    silent = tuple(
        s for s in cfg.webhooks.senders() if not webhooks.healthy(heard.get(s), now, within)
    )
    return report.WebhookView(
        healthy=webhooks.healthy(last, now, within) and not silent,
        accepted=fig.accepted,
        unhandled=fig.unhandled,
        last_event_at=last,
        last_by_source=heard,
        refused=dict(fig.refused),
        missed=fig.missed,
        missed_recent=fig.missed_recent,
        silent=silent,
    )


def _places(store: Store, rids: set[str]) -> dict[str, report.ReturnPlace]:
    out = {}
    for rid in rids:
        row = store.returns.get(rid)
        if row is not None:
            out[rid] = report.ReturnPlace(str(row.stage), _when(row.stage_at))
    return out


def return_story(cfg: MerchantConfig, query: str) -> report.ReturnStory | None:
    """The story of one return, found by its Loop id, its RMA id or an RMA number a
    connector keeps; None when the state file knows no such return."""
    path = Path(cfg.state_path)
    if not path.exists():
        return None
    store = Store(path, SystemClock(), read_only=True)
    try:
        if not store.initialised:
            return None
        rid = query if store.returns.get(query) is not None else store.rmas.find(query)
        row = store.returns.get(rid) if rid else None
        if row is None:
            return None
        return _story(store, row)
    except sqlite3.Error as exc:
        raise state_error(path, exc) from None
    except ROW_FAULTS as exc:
        raise _row_fault(path, exc) from None
    finally:
        store.close()


def _story(store: Store, row: ReturnRow) -> report.ReturnStory:
    E = report.EventKind  # noqa: N806 - a short alias for the enum, read as a table below
    events = [
        report.StoryEvent(
            _when(row.first_seen_at), E.INGESTED, f"ingested from Loop (state {row.state})"
        )
    ]
    rma = store.rmas.get(row.id)
    if rma is not None:
        events.append(
            report.StoryEvent(_when(rma.created_at), E.PUSHED, f"RMA {rma.rma_id} linked")
        )
    if store.runs.has_table("polls"):  # schema 3: the history; before it, the last poll only
        for p in store.rmas.polls(row.id):
            events.append(
                report.StoryEvent(_when(p.at), E.POLLED, f"warehouse status {p.status or '-'}")
            )
            if p.decision:
                events.append(
                    report.StoryEvent(
                        _when(p.at), E.DECIDED, f"{p.decision}: {p.reason or ''}".strip()
                    )
                )
    elif rma is not None and rma.polled_at:
        events.append(
            report.StoryEvent(
                _when(rma.polled_at), E.POLLED, f"warehouse status {rma.status or '-'}"
            )
        )
        if rma.decision:
            events.append(
                report.StoryEvent(
                    _when(rma.polled_at), E.DECIDED, f"{rma.decision}: {rma.decision_reason or ''}"
                )
            )
    for eff in store.ledger.for_return(row.id):
        error = f"; last error: {eff.last_error}" if eff.last_error else ""
        events.append(
            report.StoryEvent(
                _when(eff.updated_at),
                E.EFFECT,
                f"{eff.kind} {eff.status} after {eff.attempts} attempt(s){error}",
            )
        )
    events.extend(
        report.StoryEvent(_when(prob.at), E.PROBLEM, f"{prob.stage}: {prob.message}")
        for prob in store.runs.problems_for(row.id)
    )
    events.append(
        report.StoryEvent(
            _when(row.stage_at),
            E.STAGE,
            f"stage {row.stage}" + (f": {row.reason}" if row.reason else ""),
        )
    )
    events.sort(key=lambda e: e.at.timestamp() if e.at else 0.0)
    return report.ReturnStory(
        row.id,
        rma.rma_id if rma else None,
        str(row.stage),
        tuple(events),
        report.wait_reason(str(row.stage), row.reason),
    )


def outcomes_by_hour(
    cfg: MerchantConfig, *, hours: int = 72, now: datetime | None = None
) -> list[report.HourCount]:
    """Returns processed and flagged in Loop per hour over the last `hours` (succeeded
    PROCESS and FLAG effects of the ledger), oldest hour first, every hour present."""
    now = now or SystemClock().now()
    path = Path(cfg.state_path)
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=hours - 1)
    seen: dict[tuple[datetime, str], int] = {}
    if path.exists():
        store = Store(path, SystemClock(), read_only=True)
        try:
            if store.initialised:
                for kind, at in store.ledger.outcomes_since(iso(start) or ""):
                    when = _when(at)
                    if when is not None:
                        hour = when.replace(minute=0, second=0, microsecond=0)
                        seen[(hour, kind)] = seen.get((hour, kind), 0) + 1
        except sqlite3.Error as exc:
            raise state_error(path, exc) from None
        finally:
            store.close()
    return report.hour_counts(seen, start, hours)
