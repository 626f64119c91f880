"""Red team, deployment and fleet: what a careless operator does to `state import`,
`shards plan` and a large fleet's start-up, and what loopsync must answer."""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from structlog.testing import capture_logs

from loopsync import cli, healthcheck, web
from loopsync.errors import StateCorrupt, StateUnwritable, UsageError
from loopsync.logs import configure as configure_logs
from loopsync.metrics import NAMES, Metrics
from loopsync.scheduling import Pool, _guarded, log_event
from loopsync.shards import owner, resolve
from loopsync.state import Store
from loopsync.state.backup import export, import_state
from loopsync.testing import FakeClock
from loopsync.timeutil import iso
from tests.test_fleet_pacing import merchant
from tests.test_state_backup import _config, _sql, _state


def _import(config: Path, source: Path) -> int:
    return cli.main(
        ["state", "import", "-c", str(config), "--from", str(source)], out=io.StringIO()
    )


def _exported(tmp_path: Path, clock: FakeClock) -> Path:
    _state(tmp_path / "a" / "s.sqlite", clock, effects=1)
    return export("acme", tmp_path / "a" / "s.sqlite", tmp_path / "acme.export", clock).path


def test_state_import_never_creates_a_missing_state_volume(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The resharding procedure imports into the new shard's volume: with that volume not
    mounted, an import that made the folder would put the state on the pod's own disk
    (lost with it) and report success."""
    file = _exported(tmp_path, clock)
    volume = tmp_path / "volume"  # LOOPSYNC_STATE_DIR, not mounted (missing)
    monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(volume))
    doc = yaml.safe_load(_config(tmp_path, tmp_path / "x").read_text(encoding="utf-8"))
    doc["state_path"] = "acme.sqlite"  # relative: lands in LOOPSYNC_STATE_DIR
    config = tmp_path / "acme.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert _import(config, file) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LOOPSYNC_STATE_DIR" in err[0]
    assert not volume.exists()
    # an absolute state_path's missing folder (not beside the configuration) too
    monkeypatch.delenv("LOOPSYNC_STATE_DIR")
    doc["state_path"] = str(tmp_path / "pv" / "acme.sqlite")
    (tmp_path / "conf").mkdir()
    elsewhere = tmp_path / "conf" / "acme.yaml"
    elsewhere.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert _import(elsewhere, file) == 73
    assert not (tmp_path / "pv").exists()
    monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(volume))
    volume.mkdir()  # mounted: the import goes through
    assert _import(config, file) == 0 and (volume / "acme.sqlite").is_file()


def _event(path: Path, key: str, received_at: str, handled_at: str | None = None) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "insert into inbox (key, source, topic, subject, body_hash, received_at, "
            "handled_at) values (?, 'loop', 'return.updated', '1001', 'h', ?, ?)",
            [key, received_at, handled_at],
        )
        conn.commit()
    finally:
        conn.close()


def test_state_import_refuses_to_lose_a_webhook_event_the_target_received_later(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A webhook answered 2xx is never sent again: a target state whose inbox took an event
    after the file was exported is newer, as one with a later run is."""
    file = _exported(tmp_path, clock)
    target = tmp_path / "b" / "s.sqlite"
    import_state("acme", target, file)
    clock.advance(60)
    _event(target, "loop:evt-1", iso(clock.now()) or "")
    with pytest.raises(StateUnwritable, match="newer than the file"):
        import_state("acme", target, file)
    assert _inbox_keys(target) == {"loop:evt-1"}


def test_state_import_refuses_to_lose_an_unhandled_event_whatever_its_clock(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An unhandled event the file lacks is refused even when dated before the file (a
    clock that disagrees): it is work the import would drop."""
    file = _exported(tmp_path, clock)
    target = tmp_path / "b" / "s.sqlite"
    import_state("acme", target, file)
    _event(target, "loop:evt-2", "2001-01-01T00:00:00Z")
    with pytest.raises(StateUnwritable, match="unhandled webhook event"):
        import_state("acme", target, file)
    # handled long ago and pruned from the file's side: nothing is lost, the import goes on
    _sql(target, "update inbox set handled_at = '2001-01-01T00:00:01Z'")
    assert import_state("acme", target, file).replaced


def _inbox_keys(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {str(k) for (k,) in conn.execute("select key from inbox")}
    finally:
        conn.close()


def test_shards_plan_with_a_bad_file_among_good_ones_still_plans_the_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "merchants"
    folder.mkdir()
    names = [f"m{i:02d}" for i in range(12)]
    for name in names:
        _config(folder, tmp_path / name, merchant=name)
    (folder / "broken.yaml").write_text("merchant: [\n", encoding="utf-8")
    out = io.StringIO()
    code = cli.main(["shards", "plan", "-c", str(folder), "--from", "2", "--to", "3"], out=out)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error:") and "broken.yaml" in err[0]
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith(f"of {len(names)} merchant(s) move from 2 to 3 shards")
    )


def test_a_skip_behind_a_queued_cycle_says_it_waits_for_a_worker_not_that_it_runs() -> None:
    """With a bounded pool, a cycle skipped because its predecessor has no worker yet is a
    busy process, not a slow merchant: the line must not send the operator after acme."""
    configure_logs(json_output=True, level="debug")  # capture_logs keeps the level filter
    pool = Pool(1, FakeClock())
    event = SimpleNamespace(code=EVENT_JOB_MAX_INSTANCES, job_id="sync:acme")
    with capture_logs() as logs:
        pool.expect("sync:acme", FakeClock().now())  # queued: every worker busy
        log_event(event, pool)
        pool.begin("sync:acme")  # it got its worker: now it runs
        log_event(event, pool)
    queued, running = (e["message"] for e in logs if e["event"] == "scheduler.skipped")
    assert "still waiting for a worker" in queued and "serve --workers" in queued
    assert running == "skipped: the previous cycle of acme is still running"


def test_how_late_cycles_start_is_a_prometheus_histogram_not_only_a_log_line() -> None:
    """A platform alerts on metrics: a pool too small for its merchants must show on
    /metrics, where `serve.cycle_late` in the logs reaches no alert rule."""
    metrics = Metrics()
    metrics.subscribe()
    try:
        clock = FakeClock()
        pool = Pool(1, clock)
        job = _guarded(lambda cfg, stop, next_due: None, lambda cfg: lambda: None, pool)
        pool.expect("sync:acme", clock.now())
        clock.advance(42)  # 42 s in the queue
        job(merchant("acme"), threading.Event())
    finally:
        metrics.unsubscribe()
    text = metrics.render().decode()
    assert "loopsync_cycle_start_lateness_seconds_count 1.0" in text
    assert "loopsync_cycle_start_lateness_seconds_sum 42.0" in text
    assert 'loopsync_cycle_start_lateness_seconds_bucket{le="30.0"} 0.0' in text
    assert 'loopsync_cycle_start_lateness_seconds_bucket{le="60.0"} 1.0' in text
    assert "loopsync_cycle_start_lateness_seconds" in NAMES


_KUBECTL = shutil.which("kubectl")
_FLEET = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "overlays" / "fleet"


@pytest.mark.slow  # kubectl kustomize runs as a process
@pytest.mark.skipif(_KUBECTL is None, reason="kubectl is not installed here")
def test_a_shard_of_many_merchants_gets_a_startup_probe_before_liveness_can_kill_it() -> None:
    """The listener opens only after every merchant file is read: without a startup probe
    the liveness probe (about 40 s) restarts a big shard in a loop before it ever serves."""
    shown = subprocess.run(
        [str(_KUBECTL), "kustomize", str(_FLEET)], capture_output=True, text=True, check=True
    ).stdout
    (sts,) = (d for d in yaml.safe_load_all(shown) if d and d["kind"] == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": web.LIVENESS_PATH, "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        ("0/4", {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4", "HOSTNAME": "l-0"}, "0/4"),
        ("1/2", {}, "1/2"),
        (None, {"LOOPSYNC_SHARD": "2/4", "LOOPSYNC_SHARD_COUNT": "4"}, "2/4"),
        (None, {}, None),
        ("0/3", {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4", "HOSTNAME": "l-0"}, ""),
        ("1/4", {"LOOPSYNC_SHARD": "0/4"}, ""),
        ("0/3", {"LOOPSYNC_SHARD_COUNT": "4"}, ""),
        (None, {"LOOPSYNC_SHARD": "1/3", "LOOPSYNC_SHARD_COUNT": "4"}, ""),
        (None, {"LOOPSYNC_SHARD_COUNT": "4"}, ""),  # told the fleet's size, no shard: all
    ],
)
def test_every_shard_source_the_operator_set_must_name_the_same_shard(
    flag: str | None, env: dict[str, str], expected: str | None
) -> None:
    """Each pod keeps its state on its own volume: two pods that disagree on the shard
    arithmetic both run a merchant and no file lock sees the other (two RMAs)."""
    if expected == "":
        with pytest.raises(UsageError):
            resolve(flag, env)
    else:
        got = resolve(flag, env)
        assert (None if got is None else str(got)) == expected


def test_serve_whose_shard_flag_disagrees_with_the_pods_count_refuses_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPSYNC_SHARD_COUNT", "4")  # the StatefulSet's replicas
    monkeypatch.setattr("loopsync.scheduling.serve", _never)
    config = _config(tmp_path, tmp_path / "s")
    code = cli.main(["serve", "-c", str(config), "--shard", "0/3"], out=io.StringIO())
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LOOPSYNC_SHARD_COUNT=4" in err[0]


def _never(*_a: object, **_kw: object) -> int:
    raise AssertionError("serve started")


@pytest.mark.parametrize(
    "env",
    [
        {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4", "HOSTNAME": "loopsync-4"},
        {"LOOPSYNC_SHARD": "5/4"},
        {"LOOPSYNC_SHARD": "a/b"},
    ],
)
def test_a_bad_shard_from_the_environment_names_the_variable_not_a_flag_never_given(
    env: dict[str, str],
) -> None:
    """A pod left over after a scale-down (loopsync-4 of 4) is told about LOOPSYNC_SHARD,
    not sent looking for a `--shard` its manifest does not have."""
    with pytest.raises(UsageError) as refused:
        resolve(None, env)
    assert "LOOPSYNC_SHARD" in str(refused.value) and "--shard" not in str(refused.value)


def test_state_import_of_an_empty_file_says_it_is_empty_not_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 0-byte file is what a failed copy leaves; SQLite would open it as an empty
    database, and "a SQLite database but not a loopsync state" sends the operator astray."""
    empty = tmp_path / "acme.export"
    empty.touch()
    assert _import(_config(tmp_path, tmp_path / "b"), empty) == 65
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is empty (0 bytes)" in line and "SQLite database" not in line
    assert not (tmp_path / "b" / "s.sqlite").exists()


def test_a_secret_typed_into_a_state_path_is_never_echoed(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`state export|import` need no secret, but a key that is set is still a secret: a
    path pasted with it (`--to /backups/$LOOP_API_KEY.db`) is masked on every line."""
    key = "red-team-loop-key-7f3a9c"
    monkeypatch.setenv("LOOP_API_KEY", key)
    _state(tmp_path / "a" / "s.sqlite", clock, effects=1)
    config = _config(tmp_path, tmp_path / "a")
    out = io.StringIO()
    to = tmp_path / f"acme-{key}.export"
    assert cli.main(["state", "export", "-c", str(config), "--to", str(to)], out=out) == 0
    nowhere = tmp_path / key / "x.export"  # a folder that is not there: an error line
    assert cli.main(["state", "export", "-c", str(config), "--to", str(nowhere)], out=out) != 0
    target = _config(tmp_path, tmp_path / "b")
    assert cli.main(["state", "import", "-c", str(target), "--from", str(to)], out=out) == 0
    shown = out.getvalue() + "".join(capsys.readouterr())
    assert "exported to" in shown and "created from" in shown
    assert key not in shown


def test_the_image_healthcheck_of_a_sharded_serve_judges_only_its_own_merchants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a listener the HEALTHCHECK runs status --check over /config, which holds
    every shard's merchants: a state another shard owns (left on this volume by a
    reshard) made this container unhealthy, where /readyz looks at its own only."""
    folder = tmp_path / "config"
    folder.mkdir()
    ours, theirs = _two_owned_by(0, 1, 2)
    for name in (ours, theirs):
        _config(folder, tmp_path / name, merchant=name)
    (tmp_path / theirs).mkdir()
    (tmp_path / theirs / "s.sqlite").write_bytes(b"not a database" * 50)  # unreadable
    assert healthcheck.main(["-c", str(folder)], environ={}) == 1
    assert healthcheck.main(["-c", str(folder)], environ={"LOOPSYNC_SHARD": "0/2"}) == 0
    assert healthcheck.main(["-c", str(folder)], environ={"LOOPSYNC_SHARD": "1/2"}) == 1
    (folder / "broken.yaml").write_text("merchant: [\n", encoding="utf-8")
    assert healthcheck.main(["-c", str(folder)], environ={"LOOPSYNC_SHARD": "0/2"}) == 1
    capsys.readouterr()


def _two_owned_by(first: int, second: int, count: int) -> tuple[str, str]:
    names = [f"shop-{i}" for i in range(50)]
    return (
        next(n for n in names if owner(n, count) == first),
        next(n for n in names if owner(n, count) == second),
    )


def test_state_import_refuses_a_live_state_copied_by_hand_for_any_merchant(
    tmp_path: Path, clock: FakeClock
) -> None:
    """globex's state file copied by hand carries no merchant stamp: imported as acme's,
    acme's worker would push globex's open returns to acme's warehouse."""
    globex = _state(tmp_path / "globex.sqlite", clock, effects=2)
    with pytest.raises(StateCorrupt, match="names no merchant"):
        import_state("acme", tmp_path / "b" / "acme.sqlite", globex)
    assert not (tmp_path / "b" / "acme.sqlite").exists()


def test_state_import_refuses_a_link_to_a_live_state_with_its_wal_beside_the_target(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The -wal is beside the file a link names, not beside the link: read as immutable,
    the import would take the main file without the pages the WAL holds."""
    live = tmp_path / "live" / "acme.sqlite"
    live.parent.mkdir()
    export("acme", _state(tmp_path / "a.sqlite", clock), live, clock)
    worker = Store(live, clock)
    worker.runs.start("live", "serve")  # in the -wal until a checkpoint
    try:
        link = tmp_path / "acme.export"
        link.symlink_to(live)
        with pytest.raises(StateCorrupt, match="-wal"):
            import_state("acme", tmp_path / "b" / "acme.sqlite", link)
    finally:
        worker.close()
