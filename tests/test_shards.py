"""Rendezvous sharding (loopsync.shards) and the commands over it: `serve --shard`,
`shards plan`."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import cli, shards
from loopsync.errors import UsageError
from loopsync.shards import Shard, owner, parse_shard, plan, shard_from_env
from loopsync.testing.sandbox import Sandbox

names = st.text(min_size=1, max_size=40)
merchant_sets = st.sets(names, min_size=1, max_size=60)


@settings(max_examples=50)
@given(names, st.integers(1, 32))
def test_every_merchant_has_exactly_one_owner_among_the_shards(merchant: str, count: int) -> None:
    owners = [i for i in range(count) if Shard(i, count).owns(merchant)]
    assert owners == [owner(merchant, count)]


@given(merchant_sets, st.integers(1, 32))
def test_going_from_n_to_n_plus_one_moves_merchants_only_to_the_new_shard(
    merchants: set[str], n: int
) -> None:
    for move in plan(merchants, n, n + 1):
        assert move.target == n  # never between two old shards
        assert move.source == owner(move.merchant, n)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32))
def test_going_from_n_to_n_plus_one_moves_about_one_in_n_plus_one(n: int, salt: int) -> None:
    merchants = [f"merchant-{salt}-{i}" for i in range(1200)]
    moved = len(plan(merchants, n, n + 1))
    expected = len(merchants) / (n + 1)
    # Binomial(1200, 1/(n+1)): 6 standard deviations either side never fails by chance.
    spread = 6 * (len(merchants) * (1 / (n + 1)) * (n / (n + 1))) ** 0.5
    assert abs(moved - expected) <= spread


@pytest.mark.slow  # two Python processes
def test_the_owner_is_the_same_in_every_process_not_pythons_salted_hash() -> None:
    code = "from loopsync.shards import owner; print([owner(f'm{i}', 7) for i in range(50)])"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {str([owner(f"m{i}", 7) for i in range(50)]) + "\n"}


@pytest.mark.parametrize(
    "text", ["", "1", "a/b", "2/2", "5/3", "0/0", "-1/3", "1/3/4", "１/3", "0/1025", " /3"]
)
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(text)


@given(st.text(max_size=12))
def test_parse_shard_returns_a_valid_shard_or_a_usage_error(text: str) -> None:
    try:
        shard = parse_shard(text)
    except UsageError:
        return
    assert 0 <= shard.index < shard.count <= shards.MAX_SHARDS


def test_a_statefulset_pod_takes_its_index_from_the_label_or_else_its_name() -> None:
    env = {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4"}
    assert shard_from_env(env | {"LOOPSYNC_SHARD_INDEX": "2"}) == Shard(2, 4)
    assert shard_from_env(env | {"HOSTNAME": "loopsync-3"}) == Shard(3, 4)
    assert shard_from_env({"LOOPSYNC_SHARD": "1/2"}) == Shard(1, 2)
    assert shard_from_env({}) is None


@pytest.mark.parametrize(
    "env",
    [
        {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4", "HOSTNAME": "loopsync"},
        {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "4", "HOSTNAME": "loopsync-4"},
        {"LOOPSYNC_SHARD": "auto", "HOSTNAME": "loopsync-0"},
        {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "x", "LOOPSYNC_SHARD_INDEX": "0"},
    ],
)
def test_an_auto_shard_without_a_usable_index_or_count_is_a_usage_error(
    env: dict[str, str],
) -> None:
    with pytest.raises(UsageError):
        shard_from_env(env)


def _merchants(folder: Path, names: list[str]) -> Path:
    """Valid merchant files (the generic kind, pointing at a sandbox never started)."""
    folder.mkdir(parents=True, exist_ok=True)
    box = Sandbox("generic", rate_limits=False)
    for name in names:
        doc = box.config_dict(merchant=name, state_path=folder.parent / f"{name}.sqlite")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return folder


def test_shards_plan_lists_each_moving_merchant_and_needs_no_secret(tmp_path: Path) -> None:
    names = [f"shop-{i}" for i in range(30)]
    folder = _merchants(tmp_path / "m", names)
    out = io.StringIO()
    assert cli.main(["shards", "plan", "-c", str(folder), "--from", "3", "--to", "4"], out=out) == 0
    lines = out.getvalue().splitlines()
    moves = plan(names, 3, 4)
    assert lines[:-1] == [f"{m.merchant}: shard {m.source} -> shard 3" for m in moves]
    assert lines[-1] == f"{len(moves)} of 30 merchant(s) move from 3 to 4 shards"


@pytest.mark.parametrize("args", [["--from", "0", "--to", "2"], ["--from", "2", "--to", "x"]])
def test_shards_plan_with_a_bad_count_says_one_line_and_exits_2(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _merchants(tmp_path / "m", ["acme"])
    assert cli.main(["shards", "plan", "-c", str(folder), *args], out=io.StringIO()) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("shard", ["2/2", "x", "0/0"])
def test_serve_with_a_bad_shard_says_one_line_and_exits_2(
    tmp_path: Path, shard: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _merchants(tmp_path / "m", ["acme"])
    assert cli.main(["serve", "-c", str(folder), "--shard", shard], out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--shard" in err[0]


def test_serve_runs_only_the_merchants_of_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"shop-{i}" for i in range(12)]
    folder = _merchants(tmp_path / "m", names)
    for key, value in Sandbox("generic").env().items():
        monkeypatch.setenv(key, value)
    served: list[list[str]] = []

    def fake_serve(configs: list, *_a: object, **_kw: object) -> int:
        served.append([c.merchant for c in configs])
        return 0

    monkeypatch.setattr("loopsync.scheduling.serve", fake_serve)
    for i in range(3):
        assert cli.main(["serve", "-c", str(folder), "--shard", f"{i}/3"], out=io.StringIO()) == 0
    assert sorted(m for shard in served for m in shard) == sorted(names)
    for i, mine in enumerate(served):
        assert sorted(mine) == sorted(n for n in names if owner(n, 3) == i)


@pytest.mark.parametrize(
    "env",
    [
        {"LOOPSYNC_SHARD": "auto"},
        {"LOOPSYNC_SHARD": "3/3"},
        {"LOOPSYNC_SHARD": "auto", "LOOPSYNC_SHARD_COUNT": "2", "HOSTNAME": "web"},
    ],
)
def test_serve_with_a_bad_shard_in_the_environment_says_one_line_and_exits_2(
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _merchants(tmp_path / "m", ["acme"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve", "-c", str(folder)], out=io.StringIO()) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
