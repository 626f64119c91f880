import os
import textwrap
from pathlib import Path

import pytest

from loopsync.cli import main
from loopsync.config import load_config
from loopsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "LOOP_API_KEY": "loop-secret-1",
    "SHIPHERO_REFRESH_TOKEN": "sh-refresh-1",
    "SHIPHERO_ACCESS_TOKEN": "sh-access-1",
}

BASE = """\
merchant: acme-us
schedule: {every: 15m}
loop:
  base_url: https://api.loopreturns.com/api/v1
  api_key: ${LOOP_API_KEY}
  start_at: 2026-01-01T00:00:00Z
  lookback: 15m
warehouse:
  kind: shiphero
  refresh_token: ${SHIPHERO_REFRESH_TOKEN}
  destinations: {"12": "WH1"}
"""


def write(tmp_path, text, name="m.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_the_example_config_is_valid():
    cfg = load_config(ROOT / "config.example.yaml", env=ENV)
    assert cfg.merchant == "acme-us" and cfg.warehouse.kind == "shiphero"
    assert cfg.loop.api_key.value == "loop-secret-1"
    assert "warehouse complete" in cfg.warehouse.statuses.process
    assert cfg.warehouse.grading.conditions["damaged"] == "grade_c"


def test_minimal_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE), env=ENV)
    assert cfg.state_path == tmp_path / "state" / "acme-us.sqlite"  # beside the file
    assert cfg.loop.states == ("open", "closed", "cancelled", "review", "expired")
    assert cfg.warehouse.statuses.flag == {"issue", "damaged"}
    assert "sh-refresh-1" not in repr(cfg)  # secrets never show in reprs


@pytest.mark.parametrize(
    "label, change, key, problem",
    [
        (
            "missing env var",
            ("${LOOP_API_KEY}", "${NOPE_KEY}"),
            "loop.api_key",
            "NOPE_KEY is not set",
        ),
        ("literal secret", ("${LOOP_API_KEY}", "abc123"), "loop.api_key", "environment variable"),
        (
            "unknown key",
            ("lookback: 15m", "lookback: 15m\n  lookbak: 1h"),
            "loop.lookbak",
            "unknown key",
        ),
        ("wrong type", ("every: 15m", "every: [1]"), "schedule.every", "not a duration"),
        ("bad duration", ("lookback: 15m", "lookback: fifteen"), "loop.lookback", "not a duration"),
        (
            "naive timestamp",
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00"),
            "loop.start_at",
            "no timezone",
        ),
        ("bad merchant", ("merchant: acme-us", "merchant: Acme US"), "merchant", "does not match"),
        ("bad kind", ("kind: shiphero", "kind: shipbob"), "warehouse.kind", "not a warehouse kind"),
        (
            "window over 120 days",
            ("lookback: 15m", "lookback: 15m\n  window: 121d"),
            "loop.window",
            "at most",
        ),
        (
            "status in two lists",
            ("destinations:", "statuses: {process: [complete], flag: [Complete]}\n  destinations:"),
            "warehouse.statuses.flag",
            "also listed",
        ),
    ],
)
def test_config_errors_name_file_key_and_problem(tmp_path, label, change, key, problem):
    path = write(tmp_path, BASE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_config(path, env=ENV)
    assert err.value.key == key, label
    assert problem in err.value.problem, label
    assert str(path) in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match="line 2"):
        load_config(write(tmp_path, "merchant: a\n  bad: [\n"), env=ENV)


def test_check_config_exits_2_naming_the_key(tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    bad = write(tmp_path, BASE.replace("every: 15m", "every: soon"))
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "schedule.every" in err
    good = write(tmp_path, BASE, "good.yaml")
    assert main(["check-config", "-c", str(good)]) == 0


def test_usage_error_exits_2(capsys):
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2


def test_a_directory_stands_for_its_yaml_files(tmp_path):
    from loopsync.config import load_all

    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, BASE.replace("merchant: acme-us", "merchant: acme-eu"), "b.yml")
    (tmp_path / "notes.txt").write_text("not a config")
    assert [c.merchant for c in load_all([str(tmp_path)], env=ENV)] == ["acme-us", "acme-eu"]
    write(tmp_path, BASE, "c.yaml")  # a second file for acme-us
    with pytest.raises(ConfigError, match="also used by"):
        load_all([str(tmp_path)], env=ENV)
