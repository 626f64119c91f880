"""The loopsync command against the sandbox: exit codes, summaries, import, status,
dry run, and the `sandbox` command itself."""

import os
import re
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from loopsync.cli import main
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import Fault
from loopsync.state import Store
from loopsync.timeutil import SystemClock, iso


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(clock=SystemClock(), rate_limits=False)


@pytest.fixture
def cfg_path(sb, tmp_path, monkeypatch):
    for k, v in sb.env().items():
        monkeypatch.setenv(k, v)
    return sb.write_config(tmp_path, merchant="cli", state_path=str(tmp_path / "cli.sqlite"))


def test_run_once_then_status(sb, cfg_path, tmp_path, capsys):
    sb.seed(3, states_weights=[("open", 1)])
    assert main(["run", "--once", "-c", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "cli: pulled=3 new=3 pushed=3" in out
    assert main(["status", "-c", str(cfg_path)]) == 0
    status = capsys.readouterr().out
    assert "returns/open" in status and "done until" in status
    assert "open 3" in status and "last run" in status


def test_status_lists_what_waits_and_why(sb, cfg_path, capsys):
    sb.add_return(
        make_return(rng=sb.rng, return_id=8101, state="open", updated_at=sb.clock.now()),
        with_order=False,
    )
    main(["run", "--once", "-c", str(cfg_path)])
    capsys.readouterr()
    main(["status", "-c", str(cfg_path)])
    out = capsys.readouterr().out
    assert "8101" in out and "waiting" in out and "not found" in out


def test_errors_exit_1(sb, cfg_path, capsys):
    sb.seed(2, states_weights=[("open", 1)])
    # A refusal, not an outage: no retries to wait through, and the batch goes on.
    sb.warehouse.faults.set_random(
        1.0, [Fault("status", status=400, body={"errors": [{"message": "bad request"}]})]
    )
    assert main(["run", "--once", "-c", str(cfg_path)]) == 1
    assert "errors=" in capsys.readouterr().out


def test_import_by_id_leaves_the_live_cursor_alone(sb, cfg_path, tmp_path, capsys):
    old = sb.clock.now() - timedelta(days=90)  # before loop.start_at (30 days back)
    sb.add_return(make_return(rng=sb.rng, return_id=8201, state="open", updated_at=old))
    assert main(["import", "-c", str(cfg_path), "--return-id", "8201"]) == 0
    store = Store(tmp_path / "cli.sqlite", sb.clock)
    assert store.returns.get("8201").stage == "open"  # pushed: it has an RMA
    assert sb.warehouse.rma_count("8201") == 1
    assert store.cursors.all() == []


def test_import_range_and_dry_run(sb, cfg_path, tmp_path, capsys):
    now = sb.clock.now()
    for n in range(3):
        sb.add_return(
            make_return(
                rng=sb.rng,
                return_id=8301 + n,
                state="open",
                updated_at=now - timedelta(days=60 + n),
            )
        )
    start, end = iso(now - timedelta(days=70)), iso(now - timedelta(days=50))
    sb.recorder.clear()
    assert main(["import", "-c", str(cfg_path), "--from", start, "--to", end, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would create") == 3
    assert [c for c in sb.recorder.calls() if c.write] == []
    assert main(["import", "-c", str(cfg_path), "--from", start, "--to", end]) == 0
    assert all(sb.warehouse.rma_count(str(8301 + n)) == 1 for n in range(3))
    assert Store(tmp_path / "cli.sqlite", sb.clock).cursors.all() == []


@pytest.mark.parametrize(
    "args",
    [
        ["--return-id", "1", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"],
        ["--from", "2026-01-01T00:00:00Z"],
        ["--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
        ["--from", "2026-01-01T00:00:00", "--to", "2026-01-02T00:00:00Z"],
        [],
    ],
)
def test_import_usage_errors_exit_2(cfg_path, args, capsys):
    assert main(["import", "-c", str(cfg_path), *args]) == 2
    assert "error" in capsys.readouterr().err


def test_status_before_any_run(cfg_path, capsys):
    assert main(["status", "-c", str(cfg_path)]) == 0
    assert "no state yet" in capsys.readouterr().out


def test_sandbox_command_serves_and_prints_a_working_config(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopsync", "sandbox", "--port", "0", "--returns", "3"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert re.search(r"sandbox Loop at http://127\.0\.0\.1:\d+", text), text
        env = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in lines
            if line.strip().startswith("export ")
        )
        cfg = tmp_path / "sandbox-config" / "sandbox.yaml"
        run = subprocess.run(
            [sys.executable, "-m", "loopsync", "run", "--once", "-c", str(cfg)],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert "pushed=3" in run.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_return_reported_for_a_person_makes_run_exit_1_and_says_why(sb, cfg_path, capsys):
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    assert main(["run", "--once", "-c", str(cfg_path)]) == 0
    sb.warehouse.receive(rid, "full")
    # Loop refuses the process in words loopsync does not know, and the return still reads
    # open: loopsync will not guess, so a person must look, and the exit status says so.
    sb.loop.faults.inject(
        Fault(
            "status",
            status=200,
            body={"errors": {"message": "Return is locked by another workflow"}},
        ),
        when=lambda r: r.path.endswith("/process"),
    )
    capsys.readouterr()
    assert main(["run", "--once", "-c", str(cfg_path)]) == 1
    out = capsys.readouterr().out
    assert f"needs attention: return {rid}" in out
    assert sb.loop.actions_for(rid) == []


def test_status_without_secrets_finds_the_state_beside_the_config(tmp_path, monkeypatch, capsys):
    for name in ("LOOP_API_KEY", "SHIPHERO_REFRESH_TOKEN", "LOOPSYNC_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        "merchant: acme\nstate_path: st.sqlite\nloop:\n  api_key: ${LOOP_API_KEY}\n"
        "  start_at: 2026-01-01T00:00:00Z\nwarehouse:\n  kind: shiphero\n"
        "  refresh_token: ${SHIPHERO_REFRESH_TOKEN}\n"
    )
    assert main(["status", "-c", str(cfg)]) == 0
    assert f"state {tmp_path / 'st.sqlite'}" in capsys.readouterr().out
