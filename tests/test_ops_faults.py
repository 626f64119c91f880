"""Process behaviour in one process: local faults give one line and a sysexits code, one
merchant's trouble stays its own, credentials refused stop the cycle and back off,
`status` reads without writing or secrets, `--dry-run` changes no file."""

import hashlib
import sqlite3

import pytest

from loopsync import cli, refusals
from loopsync.cli import main
from loopsync.cycle import Engine
from loopsync.errors import StateCorrupt, StateIOError, StateUnwritable
from loopsync.sandbox.seed import make_return
from loopsync.state import Store, state_error
from loopsync.testing import FakeClock
from loopsync.timeutil import SystemClock


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(clock=SystemClock(), rate_limits=False)


@pytest.fixture
def env(sb, monkeypatch):
    for k, v in sb.env().items():
        monkeypatch.setenv(k, v)
    return sb.env()


def write(sb, folder, merchant, **kw):
    kw.setdefault("state_path", str(folder / f"{merchant}.sqlite"))
    return sb.write_config(folder, merchant=merchant, **kw)


def files_digest(folder):
    """Every file under `folder`: name -> (size, mtime, sha256)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


def no_traceback(text):
    return "Traceback" not in text and 'File "' not in text


# -- local faults -----------------------------------------------------------------------------


def make_corrupt(path, how):
    if how == "not a database":
        path.write_bytes(b"this is not a database\n" * 40)
    elif how == "truncated":
        store = Store(path, FakeClock())
        for n in range(300):  # enough rows for several pages
            store.runs.add_problem(str(n), "ingest", "x" * 500, None)
        store.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "newer schema":
        store = Store(path, FakeClock())
        store._set_meta("schema_version", "99")
        store.close()


@pytest.mark.parametrize("how", ["not a database", "truncated", "newer schema"])
def test_corrupt_state_is_one_line_and_exit_65(sb, env, tmp_path, capsys, how):
    cfg = write(sb, tmp_path, "acme")
    make_corrupt(tmp_path / "acme.sqlite", how)
    before = files_digest(tmp_path)
    assert main(["run", "--once", "-c", str(cfg)]) == 65
    (tmp_path / "acme.sqlite.lock").unlink()  # the run's own lock file
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("loopsync:")]
    assert len(lines) == 1 and str(tmp_path / "acme.sqlite") in lines[0], err
    assert no_traceback(err)
    assert files_digest(tmp_path) == before  # left as it was, for a person to look at
    assert main(["status", "-c", str(cfg)]) == 65  # status says the same, no traceback
    assert no_traceback(capsys.readouterr().err)


def test_state_folder_that_cannot_be_created_exits_73(sb, env, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where the state folder should be")
    cfg = write(sb, tmp_path, "acme", state_path=str(tmp_path / "blocker" / "acme.sqlite"))
    assert main(["run", "--once", "-c", str(cfg)]) == 73
    err = capsys.readouterr().err
    assert "blocker" in err and "cannot be created" in err and no_traceback(err)


def test_state_errors_are_classified_by_cause():
    assert isinstance(
        state_error("s", sqlite3.OperationalError("database or disk is full")), StateIOError
    )
    assert isinstance(
        state_error("s", sqlite3.DatabaseError("file is not a database")), StateCorrupt
    )
    assert isinstance(
        state_error("s", sqlite3.OperationalError("attempt to write a readonly database")),
        StateUnwritable,
    )
    assert isinstance(state_error("s", PermissionError(13, "Permission denied")), StateUnwritable)
    assert isinstance(state_error("s", OSError(28, "No space left on device")), StateIOError)


def test_disk_full_mid_cycle_exits_74_and_leaves_the_database_intact(
    sb, env, tmp_path, capsys, monkeypatch
):
    cfg = write(sb, tmp_path, "acme")
    sb.seed(3, states_weights=[("open", 1)])
    assert main(["run", "--once", "-c", str(cfg)]) == 0
    sb.seed(20, states_weights=[("open", 1)])
    real_init = Store.__init__

    def tiny_disk(self, *a, **kw):
        real_init(self, *a, **kw)
        pages = self.db.execute("pragma page_count").fetchone()[0]
        size = self.db.execute("pragma page_size").fetchone()[0]
        # The disk fills about 12 KB on (fewer than the 20 new returns need): SQLite
        # answers SQLITE_FULL at some write.
        self.db.execute(f"pragma max_page_count = {pages + max(1, 12288 // size)}")

    monkeypatch.setattr(Store, "__init__", tiny_disk)
    capsys.readouterr()
    assert main(["run", "--once", "-c", str(cfg)]) == 74
    err = capsys.readouterr().err
    assert "disk full" in err and str(tmp_path / "acme.sqlite") in err and no_traceback(err)
    monkeypatch.setattr(Store, "__init__", real_init)
    conn = sqlite3.connect(tmp_path / "acme.sqlite")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert main(["run", "--once", "-c", str(cfg)]) == 0  # space again: it carries on


def test_unexpected_error_is_one_redacted_line_and_exit_70(env, monkeypatch, capsys):
    from loopsync import logs

    logs.register_secret("s3cret-value-xyz")

    def boom(args, out):
        raise ValueError("went wrong near s3cret-value-xyz\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "check-config", boom)
    assert main(["check-config", "-c", "x.yaml"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "s3cret" not in err


# -- one merchant's trouble stays its own -------------------------------------------------------


def test_run_dir_goes_on_past_bad_config_corrupt_state_and_a_crash(
    sb, env, tmp_path, capsys, monkeypatch
):
    sb.seed(2, states_weights=[("open", 1)])
    for m in ("a-ok", "b-crash", "c-corrupt", "z-ok"):
        write(sb, tmp_path / "conf", m, state_path=str(tmp_path / f"{m}.sqlite"))
    make_corrupt(tmp_path / "c-corrupt.sqlite", "not a database")
    real = Engine.run_cycle

    def crash_b(self, *a, **kw):
        if self.cfg.merchant == "b-crash":
            raise RuntimeError("a bug in one merchant's cycle")
        return real(self, *a, **kw)

    monkeypatch.setattr(Engine, "run_cycle", crash_b)
    assert main(["run", "--once", "-c", str(tmp_path / "conf")]) == 1
    out, err = capsys.readouterr()
    assert "a-ok: pulled=2" in out and "z-ok: pulled=2" in out
    final = [line for line in err.splitlines() if line.startswith("loopsync: failed:")]
    assert len(final) == 1 and "b-crash" in final[0] and "c-corrupt" in final[0], err
    assert no_traceback(err)
    crashed = Store(tmp_path / "b-crash.sqlite", FakeClock()).runs.last(1)[0]
    assert crashed.status == "crashed"

    (tmp_path / "conf" / "d-bad.yaml").write_text("merchant: d-bad\nloop: {api_key: 1}\n")
    assert main(["run", "--once", "-c", str(tmp_path / "conf")]) == 2
    out, err = capsys.readouterr()
    assert "z-ok: pulled=" in out
    assert [line for line in err.splitlines() if line.startswith("config error:")] == [
        line for line in err.splitlines() if "d-bad.yaml" in line and "config error" in line
    ]


# -- credentials refused ----------------------------------------------------------------------


def test_refused_loop_key_stops_the_cycle_once_and_backs_off(make_sandbox, tmp_path):
    clock = FakeClock("2026-06-01T12:00:00Z")
    sb = make_sandbox(clock=clock, rate_limits=False)
    sb.seed(30, states_weights=[("open", 1)])
    cfg = sb.merchant_config(tmp_path, merchant="acme")
    from loopsync.config import load_config

    wrong = load_config(cfg.file, env={**sb.env(), "LOOP_API_KEY": "not-the-right-key-123"})
    result = sb.run_cycle(wrong)
    assert "credentials refused by loop" in result.stage_errors["credentials"]
    sent = len(sb.recorder.calls())
    assert sent <= 3  # not one refused request per return
    store = Store(cfg.state_path, clock)
    assert store.runs.last(1)[0].status == "refused"
    assert len(store.runs.problems(100)) == 0
    refusal = refusals.load(store.kv(refusals.KV_NAMESPACE))
    assert refusal.failures == 1 and refusal.system == "loop"
    store.close()

    clock.advance(60)  # inside the wait: nothing is sent at all
    again = sb.run_cycle(wrong)
    assert not again.ok and "not tried again before" in again.stage_errors["credentials"]
    assert len(sb.recorder.calls()) == sent

    clock.advance(refusals.backoff(1))  # the wait is over: tried, refused, longer wait
    sb.run_cycle(wrong)
    store = Store(cfg.state_path, clock)
    refusal = refusals.load(store.kv(refusals.KV_NAMESPACE))
    assert refusal.failures == 2 and refusal.retry_at == clock.now() + refusals.backoff(2)
    store.close()

    fixed = sb.run_cycle(cfg)  # the right key: tried at once, refusal forgotten
    assert fixed.ok and fixed.counts.pushed == 30
    store = Store(cfg.state_path, clock)
    assert refusals.load(store.kv(refusals.KV_NAMESPACE)) is None
    stored = [*store.db.query("select * from runs"), *store.db.query("select * from kv")]
    assert stored and "not-the-right-key" not in str(stored)
    store.close()


def test_refused_shiphero_refresh_token_is_one_reason_not_a_problem_per_return(
    make_sandbox, tmp_path, capsys
):
    clock = FakeClock("2026-06-01T12:00:00Z")
    sb = make_sandbox(clock=clock, rate_limits=False)
    sb.seed(25, states_weights=[("open", 1)])
    cfg = sb.merchant_config(tmp_path, merchant="acme")
    from loopsync.config import load_config

    wrong = load_config(cfg.file, env={**sb.env(), "SHIPHERO_REFRESH_TOKEN": "refused-token-1234"})
    result = sb.run_cycle(wrong)
    assert result.stage_errors["credentials"].startswith("credentials refused by shiphero")
    refreshes = [c for c in sb.recorder.calls() if c.path.endswith("/auth/refresh")]
    assert len(refreshes) <= 2
    store = Store(cfg.state_path, clock)
    assert store.runs.problems(100) == []
    assert all(s == 0 for k, s in store.returns.stage_counts().items() if k not in ("new",))
    store.close()
    from loopsync.status import merchant_status, render_status

    text = render_status(merchant_status(cfg))
    assert "credentials refused by shiphero" in text and "next try after" in text


def test_backoff_doubles_and_is_capped():
    assert refusals.backoff(1) == refusals.BACKOFF_BASE
    assert refusals.backoff(2) == 2 * refusals.BACKOFF_BASE
    assert refusals.backoff(50) == refusals.BACKOFF_CAP


def test_changed_credentials_are_tried_at_once():
    now = FakeClock().now()
    refused = refusals.after_refusal(None, "loop", "401", now, ["old-key-123456"])
    assert not refusals.may_try(refused, now, ["old-key-123456"])
    assert refusals.may_try(refused, now, ["new-key-654321"])
    assert refusals.may_try(refused, refused.retry_at, ["old-key-123456"])
    assert "old-key" not in str(refused.to_json())


# -- status and dry run -----------------------------------------------------------------------


def test_status_shows_a_run_that_died_as_interrupted_and_needs_no_secret(
    sb, env, tmp_path, capsys, monkeypatch
):
    cfg = write(sb, tmp_path, "acme")
    store = Store(tmp_path / "acme.sqlite", FakeClock())
    store.runs.start("deadbeef", "run")  # a run row left behind by a killed process
    store.close()
    for name in env:
        monkeypatch.delenv(name)
    before = files_digest(tmp_path)
    assert main(["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out
    assert main(["status", "--json", "-c", str(cfg)]) == 0
    assert '"status": "interrupted"' in capsys.readouterr().out
    assert files_digest(tmp_path) == before

    from loopsync.state import MerchantLock

    with MerchantLock(tmp_path / "acme.sqlite"):  # a live worker: really running
        main(["status", "-c", str(cfg)])
        assert "interrupted" not in capsys.readouterr().out


@pytest.mark.parametrize("live_writer", [False, True], ids=["closed cleanly", "wal present"])
def test_dry_run_changes_no_file(sb, env, tmp_path, capsys, live_writer):
    cfg = write(sb, tmp_path, "acme")
    sb.seed(3, states_weights=[("open", 1)])
    assert main(["run", "--once", "-c", str(cfg)]) == 0
    for n in range(2):  # new since the last run: the dry run would push them
        sb.add_return(
            make_return(rng=sb.rng, return_id=9101 + n, state="open", updated_at=sb.clock.now())
        )
    writer = None
    if live_writer:  # another connection holds the WAL open, with a commit in it
        writer = Store(tmp_path / "acme.sqlite", FakeClock())
        writer.runs.add_problem(None, "test", "kept in the wal", None)
    before = files_digest(tmp_path)
    assert main(["run", "--once", "--dry-run", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.count("would create") == 2
    assert files_digest(tmp_path) == before
    if writer is not None:
        writer.close()
