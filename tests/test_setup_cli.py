"""Set-up a person does not have to guess: discover, check-config --connect and
--no-secrets, secrets from NAME_FILE, `-c` with several paths, global options anywhere,
and every shipped example passing check-config."""

from pathlib import Path

import pytest

from loopsync.cli import EXIT_REFUSED, main
from loopsync.config import load_config
from loopsync.connectors import KINDS
from loopsync.connectors.base import Location, Locations
from loopsync.discovery import PLACEHOLDER, Discovery, LoopDestination, destinations_block
from loopsync.errors import ConfigError
from loopsync.timeutil import SystemClock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sandbox_config(make_sandbox, tmp_path, monkeypatch):
    def make(kind, **kw):
        sb = make_sandbox(kind, clock=SystemClock(), rate_limits=False, **kw)
        for key, value in sb.env().items():
            monkeypatch.setenv(key, value)
        return sb, sb.write_config(tmp_path / kind, merchant=f"m-{kind}")

    return make


# -- discover ---------------------------------------------------------------------------------

LOCATION_IDS = {
    "shiphero": ["V2FyZWhvdXNlOjExNzk=", "V2FyZWhvdXNlOjExODA="],
    "peoplevox": ["MAIN", "RETURNS-UK"],
    "xoro": ["MAIN", "RETURNS"],
    "generic": [],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_discover_lists_loop_destinations_the_warehouse_ids_and_a_block_to_paste(
    kind, sandbox_config, capsys
):
    _, path = sandbox_config(kind)
    assert main(["discover", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "East Returns Center" in out and "West Returns Center" in out
    for location in LOCATION_IDS[kind]:
        assert location in out
    if not LOCATION_IDS[kind]:
        assert "not offered by this API" in out
    block = out[out.index("  destinations:") :]
    assert '"12":' in block and '"13":' in block


def test_the_pasted_block_is_valid_yaml_the_config_accepts(sandbox_config, capsys, tmp_path):
    import yaml

    _, path = sandbox_config("shiphero")
    main(["discover", "-c", str(path)])
    out = capsys.readouterr().out
    block = yaml.safe_load(out[out.index("  destinations:") :])
    data = yaml.safe_load(path.read_text())
    data["warehouse"]["destinations"] = block["destinations"]
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).warehouse.destinations == block["destinations"]


def test_discover_with_a_refused_loop_key_says_so_in_one_line(sandbox_config, monkeypatch, capsys):
    _, path = sandbox_config("shiphero")
    monkeypatch.setenv("LOOP_API_KEY", "wrong-key-0123456789")
    assert main(["discover", "-c", str(path)]) == EXIT_REFUSED
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("loopsync:")]) == 1
    assert "Traceback" not in "\n".join(err)


