"""Red team, poison records and hostile servers (issue 15 §1, §2): answers that are wrong
at every level, end to end through the engine against the sandbox on 127.0.0.1. Each
test names the guarantee it holds: a valid record or the one Unreadable error, a bad
answer holds back only what it is about, nothing crashes a stage or a run."""

from __future__ import annotations

from typing import Any

from loopsync.sandbox.server import Fault, Request, Response
from loopsync.status import merchant_status, render_status

HTML_PAGE = Response(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                     {"Content-Type": "text/html"})


def open_returns(sb: Any, n: int) -> list[str]:
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


def config(sb: Any, tmp_path: Any) -> Any:
    return sb.merchant_config(tmp_path, start_days=4)


def on_path(suffix: str):
    return lambda req: req.path.endswith(suffix)


# -- ShipHero: a token endpoint that answers an HTML page under 200 -------------------------

def test_shiphero_refresh_answered_by_an_html_page_is_retried_not_credentials_refused(
        make_sandbox, tmp_path):
    sb = make_sandbox("shiphero")
    ids = open_returns(sb, 2)
    sb.warehouse.faults.inject(Fault("custom", response=lambda req: HTML_PAGE), times=1,
                               when=on_path("/auth/refresh"))
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.pushed == 2, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)


def test_shiphero_refresh_always_html_is_a_remote_fault_without_a_credentials_backoff(
        make_sandbox, tmp_path):
    sb = make_sandbox("shiphero")
    open_returns(sb, 1)
    sb.warehouse.faults.inject(Fault("custom", response=lambda req: HTML_PAGE), times=10**6,
                               when=on_path("/auth/refresh"))
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert "credentials" not in result.stage_errors, result.stage_errors
    text = render_status(merchant_status(cfg))
    assert "credentials refused" not in text
    assert "/auth/refresh answered HTTP 200 without a JSON object" in text, text
