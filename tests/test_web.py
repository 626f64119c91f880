"""`serve --http` in process: health, readiness, metrics, the status page and its JSON,
escaping, no personal data, the bearer token off loopback, the alert rules' metric names."""

import contextlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from loopsync import telemetry, web
from loopsync.config import load_config
from loopsync.errors import RemoteError, UsageError
from loopsync.http import HttpClient
from loopsync.metrics import NAMES, Metrics, names_in
from loopsync.runner import run_merchant
from loopsync.state import Store

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def get(url, token=None):
    assert url.startswith("http://127.0.0.1:")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - our loopback server
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - as above
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def synced(make_sandbox, clock, tmp_path):
    """A merchant after one real cycle on the sandbox; a hostile problem reason added."""
    sb = make_sandbox("shiphero", rate_limits=False)
    seeded = sb.seed(4, states_weights=[("open", 1)])
    path = sb.write_config(tmp_path, merchant="acme", state_path=str(tmp_path / "acme.sqlite"))
    cfg = load_config(path, env=sb.env())
    run_merchant(cfg, clock=clock)
    store = Store(cfg.state_path, clock)
    store.runs.add_problem(seeded[0]["id"], "push", f"rejected: {HOSTILE}", None)
    store.close()
    return cfg, seeded


@pytest.fixture
def listener(synced, clock):
    cfg, _ = synced
    lis = web.Listener(web.Address("127.0.0.1", 0), lambda: [cfg], token=None, clock=clock)
    lis.start()
    yield lis, f"http://127.0.0.1:{lis.server.port}"
    lis.stop()


def test_health_follows_the_scheduler_heartbeat(listener, clock):
    lis, base = listener
    assert get(base + "/healthz")[0] == 200
    clock.advance(web.HEARTBEAT_STALE + 1)
    assert get(base + "/healthz")[0] == 503
    lis.beat()
    assert get(base + "/healthz")[0] == 200


def test_readyz_fails_when_a_merchant_is_stalled(listener, clock):
    _, base = listener
    assert get(base + "/readyz")[0] == 200
    clock.advance(4 * 60)  # every: 1m; stalled after 3 x every without a successful cycle
    status, text = get(base + "/readyz")
    assert status == 503 and "acme: STALLED" in text


def test_page_and_json_show_ids_and_states_never_personal_data(listener, synced):
    _, base = listener
    _, seeded = synced
    status, page = get(base + "/")
    assert status == 200 and "acme" in page and "<svg" in page
    api = get(base + "/api/merchants")[1] + get(base + "/api/merchants/acme")[1]
    story = get(base + f"/api/returns/{seeded[1]['id']}")[1]
    found = get(base + f"/returns?q={seeded[1]['id']}")[1]
    assert seeded[1]["id"] in story and seeded[1]["id"] in found
    for raw in seeded:
        for text in (page, api, story, found):
            assert raw["customer"] not in text  # the customer's email
            assert raw["customer"].split("@")[0] not in text  # the name in it


def test_hostile_reason_text_is_escaped_not_markup(listener):
    _, base = listener
    page = get(base + "/")[1]
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(" in page and "&lt;img src=x onerror=" in page


def test_unknown_return_is_a_404_not_an_error(listener):
    _, base = listener
    assert get(base + "/api/returns/999999999")[0] == 404
    status, page = get(base + "/returns?q=%3Cb%3Enope")
    assert status == 404 and "<b>nope" not in page


def test_metrics_in_prometheus_format_with_bounded_labels(listener, synced):
    _, base = listener
    _, seeded = synced
    telemetry.emit(telemetry.RequestDone("loop", 429, 0.1, "acme"))
    telemetry.emit(telemetry.ThrottleWait("loop", 2.5, telemetry.WaitCause.SERVER, "acme"))
    telemetry.emit(telemetry.CycleDone("acme", 1_780_000_000.0, 3.0, False, ("poll",)))
    status, text = get(base + "/metrics")
    assert status == 200
    assert 'loopsync_http_requests_total{merchant="acme",status="429",system="loop"} 1.0' in text
    assert (
        'loopsync_rate_limit_wait_seconds_total{cause="server",merchant="acme",'
        'system="loop"} 2.5' in text
    )
    assert 'loopsync_stage_errors_total{merchant="acme",stage="poll"} 1.0' in text
    assert 'loopsync_returns{merchant="acme",stage="open"}' in text
    assert 'loopsync_merchant_verdict{merchant="acme",verdict="OK"} 1.0' in text
    assert all(raw["id"] not in text for raw in seeded)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line.startswith("loopsync_")
    }
    assert {names_in(n).pop() for n in exported} <= NAMES