def test_a_destination_without_an_address_is_explained_not_a_traceback(sandbox_config, capsys):
    sb, path = sandbox_config("shiphero")
    sb.loop.destinations[0].pop("address", None)
    assert main(["discover", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "destination has no address" in err and "Traceback" not in err


def test_check_config_connect_on_the_folder_transport_checks_the_folders(
    make_sandbox, tmp_path, monkeypatch, capsys
):
    sb = make_sandbox(
        "generic", clock=SystemClock(), transport="folder", folder_root=tmp_path / "share"
    )
    for key, value in sb.env().items():
        monkeypatch.setenv(key, value)
    path = sb.write_config(tmp_path / "cfg", merchant="m-folder")
    assert main(["check-config", "--connect", "-c", str(path)]) == 0
    assert "m-folder: generic: folders readable" in capsys.readouterr().out


def test_a_destination_a_person_must_choose_is_never_guessed():
    found = Discovery(
        "acme",
        "xoro",
        (
            LoopDestination("12", "East", "warehouse", True),
            LoopDestination("13", "Charity", "donate", True),
            LoopDestination("14", "Main", "warehouse", True),
            LoopDestination("15", "Old", "warehouse", True),
        ),
        Locations("Xoro store", (Location("A", "Main"), Location("B", "Other"))),
        {"15": "B"},
    )
    block = "\n".join(destinations_block(found))
    assert f'"12": {PLACEHOLDER}' in block and "choose one of: A (Main), B (Other)" in block
    assert '# "13": Charity (a donate destination' in block  # listed, not mapped
    assert '"14": "A"' in block  # same name
    assert '"15": "B"' in block  # what the file maps already


# -- check-config --connect -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_check_config_connect_says_each_api_accepted_the_credential(kind, sandbox_config, capsys):
    _, path = sandbox_config(kind)
    assert main(["check-config", "--connect", "-c", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(f"m-{kind}: loop: credentials accepted" in line for line in lines)
    assert any(f"m-{kind}: {kind}: " in line and "refused" not in line for line in lines)


def test_check_config_connect_names_the_api_that_refused(sandbox_config, monkeypatch, capsys):
    sb, path = sandbox_config("shiphero")
    (name,) = sb.warehouse.secret_env()
    monkeypatch.setenv(name, "not-the-refresh-token-42")
    assert main(["check-config", "--connect", "-c", str(path)]) == EXIT_REFUSED
    out = capsys.readouterr().out
    assert "m-shiphero: loop: credentials accepted" in out
    assert "m-shiphero: shiphero: refused" in out
    assert "not-the-refresh-token-42" not in out


# -- secrets: NAME_FILE and --no-secrets ----------------------------------------------------


def _config(tmp_path, api_key="${LOOP_API_KEY}"):
    path = tmp_path / "m.yaml"
    path.write_text(f"""merchant: m
loop: {{api_key: "{api_key}", start_at: 2026-01-01T00:00:00Z}}
warehouse: {{kind: shiphero, refresh_token: "${{SHIPHERO_REFRESH_TOKEN}}"}}
""")
    return path


def test_a_secret_is_read_from_the_file_named_by_name_file(tmp_path):
    secret = tmp_path / "loop_api_key"
    secret.write_text("loop-key-from-a-file-1\n")
    env = {"LOOP_API_KEY_FILE": str(secret), "SHIPHERO_REFRESH_TOKEN": "sh-token-123456"}
    assert load_config(_config(tmp_path), env=env).loop.api_key.value == "loop-key-from-a-file-1"


def test_the_variable_wins_over_its_file(tmp_path):
    env = {
        "LOOP_API_KEY": "loop-key-from-env-2",
        "LOOP_API_KEY_FILE": "/nonexistent",
        "SHIPHERO_REFRESH_TOKEN": "sh-token-123456",
    }
    assert load_config(_config(tmp_path), env=env).loop.api_key.value == "loop-key-from-env-2"


def test_an_unreadable_name_file_is_one_clear_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LOOP_API_KEY", raising=False)
    monkeypatch.setenv("LOOP_API_KEY_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("SHIPHERO_REFRESH_TOKEN", "sh-token-123456")
    assert main(["check-config", "-c", str(_config(tmp_path))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "loop.api_key" in line and "cannot read secret file" in line
    assert "LOOP_API_KEY_FILE" in line


def test_neither_the_variable_nor_its_file_names_both(tmp_path):
    with pytest.raises(ConfigError, match=r"LOOP_API_KEY is not set .*LOOP_API_KEY_FILE"):
        load_config(_config(tmp_path), env={"SHIPHERO_REFRESH_TOKEN": "sh-token-123456"})


def test_no_secrets_lints_a_file_whose_secrets_are_not_set(tmp_path, monkeypatch, capsys):
    for name in ("LOOP_API_KEY", "LOOP_API_KEY_FILE", "SHIPHERO_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    path = _config(tmp_path)
    assert main(["check-config", "-c", str(path)]) == 2
    capsys.readouterr()
    assert main(["check-config", "--no-secrets", "-c", str(path)]) == 0
    assert "secrets not checked" in capsys.readouterr().out


def test_no_secrets_still_refuses_a_secret_written_in_the_file(tmp_path, capsys):
    path = _config(tmp_path, api_key="plain-text-key-123")
    assert main(["check-config", "--no-secrets", "-c", str(path)]) == 2
    assert "loop.api_key" in capsys.readouterr().err


def test_every_shipped_example_passes_check_config_as_shipped(capsys):
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert (
        main(["check-config", "--no-secrets", "-c", *examples, str(ROOT / "config.example.yaml")])
        == 0
    ), capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(examples) + 1
    assert {k.example for k in KINDS.values()} <= {str(Path(p).relative_to(ROOT)) for p in examples}


# -- the command line -------------------------------------------------------------------------


def _two_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOP_API_KEY", "loop-key-123456")
    monkeypatch.setenv("SHIPHERO_REFRESH_TOKEN", "sh-token-123456")
    paths = []
    for name in ("a", "b", "c"):
        folder = tmp_path / ("dir" if name == "c" else "")
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(_config(tmp_path).read_text().replace("merchant: m", f"merchant: {name}"))
        paths.append(path)
    (tmp_path / "m.yaml").unlink()
    return paths


def test_c_takes_several_files_and_folders_after_one_flag(tmp_path, monkeypatch, capsys):
    a, b, _ = _two_configs(tmp_path, monkeypatch)
    assert main(["check-config", "-c", str(a), str(b), str(tmp_path / "dir")]) == 0
    assert capsys.readouterr().out.count(": ok (") == 3


def test_repeated_c_flags_still_work(tmp_path, monkeypatch, capsys):
    a, b, _ = _two_configs(tmp_path, monkeypatch)
    assert main(["check-config", "-c", str(a), "-c", str(b)]) == 0
    assert capsys.readouterr().out.count(": ok (") == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "error", "check-config", "-c", "{a}"],
        ["check-config", "--log-format", "json", "--log-level", "error", "-c", "{a}"],
        ["check-config", "-c", "{a}", "--log-level", "debug"],
        ["--log-level", "error", "check-config", "--log-level", "debug", "-c", "{a}"],
    ],
)
def test_global_options_are_accepted_before_and_after_the_subcommand(
    argv, tmp_path, monkeypatch, capsys
):
    a, _, _ = _two_configs(tmp_path, monkeypatch)
    assert main([x.format(a=a) for x in argv]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_a_bad_log_level_after_the_subcommand_is_a_usage_error(tmp_path, monkeypatch, capsys):
    a, _, _ = _two_configs(tmp_path, monkeypatch)
    assert main(["check-config", "-c", str(a), "--log-level", "loud"]) == 2


def test_an_option_after_the_subcommand_overrides_the_one_before_it():
    from loopsync.cli import build_parser

    args = build_parser().parse_args(
        ["--log-level", "error", "run", "-c", "x.yaml", "--log-level", "debug"]
    )
    assert (args.log_level, args.log_format, args.config) == ("debug", "auto", ["x.yaml"])
    args = build_parser().parse_args(["--log-format", "json", "status", "-c", "x.yaml"])
    assert (args.log_level, args.log_format) == ("info", "json")
