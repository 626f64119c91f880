"""The status page in a real browser: headless Chromium (Debian's `chromium`, driven by
playwright, the only module that imports it) loads the page a real `loopsync serve --http`
serves over the sandbox, searches for a return and checks its story.

LOOPSYNC_SCREENSHOT=1 also writes docs/status-page.png (the README's screenshot)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loopsync.config import load_config
from loopsync.runner import run_merchant
from loopsync.testing import Sandbox
from loopsync.timeutil import SystemClock

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 60  # seconds: the most any condition is waited for (a loaded machine)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch_json(url):
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our loopback server
        return json.loads(resp.read())


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if condition():
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path):
    sb = Sandbox("shiphero", clock=SystemClock(), rate_limits=False).start()
    seeded = sb.seed(8, states_weights=[("open", 1)])
    path = sb.write_config(tmp_path, merchant="acme", state_path=str(tmp_path / "acme.sqlite"))
    # Two cycles before serve starts: RMAs made, then some received, processed and flagged.
    cfg = load_config(path, env=sb.env())
    run_merchant(cfg)
    for raw, scenario in zip(seeded[3:], ["full", "full", "short", "damaged", "full"], strict=True):
        sb.warehouse.receive(raw["id"], scenario)
    run_merchant(cfg)
    port = free_port()
    err = (tmp_path / "stderr.txt").open("w+b")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loopsync",
            "--log-format",
            "json",
            "serve",
            "-c",
            str(path),
            "--http",
            f"127.0.0.1:{port}",
        ],
        env={**os.environ, **sb.env()},
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: any(
                m["recent_runs"] and m["recent_runs"][0]["status"] == "ok"
                for m in fetch_json(base + "/api/merchants")
            ),
            "a finished cycle",
        )
        yield base, seeded, proc
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
            sb.stop()
            err.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run)")
def test_status_page_in_chromium_shows_merchants_and_a_searched_returns_story(served):
    from playwright.sync_api import sync_playwright

    base, seeded, proc = served
    wanted = seeded[2]["id"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base + "/")
            section = page.locator("section.merchant[data-merchant=acme]")
            assert section.locator(".verdict").inner_text() == "OK"
            backlog = section.locator("table.backlog").inner_text()
            assert "open" in backlog and "done" in backlog
            assert section.locator("svg.chart rect").count() > 0
            assert "ok" in section.locator("table.runs").inner_text()
            if os.environ.get("LOOPSYNC_SCREENSHOT") == "1":
                page.screenshot(path=str(ROOT / "docs" / "status-page.png"), full_page=True)
            page.fill("#q", wanted)
            page.click("#search")
            page.wait_for_selector("#story")
            story = page.locator("#story").inner_text()
            assert f"Return {wanted}" in story and "pushed" in story and "RMA" in story
            assert page.locator("#story .stage").inner_text() == "open"
            for raw in seeded:
                assert raw["customer"] not in page.content()
        finally:
            browser.close()
    assert proc.poll() is None  # serve still running
