"""`loopsync webhooks print` and `webhooks register` against the ShipHero sandbox: what is
shown (never a secret), and that the secret webhook_create shows once lands in the
merchant's secret file (0600) and nowhere else, on explicit request only."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
import yaml

from loopsync import cli

PUBLIC = "https://hooks.example.com/loopsync"


@pytest.fixture
def merchant(make_sandbox, tmp_path, monkeypatch):
    sb = make_sandbox("shiphero", rate_limits=False)
    data = sb.config_dict(merchant="acme", state_path=str(tmp_path / "acme.sqlite"))
    data["webhooks"] = {
        "loop_secret": "${LOOP_WEBHOOK_SECRET}",
        "shiphero_secret": "${file:secrets/shiphero_webhook}",
    }
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "secrets").mkdir()
    for name, value in {**sb.env(), "LOOP_WEBHOOK_SECRET": "loop-hook-secret-123456"}.items():
        monkeypatch.setenv(name, value)
    return sb, path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def creates(sb) -> int:
    return len([c for c in sb.recorder.calls("shiphero") if b"webhook_create" in c.body])


def test_print_shows_urls_topics_and_where_secrets_go_never_a_secret(merchant, capsys):
    sb, path = merchant
    code, out = run("webhooks", "print", "-c", str(path), "--public-url", PUBLIC + "/")
    assert code == 0
    assert f"{PUBLIC}/webhooks/loop/acme" in out and f"{PUBLIC}/webhooks/shiphero/acme" in out
    assert "return.created" in out and "Return Update" in out
    assert "${LOOP_WEBHOOK_SECRET}" in out and "secrets/shiphero_webhook" in out
    assert "loop-hook-secret-123456" not in out + capsys.readouterr().err
    assert creates(sb) == 0  # printing registers nothing


@pytest.mark.parametrize("url", ["ftp://x", "https://user:pw@host", "https://h/?q=1", "host"])
def test_print_refuses_a_public_url_it_cannot_hand_to_senders(tmp_path, url, capsys):
    code, out = run("webhooks", "print", "-c", str(tmp_path), "--public-url", url)
    assert code == 2 and out == "" and "--public-url" in capsys.readouterr().err


def test_register_without_yes_calls_nothing(merchant):
    sb, path = merchant
    assert run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC)[0] == 2
    assert creates(sb) == 0
    assert not (path.parent / "secrets/shiphero_webhook").exists()


def test_register_stores_the_secret_shown_once_in_a_private_file_only(merchant, capsys):
    sb, path = merchant
    code, out = run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")
    assert code == 0, capsys.readouterr().err
    ((_, stored),) = sb.warehouse.webhooks.items()
    assert stored["url"] == f"{PUBLIC}/webhooks/shiphero/acme"
    secret_file = path.parent / "secrets/shiphero_webhook"
    assert secret_file.read_text() == stored["secret"] + "\n"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stored["secret"] not in out + capsys.readouterr().err
    assert [p.name for p in secret_file.parent.iterdir()] == ["shiphero_webhook"]  # no temp left
    # the config now loads with the stored secret
    assert cli.main(["check-config", "-c", str(path)], out=io.StringIO()) == 0


def test_register_refuses_to_overwrite_an_existing_secret_file_before_calling(merchant):
    sb, path = merchant
    secret_file = path.parent / "secrets/shiphero_webhook"
    secret_file.write_text("an-earlier-secret-1234\n")
    assert run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")[0] == 2
    assert creates(sb) == 0 and secret_file.read_text() == "an-earlier-secret-1234\n"


def test_register_refused_by_shiphero_leaves_the_file_as_it_was(merchant):
    _, path = merchant
    argv = ("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")
    assert run(*argv)[0] == 0
    secret_file = path.parent / "secrets/shiphero_webhook"
    first = secret_file.read_text()
    assert run(*argv, "--replace")[0] == 1  # ShipHero: that webhook already exists
    assert secret_file.read_text() == first


def test_register_with_an_unwritable_secret_folder_fails_before_registering(merchant):
    sb, path = merchant
    folder = path.parent / "secrets"
    folder.rmdir()
    folder.write_text("not a folder")  # fails for root too, unlike a chmod
    code, _ = run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")
    assert code == 73 and creates(sb) == 0


def test_register_is_for_shiphero_merchants_only(make_sandbox, tmp_path, monkeypatch):
    sb = make_sandbox("generic", rate_limits=False)
    data = sb.config_dict(merchant="gen", state_path=str(tmp_path / "gen.sqlite"))
    data["webhooks"] = {"shiphero_secret": "${file:hook}"}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert run("webhooks", "register", "-c", str(path), "--public-url", PUBLIC, "--yes")[0] == 2
    assert not Path(tmp_path / "hook").exists()
