"""The state folder check (loopsync.state.folder): a worker whose state volume is missing,
read-only or not mounted refuses with one line and exit 73, creates nothing, and one
merchant's bad folder never stops the others."""

from pathlib import Path

import pytest

from loopsync.cli import load_each, main, state_folders_usable
from loopsync.errors import StateUnwritable
from loopsync.state.folder import (
    MOUNT_ENV,
    FolderFacts,
    check_state_folder,
    mount_required,
    observe,
    problem,
)
from tests.test_ops_faults import env, sb  # noqa: F401 - the sandbox and its secrets in the env


def facts(**kw):
    base = {
        "state_path": Path("/state/acme.sqlite"),
        "root": Path("/state"),
        "named_by": "LOOPSYNC_STATE_DIR",
        "nearest": Path("/state"),
        "nearest_is_dir": True,
        "nearest_writable": True,
        "file_exists": False,
        "file_writable": False,
        "on_root_filesystem": False,
        "mount_required": True,
        "uid": 10001,
    }
    return FolderFacts(**(base | kw))


# -- the decision, pure --------------------------------------------------------------------


def test_a_writable_mounted_folder_is_accepted():
    assert problem(facts()) is None


def test_a_missing_named_folder_is_refused_naming_who_named_it():
    why = problem(facts(nearest=None))
    assert why is not None and "/state (LOOPSYNC_STATE_DIR) does not exist" in why
    assert "mount" in why


def test_a_folder_not_writable_by_the_user_is_refused_naming_the_uid():
    why = problem(facts(nearest_writable=False))
    assert why is not None and "not writable by uid 10001" in why


def test_a_file_where_the_folder_should_be_is_refused():
    why = problem(facts(nearest_is_dir=False, nearest_writable=False))
    assert why is not None and "is not a folder" in why


def test_a_read_only_state_file_is_refused():
    why = problem(facts(file_exists=True, file_writable=False))
    assert why is not None and "not writable by uid 10001" in why


def test_required_mount_refuses_the_root_filesystem_and_allows_it_when_off():
    why = problem(facts(on_root_filesystem=True))
    assert why is not None and "not on a mounted volume" in why and MOUNT_ENV in why
    assert problem(facts(on_root_filesystem=True, mount_required=False)) is None


@pytest.mark.parametrize(("value", "required"), [
    ("", False), ("0", False), ("false", False), ("No", False), (" 1 ", True),
    ("yes", True), ("true", True), ("mounted", True),
])  # fmt: skip
def test_mount_requirement_reads_off_values_and_takes_anything_else_as_required(value, required):
    assert mount_required({MOUNT_ENV: value}) is required
    assert mount_required({}) is False


# -- the facts, from the file system --------------------------------------------------------


def test_missing_state_dir_is_refused_with_73_and_not_created(tmp_path):
    state_dir = tmp_path / "state"
    env = {"LOOPSYNC_STATE_DIR": str(state_dir)}
    with pytest.raises(StateUnwritable) as caught:
        check_state_folder(state_dir / "acme.sqlite", str(tmp_path / "acme.yaml"), env)
    assert caught.value.exit_code == 73
    assert f"its folder {state_dir} (LOOPSYNC_STATE_DIR) does not exist" in str(caught.value)
    assert not state_dir.exists()


def test_missing_folder_of_an_absolute_state_path_is_refused(tmp_path):
    target = tmp_path / "volume" / "acme.sqlite"
    with pytest.raises(StateUnwritable, match=r"\(state_path\) does not exist"):
        check_state_folder(target, str(tmp_path / "conf" / "acme.yaml"), {})


def test_folders_below_the_state_dir_and_beside_the_config_may_still_be_created(tmp_path):
    env = {"LOOPSYNC_STATE_DIR": str(tmp_path)}
    check_state_folder(tmp_path / "sub" / "acme.sqlite", "/config/acme.yaml", env)
    conf = tmp_path / "conf"
    conf.mkdir()
    check_state_folder(conf / "state" / "acme.sqlite", str(conf / "acme.yaml"), {})
    assert not (tmp_path / "sub").exists() and not (conf / "state").exists()


