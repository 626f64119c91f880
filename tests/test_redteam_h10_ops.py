"""Red team on issue 10's operator surface: `status --return` over a state file that cannot
be read, and the other operator paths attacked in the same pass."""

from __future__ import annotations

import hashlib
import os

import pytest

from loopsync.cli import main
from loopsync.config import load_config
from loopsync.timeutil import SystemClock

EX_DATAERR = 65


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(clock=SystemClock(), rate_limits=False)


def fingerprint(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def test_status_return_on_a_truncated_state_names_the_fault_not_an_absent_return(
    sb, tmp_path, capsys, monkeypatch
):
    """Was: the state error, then `no return or RMA 'x' in the state of sandbox` and exit 1:
    the return may well be in the file loopsync could not read."""
    (rid,) = [str(r["id"]) for r in sb.seed(1, states_weights=[("open", 1)])]
    path = sb.write_config(tmp_path, every="1m")
    cfg = load_config(path, env=sb.env())
    assert sb.run_cycle(cfg).ok
    data = cfg.state_path.read_bytes()
    cfg.state_path.write_bytes(data[: len(data) // 2])
    before = fingerprint(cfg.state_path)
    monkeypatch.delenv("LOOP_API_KEY", raising=False)
    code = main(["status", "--return", rid, "-c", str(path)])
    err = capsys.readouterr().err
    assert code == EX_DATAERR, err
    assert "truncated" in err and "no return or RMA" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert fingerprint(cfg.state_path) == before


@pytest.mark.parametrize("stalled_after", ["30s", "15m"])
def test_stalled_after_not_longer_than_every_is_a_config_error(sb, tmp_path, stalled_after):
    """Was: `schedule: {every: 15m, stalled_after: 30s}` was accepted, and a merchant whose
    every cycle succeeds was STALLED (`status --check` exit 3, `/readyz` 503) for most of
    each interval: a page every quarter of an hour for nothing."""
    from loopsync.errors import ConfigError

    path = sb.write_config(tmp_path, every="15m")
    text = path.read_text().replace("every: 15m", f"every: 15m\n  stalled_after: {stalled_after}")
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"schedule\.stalled_after.*longer than.*every"):
        load_config(path, env=sb.env())


@pytest.mark.parametrize("row", [1, "12", None, ["id", 12], True])
def test_a_destination_that_is_not_an_object_is_unreadable_naming_the_field(row):
    """Was: `{"destinations": [1]}` from Loop raised AttributeError out of `discover`
    (`internal error`, exit 70) instead of the one "answer not understood" error."""
    from loopsync.discovery import read_destinations
    from loopsync.errors import Unreadable

    with pytest.raises(Unreadable, match=r"destinations\[\]"):
        read_destinations([{"id": 12, "name": "East"}, row])


def test_names_and_ids_with_line_breaks_cannot_add_keys_to_the_pasted_block():
    """Was: a Loop destination named `East\\n    "99": "EVIL"` (or a warehouse id or name
    holding a line break) printed a block that, pasted, mapped destination 99 to EVIL:
    names in comments and ids in quotes were written with their line breaks and escapes."""
    import yaml

    from loopsync.connectors.base import Location, Locations
    from loopsync.discovery import Discovery, LoopDestination, destinations_block, render

    evil = '\n    "99": "EVIL"\n'
    found = Discovery(
        "acme",
        "xoro",
        (
            LoopDestination("12", f"East{evil}", "warehouse", True),
            LoopDestination(f"13{evil}", "West", "warehouse", True),
            LoopDestination("14", f"Gift{evil}", "donate", True),
            LoopDestination("15", "North\x1b]0;pwned\x07", "warehouse", True),
        ),
        Locations(
            "Xoro store", (Location(f"A{evil}", f"East{evil}"), Location("B", f"West{evil}"))
        ),
        {},
    )
    block = yaml.safe_load("\n".join(destinations_block(found)))["destinations"]
    assert "99" not in block and set(block) <= {"12", f"13{evil}", "15"}
    assert block["12"] == "REPLACE-ME" or block["12"] == f"A{evil}"
    shown = render(found)
    assert "\x1b" not in shown and "\x07" not in shown
    assert not any(line.lstrip().startswith('"99"') for line in shown.splitlines())


def test_an_rma_is_found_by_its_numbers_never_by_an_order_a_flag_or_a_date(tmp_path):
    """Was: `status --return True` told the story of a generic-3PL return (its link keeps
    `found: true`), `status --return <ShipHero order id>` that of whichever return of the
    order came first, and a timestamp matched Xoro's `search_from`: any value the
    connector keeps beside the RMA counted as its number."""
    from loopsync.state import Store
    from loopsync.testing import FakeClock

    store = Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))
    store.rmas.link("g1", "g1", {"created_at": "2026-05-01T00:00:00Z", "found": True})
    store.rmas.link("s1", "UmV0dXJuOjE=", {"legacy_id": 7001, "order_id": 99})
    store.rmas.link("s2", "UmV0dXJuOjI=", {"legacy_id": 7002, "order_id": 99})
    store.rmas.link("x1", "x1", {"asn_number": "ASN-5", "search_from": "2026-04-01T00:00:00Z"})
    for query in ("True", "true", "99", "2026-05-01T00:00:00Z", "2026-04-01T00:00:00Z"):
        assert store.rmas.find(query) is None, query
    assert store.rmas.find("7002") == "s2"
    assert store.rmas.find("ASN-5") == "x1"
    assert store.rmas.find("UmV0dXJuOjE=") == "s1"
    store.close()