def test_http_client_requests_reach_the_metrics_with_their_merchant(make_sandbox, clock):
    sb = make_sandbox("shiphero", rate_limits=False)
    metrics = Metrics()
    metrics.subscribe()
    try:
        client = HttpClient("loop", sb.loop_url, clock=clock)
        # a 404: any answer is counted
        with telemetry.merchant_scope("acme"), contextlib.suppress(RemoteError):
            client.request("GET", "/no-such-route-here")
    finally:
        metrics.unsubscribe()
    text = metrics.render().decode()
    assert 'merchant="acme"' in text and 'system="loop"' in text


def test_off_loopback_the_page_needs_the_bearer_token_probes_stay_open(synced, clock):
    cfg, _ = synced
    addr = web.Address("0.0.0.0", 0)  # noqa: S104 - never bound: only the token check
    with pytest.raises(UsageError, match="LOOPSYNC_HTTP_TOKEN"):
        web.check_token(addr, {})
    token = web.check_token(addr, {"LOOPSYNC_HTTP_TOKEN": "s3cret-token-value"})
    lis = web.Listener(web.Address("127.0.0.1", 0), lambda: [cfg], token=token, clock=clock)
    lis.start()
    base = f"http://127.0.0.1:{lis.server.port}"
    try:
        assert get(base + "/")[0] == 401
        assert get(base + "/api/merchants")[0] == 401
        assert get(base + "/api/merchants", token="wrong")[0] == 401
        assert get(base + "/api/merchants", token="s3cret-token-value")[0] == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert get(base + probe)[0] == 200
    finally:
        lis.stop()


def test_addresses_parse_and_loopback_is_recognised():
    assert web.parse_address("127.0.0.1:9108") == web.Address("127.0.0.1", 9108)
    assert web.parse_address("[::1]:80").loopback
    assert web.parse_address("localhost:1").loopback
    assert not web.parse_address(":9108").loopback
    for bad in ("nope", "1.2.3.4:x", "1.2.3.4:70000"):
        with pytest.raises(UsageError):
            web.parse_address(bad)
    assert web.token_ok("Bearer abc", "abc") and not web.token_ok("Basic abc", "abc")
    assert not web.token_ok(None, "abc")


def test_serve_refuses_non_loopback_without_a_token_exit_2(synced, capsys, monkeypatch):
    from loopsync.cli import main

    cfg, _ = synced
    monkeypatch.delenv("LOOPSYNC_HTTP_TOKEN", raising=False)
    monkeypatch.setenv("LOOP_API_KEY", "sandbox-key-unused-here")
    code = main(["serve", "-c", str(cfg.file), "--http", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert code == 2 and "LOOPSYNC_HTTP_TOKEN" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_alert_rules_parse_and_name_only_exported_metrics():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "LoopsyncMerchantStalled",
        "LoopsyncCredentialsRefused",
        "LoopsyncErrorRate",
        "LoopsyncThrottled",
    } <= names
    for expr in exprs:
        used = names_in(expr)
        assert used and used <= NAMES, (expr, used - NAMES)


def test_each_framework_is_contained_in_its_one_module():
    """http.server only in web.py (and the sandbox's emulators), prometheus_client only in
    metrics.py, playwright only in the browser test; web is reached from serve alone."""
    import ast

    src = ROOT / "src" / "loopsync"
    owners = {
        "http.server": {"web.py", "sandbox/server.py"},
        "prometheus_client": {"metrics.py"},
        "playwright": set(),
        "loopsync.web": {"cli.py"},
        "loopsync.metrics": {"web.py"},
    }
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            names += (
                [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                for framework, allowed in owners.items():
                    if name == framework or name.startswith(framework + "."):
                        where = path.relative_to(src).as_posix()
                        assert where in allowed, f"{where} imports {name}"


def test_scheduler_beats_the_listeners_heartbeat_and_stops_it(tmp_path):
    import threading

    from loopsync.scheduling import serve
    from loopsync.shutdown import Shutdown

    stop = threading.Event()

    class Probe:
        started = stopped = False
        beats = 0

        def start(self):
            self.started = True

        def beat(self):
            self.beats += 1
            stop.set()  # one beat proves the scheduler runs jobs

        def draining(self):
            pass

        def stop(self):
            self.stopped = True

    probe = Probe()
    assert (
        serve([], lambda cfg, ev, **kw: None, stop, shutdown=Shutdown(), grace=5, listener=probe)
        == 0
    )
    assert probe.started and probe.beats >= 1 and probe.stopped
