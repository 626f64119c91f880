"""Red team, operator and local faults: every `-c` argument and every file a folder holds
is reported on its own (never silently skipped, never a traceback that stops the good
merchants), and `status` does not call a state file `run` happily starts a fault."""

import os
from pathlib import Path

import pytest

from loopsync.cli import main
from loopsync.timeutil import SystemClock


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(clock=SystemClock(), rate_limits=False)


@pytest.fixture
def env(sb, monkeypatch):
    for k, v in sb.env().items():
        monkeypatch.setenv(k, v)
    return sb.env()


def write(sb, folder, merchant):
    return sb.write_config(
        folder, merchant=merchant, state_path=str(folder.parent / f"{merchant}.sqlite")
    )


def no_traceback(text):
    return "Traceback" not in text and 'File "' not in text


def config_errors(err):
    return [line for line in err.splitlines() if line.startswith("config error:")]


@pytest.mark.parametrize("command", [["run", "--once"], ["run", "--once", "--dry-run"], ["status"]])
def test_an_empty_folder_among_good_configs_is_reported_and_exits_2(
    sb, env, tmp_path, capsys, command
):
    """Was: `run -c empty/ -c good.yaml` ran the good merchant, said nothing of the empty
    folder and exited 0 (check-config reported it)."""
    sb.seed(1, states_weights=[("open", 1)])
    write(sb, tmp_path / "conf", "good")
    (tmp_path / "empty").mkdir()
    code = main([*command, "-c", str(tmp_path / "empty"), "-c", str(tmp_path / "conf")])
    out, err = capsys.readouterr()
    assert code == 2
    assert any("empty: no configuration files found" in line for line in config_errors(err))
    assert "good" in out and no_traceback(err)


@pytest.mark.parametrize("command", [["run", "--once"], ["status"], ["check-config"]])
def test_a_config_path_the_system_refuses_is_a_config_error_not_an_internal_one(
    sb, env, tmp_path, capsys, command
):
    """Was: a `-c` whose name is too long (any OSError listing it) gave `internal error`,
    exit 70, and stopped the good merchants named after it."""
    sb.seed(1, states_weights=[("open", 1)])
    write(sb, tmp_path / "conf", "good")
    code = main([*command, "-c", "x" * 5000, "-c", str(tmp_path / "conf")])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(config_errors(err)) == 1 and "internal error" not in err
    assert "good" in out and no_traceback(err)


def test_a_config_folder_reports_dangling_links_and_folders_named_yaml(sb, env, tmp_path, capsys):
    """Was: a `*.yaml` link that leads nowhere (its target moved), a link loop or a folder
    named `x.yaml` in `-c DIR` was skipped without a word: that merchant never ran and
    every command exited 0. An editor's hidden lock link stays ignored."""
    conf = tmp_path / "conf"
    write(sb, conf, "good")
    os.symlink(tmp_path / "moved-away.yaml", conf / "gone.yaml")
    os.symlink(conf / "loop-b.yaml", conf / "loop-a.yaml")
    os.symlink(conf / "loop-a.yaml", conf / "loop-b.yaml")
    (conf / "folder.yaml").mkdir()
    os.symlink("user@host.1234:0", conf / ".#good.yaml")  # emacs' lock: not a config
    assert main(["check-config", "-c", str(conf)]) == 2
    out, err = capsys.readouterr()
    named = {Path(line.split(":")[1].strip()).name for line in config_errors(err)}
    assert named == {"gone.yaml", "loop-a.yaml", "loop-b.yaml", "folder.yaml"}, err
    assert "merchant good" in out and no_traceback(err)

    sb.seed(1, states_weights=[("open", 1)])
    assert main(["run", "--once", "-c", str(conf)]) == 2
    out, err = capsys.readouterr()
    assert "good: pulled=1" in out and len(config_errors(err)) == 4 and no_traceback(err)