def test_status_return_not_found_beside_a_bad_config_exits_2(sb, tmp_path, capsys, monkeypatch):
    """Was: exit 1 ("no such return"): the return may belong to the merchant whose file
    could not be read, and every other command exits 2 when a configuration is bad."""
    sb.seed(1, states_weights=[("open", 1)])
    good = sb.write_config(tmp_path / "conf", every="1m")
    assert sb.run_cycle(load_config(good, env=sb.env())).ok
    bad = tmp_path / "bad.yaml"
    bad.write_text("merchant: other\nschedule: {every: 90}\n")
    monkeypatch.delenv("LOOP_API_KEY", raising=False)
    code = main(["status", "--return", "nope", "-c", str(good), str(bad)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "config error:" in err and "no return or RMA 'nope'" in err


ROW_DAMAGE = {
    "run counts not JSON": "update runs set counts = 'not json{'",
    "a return in a stage this version does not know": "update returns set stage = 'weird'",
    "an effect of a kind and status unknown here": "update effects set kind = 'w', status = 'o'",
    "an RMA's extra not JSON": "update rmas set extra = 'not json{'",
}


@pytest.mark.parametrize("args", [[], ["--json"], ["--check"], ["--return", "RID"]])
def test_status_of_a_state_with_rows_it_cannot_read_is_blocked_not_an_internal_error(
    sb, tmp_path, capsys, monkeypatch, args
):
    """Was: a row damaged by hand or written by a newer loopsync (a stage or effect kind
    this version does not know, counts that are not JSON) made `status` an `internal
    error`, exit 70, for every form of the command; now the merchant is BLOCKED (state
    unreadable), one line, exit 65 (3 with --check), and the file is left as it was."""
    (rid,) = [str(r["id"]) for r in sb.seed(1, states_weights=[("open", 1)])]
    path = sb.write_config(tmp_path, every="1m")
    cfg = load_config(path, env=sb.env())
    assert sb.run_cycle(cfg).ok
    sb.warehouse.receive(rid, "full")
    assert sb.run_cycle(cfg).ok
    import sqlite3

    conn = sqlite3.connect(cfg.state_path)
    for sql in ROW_DAMAGE.values():
        conn.execute(sql)
    conn.commit()
    conn.close()
    before = fingerprint(cfg.state_path)
    monkeypatch.delenv("LOOP_API_KEY", raising=False)
    code = main(["status", *[a.replace("RID", rid) for a in args], "-c", str(path)])
    out, err = capsys.readouterr()
    assert code == (3 if args == ["--check"] else EX_DATAERR), err
    assert "internal error" not in err and "Traceback" not in err
    assert "cannot read" in err
    if not args or args == ["--check"]:
        assert "BLOCKED" in out
    assert fingerprint(cfg.state_path) == before


def test_discover_with_a_bad_file_beside_a_refused_key_exits_2_like_check_config(
    sb, tmp_path, capsys, monkeypatch
):
    """Was: 77 (the larger code won): every other command, `check-config --connect`
    included, says 2 first when a configuration file was bad (README, exit status)."""
    for key, value in sb.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOOP_API_KEY", "wrong-key-0123456789")
    good = sb.write_config(tmp_path / "conf", every="1m")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merchant: other\nschedule: {every: 90}\n")
    code = main(["discover", "-c", str(good), str(bad)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "config error:" in err and "loop HTTP 401" in err


def test_status_return_of_a_huge_id_answers_one_short_line(sb, tmp_path, capsys, monkeypatch):
    """Was: a 10,000-character id (a pasted file, a script's bug) was echoed whole in the
    "no return" line; `import --return-id` already cut it to 40 characters."""
    sb.seed(1, states_weights=[("open", 1)])
    path = sb.write_config(tmp_path, every="1m")
    assert sb.run_cycle(load_config(path, env=sb.env())).ok
    monkeypatch.delenv("LOOP_API_KEY", raising=False)
    for query in ("%", "_", "'\"", "x" * 10_000):
        assert main(["status", "--return", query, "-c", str(path)]) == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and len(err) < 300, err[:100]