def test_a_dangling_link_as_the_state_folder_is_refused_not_followed(tmp_path):
    (tmp_path / "state").symlink_to(tmp_path / "nowhere")
    env = {"LOOPSYNC_STATE_DIR": str(tmp_path / "state")}
    with pytest.raises(StateUnwritable, match="is not a folder"):
        check_state_folder(tmp_path / "state" / "acme.sqlite", "", env)
    assert not (tmp_path / "nowhere").exists()


def test_a_folder_on_the_root_filesystem_is_refused_when_a_mount_is_required(tmp_path):
    if Path(tmp_path).stat().st_dev != Path("/").stat().st_dev:
        pytest.skip("the test's tmp folder is itself on another filesystem than /")
    env = {"LOOPSYNC_STATE_DIR": str(tmp_path), MOUNT_ENV: "1"}
    assert observe(tmp_path / "acme.sqlite", "", env).on_root_filesystem
    with pytest.raises(StateUnwritable, match="not on a mounted volume"):
        check_state_folder(tmp_path / "acme.sqlite", "", env)


# -- the commands -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_mount_requirement(monkeypatch):
    monkeypatch.delenv(MOUNT_ENV, raising=False)


def one_line_each(err, *names):
    lines = [line for line in err.splitlines() if line.startswith("loopsync:")]
    assert "Traceback" not in err
    assert [n for n in names if sum(n in line for line in lines) != 1] == [], err
    return lines


def test_run_with_a_missing_state_dir_exits_73_in_one_line_and_creates_nothing(
    sb, env, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LOOPSYNC_STATE_DIR", str(tmp_path / "state"))
    cfg = sb.write_config(tmp_path / "conf", merchant="acme", state_path=None)
    cfg.write_text(cfg.read_text().replace("state_path: ./state/acme.sqlite\n", ""))
    assert main(["run", "--once", "-c", str(cfg)]) == 73
    (line,) = one_line_each(capsys.readouterr().err, "acme")
    assert "(LOOPSYNC_STATE_DIR) does not exist" in line
    assert not (tmp_path / "state").exists()


def test_run_goes_on_for_the_merchant_whose_folder_is_good(sb, env, tmp_path, capsys):
    conf = tmp_path / "conf"
    sb.write_config(conf, merchant="bad", state_path=str(tmp_path / "gone" / "bad.sqlite"))
    sb.write_config(conf, merchant="good", state_path=str(tmp_path / "good.sqlite"))
    assert main(["run", "--once", "-c", str(conf)]) == 1
    one_line_each(capsys.readouterr().err, "bad: state file")
    assert (tmp_path / "good.sqlite").exists() and not (tmp_path / "gone").exists()


def test_serve_refuses_to_start_when_no_merchant_has_a_usable_state_folder(
    sb, env, tmp_path, capsys
):
    conf = tmp_path / "conf"
    (tmp_path / "blocker").write_text("a file where a state folder should be")
    sb.write_config(conf, merchant="a", state_path=str(tmp_path / "gone" / "a.sqlite"))
    sb.write_config(conf, merchant="b", state_path=str(tmp_path / "blocker" / "b.sqlite"))
    assert main(["serve", "-c", str(conf)]) == 73
    one_line_each(capsys.readouterr().err, "a: state file", "b: state file")
    assert not (tmp_path / "gone").exists()


def test_serve_starts_with_the_merchants_whose_folder_is_good_and_names_the_others(
    sb, env, tmp_path, capsys
):
    conf = tmp_path / "conf"
    sb.write_config(conf, merchant="bad", state_path=str(tmp_path / "gone" / "bad.sqlite"))
    sb.write_config(conf, merchant="good", state_path=str(tmp_path / "good.sqlite"))
    configs, _ = load_each([str(conf)])
    assert state_folders_usable(configs)  # serve goes on; `bad` is checked again each cycle
    one_line_each(capsys.readouterr().err, "bad: state file")
    assert not (tmp_path / "gone").exists()