def test_status_of_a_zero_byte_state_file_is_no_state_yet_not_an_io_error(
    sb, tmp_path, capsys, monkeypatch
):
    """Was: `status` on a zero-byte state file (which `run` initialises without fault)
    said `cannot be read or written (no such table: meta)` and exited 74 (EX_IOERR)."""
    for k in sb.env():
        monkeypatch.delenv(k, raising=False)  # status needs no secret
    conf = tmp_path / "conf"
    write(sb, conf, "fresh")
    state = tmp_path / "fresh.sqlite"
    state.write_bytes(b"")
    assert main(["status", "-c", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert "no state yet" in out and err == ""
    assert state.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "conf",
        "fresh.sqlite",
    ]


@pytest.mark.parametrize("command, code", [(["serve"], 0), (["run", "--once"], 143)])
def test_the_console_script_honours_a_sigterm_that_arrives_while_the_cli_imports(
    sb, env, tmp_path, command, code
):
    """Was: the `loopsync` console script (cron's and the README's way) imported the whole
    CLI before main() installed the handlers, so a SIGTERM in its first quarter second
    (longer on a busy machine) killed `serve` with signal 15. Only `python -m loopsync`
    installed them first. The script here is the console script, with the signal sent
    at the moment the CLI's imports begin."""
    import subprocess
    import sys

    write(sb, tmp_path / "conf", "early")
    script = tmp_path / "bin" / "loopsync"
    script.parent.mkdir()
    script.write_text(
        "import os, signal, sys\n"
        "import loopsync\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "from loopsync.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), *command, "-c", str(tmp_path / "conf")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == code, done.stderr
    assert no_traceback(done.stderr)


def test_import_with_a_config_path_the_system_refuses_is_a_config_error(tmp_path, capsys):
    """Was: `import -c <name too long>` gave `internal error`, exit 70."""
    assert main(["import", "-c", "x" * 5000, "--return-id", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and "internal error" not in err
    assert no_traceback(err)


def test_a_lock_file_that_is_a_link_is_a_state_fault_not_a_lock_held(sb, env, tmp_path, capsys):
    """Was: a link at `<state>.lock` gave exit 75 ("another process holds the lock"),
    which cron treats as a skip: the merchant silently never ran again. It is a local
    fault, exit 73, naming the file; the other merchants still run."""
    sb.seed(1, states_weights=[("open", 1)])
    conf = tmp_path / "conf"
    write(sb, conf, "linked")
    write(sb, conf, "other")
    (tmp_path / "linked.sqlite.lock").symlink_to(tmp_path / "elsewhere")
    assert main(["run", "--once", "-c", str(conf / "linked.yaml")]) == 73
    err = capsys.readouterr().err
    assert "linked.sqlite.lock: is a symbolic link" in err and no_traceback(err)
    assert main(["run", "--once", "-c", str(conf)]) == 1
    out, err = capsys.readouterr()
    assert "other: pulled=1" in out and "failed: linked" in err and no_traceback(err)
    assert not (tmp_path / "elsewhere").exists()


def test_two_names_of_one_state_file_never_run_two_workers(sb, env, tmp_path, capsys):
    """Was: a hard link (`ln state.sqlite copy.sqlite`, a second name no real path
    resolves to the first) let two workers write one database at once, each with a -wal
    of its own. The state file itself is locked too; in one process by identity, since
    closing a descriptor of a file SQLite has open would drop SQLite's own locks."""
    import subprocess
    import sys

    from loopsync.errors import LockHeld
    from loopsync.state import MerchantLock, Store
    from loopsync.testing import FakeClock

    state = tmp_path / "state.sqlite"
    Store(state, FakeClock()).close()
    os.link(state, tmp_path / "second-name.sqlite")
    with MerchantLock(state):
        with pytest.raises(LockHeld, match="under another name"):
            MerchantLock(tmp_path / "second-name.sqlite").acquire()
        held = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom loopsync.state import MerchantLock\n"
                "MerchantLock(sys.argv[1]).acquire()",
                str(tmp_path / "second-name.sqlite"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "LockHeld" in held.stderr and "under another name" in held.stderr
    MerchantLock(tmp_path / "second-name.sqlite").acquire().release()  # free again

    sb.seed(1, states_weights=[("open", 1)])
    conf = tmp_path / "conf"
    sb.write_config(conf, merchant="m", state_path=str(tmp_path / "second-name.sqlite"))
    with MerchantLock(state):
        assert main(["run", "--once", "-c", str(conf)]) == 75
    assert "under another name" in capsys.readouterr().out
    assert main(["run", "--once", "-c", str(conf)]) == 0


def test_a_pipe_named_yaml_in_a_config_folder_does_not_hang_the_command(sb, env, tmp_path, capsys):
    """Reporting every entry of a folder must not open a pipe: that waits forever."""
    conf = tmp_path / "conf"
    write(sb, conf, "good")
    os.mkfifo(conf / "pipe.yaml")
    assert main(["check-config", "-c", str(conf)]) == 0
    assert "merchant good" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["check-config"], ["run", "--once"], ["status"]])
def test_two_merchants_on_one_state_file_is_a_config_error_of_the_later(
    sb, env, tmp_path, capsys, command
):
    """Was: a merchant file copied with its state_path left as it was passed check-config
    and ran: two merchants in one database share cursors, so the second skips its own
    older returns for good. The later file is refused, naming the key; the first runs."""
    sb.seed(1, states_weights=[("open", 1)])
    conf = tmp_path / "conf"
    shared = str(tmp_path / "shared.sqlite")
    sb.write_config(conf, merchant="a-first", state_path=shared)
    sb.write_config(conf, merchant="b-copy", state_path=shared)
    assert main([*command, "-c", str(conf)]) == 2
    out, err = capsys.readouterr()
    assert config_errors(err) == [
        line
        for line in config_errors(err)
        if "b-copy.yaml: state_path:" in line and "a-first" in line
    ]
    assert len(config_errors(err)) == 1 and "a-first" in out and no_traceback(err)
