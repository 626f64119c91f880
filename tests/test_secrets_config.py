"""Configuration hygiene (issue 14 §2, issue 15 §4-§5): secret values checked and never
printed, secrets from files, strict YAML, units, absurd values, and `check-config -c DIR`."""

import os
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopsync.cli import main
from loopsync.config import ConfigFailure, MerchantConfig, load_config, load_each
from loopsync.errors import ConfigError
from tests.test_config import BASE, write

ENV = {"LOOP_API_KEY": "cfg-loop-secret-1", "SHIPHERO_REFRESH_TOKEN": "cfg-sh-refresh-1"}


def load_error(tmp_path, text, env=None):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=ENV if env is None else env)
    return info.value


# -- ${VAR} in ordinary keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, replacement, key",
    [
        ("merchant: acme-us", "merchant: ${CFG_MERCHANT}", "merchant"),
        (
            "  base_url: https://api.loopreturns.com/api/v1",
            "  base_url: ${CFG_MERCHANT}",
            "loop.base_url",
        ),
        (
            "  base_url: https://api.loopreturns.com/api/v1",
            "  base_url: https://x/${CFG_MERCHANT}\n  page_size: ${CFG_MERCHANT}",
            "loop.page_size",
        ),
    ],
)
def test_a_failing_key_shows_its_var_reference_never_the_expanded_value(
    tmp_path, line, replacement, key
):
    value = "Not A Merchant Name sk_live_98af"
    err = load_error(tmp_path, BASE.replace(line, replacement), {**ENV, "CFG_MERCHANT": value})
    assert err.key == key
    assert value not in str(err) and "sk_live_98af" not in str(err)
    assert "${CFG_MERCHANT}" in str(err) or "must be an integer" in str(err)


def test_check_config_never_prints_the_expanded_value(tmp_path, monkeypatch, capsys):
    for k, v in {**ENV, "CFG_MERCHANT": "Bad Name sk_live_77"}.items():
        monkeypatch.setenv(k, v)
    bad = write(tmp_path, BASE.replace("merchant: acme-us", "merchant: ${CFG_MERCHANT}"))
    assert main(["check-config", "-c", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "merchant" in captured.err and "sk_live_77" not in captured.err + captured.out


# -- secret values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("abc1234", "too short (7 characters"),
        (" cfg-loop-secret-1", "white space"),
        ("cfg-loop-secret-1 ", "white space"),
        ("cfg-loop-secret-1\n", "line break"),
        ("cfg-loop\nsecret-1", "line break"),
        ("cfg-loop\tsecret-1", "control character"),
        ("", "is empty"),
    ],
)
def test_unsafe_secret_values_are_config_errors_naming_the_key(tmp_path, value, problem):
    err = load_error(tmp_path, BASE, {**ENV, "LOOP_API_KEY": value})
    assert err.key == "loop.api_key" and problem in err.problem
    if value.strip():
        assert value.strip() not in str(err)


def test_short_secret_exits_2_naming_the_key(tmp_path, monkeypatch, capsys):
    for k, v in {**ENV, "SHIPHERO_REFRESH_TOKEN": "short"}.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, BASE)
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "warehouse.refresh_token" in err and "too short" in err


def test_secret_from_a_file_drops_one_final_newline(tmp_path):
    (tmp_path / "loop_key").write_text("cfg-file-secret-123\n")
    cfg = load_config(write(tmp_path, BASE.replace("${LOOP_API_KEY}", "${file:loop_key}")), env=ENV)
    assert cfg.loop.api_key.value == "cfg-file-secret-123"
    assert "cfg-file-secret-123" not in repr(cfg.loop)
    (tmp_path / "crlf").write_bytes(b"cfg-file-secret-456\r\n")
    abs_ref = "${file:" + str(tmp_path / "crlf") + "}"
    cfg = load_config(write(tmp_path, BASE.replace("${LOOP_API_KEY}", abs_ref)), env=ENV)
    assert cfg.loop.api_key.value == "cfg-file-secret-456"


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"cfg-file-secret-123\n\n", "line break"),
        (b" cfg-file-secret-123\n", "white space"),
        (b"cfg-file-secret-123 \n", "white space"),
        (b"short\n", "too short"),
        (b"\n", "empty"),
        (b"\xff\xfe-not-utf8-secret", "not UTF-8"),
        (None, "cannot read secret file"),
        ("fifo", "not a regular file"),
        ("dir", "not a regular file"),
    ],
)
def test_unsafe_secret_files_are_config_errors(tmp_path, content, problem):
    if content == "fifo":
        os.mkfifo(tmp_path / "key")  # would block a read forever
    elif content == "dir":
        (tmp_path / "key").mkdir()
    elif content is not None:
        (tmp_path / "key").write_bytes(content)
    err = load_error(tmp_path, BASE.replace("${LOOP_API_KEY}", "${file:key}"))
    assert err.key == "loop.api_key" and problem in err.problem
    assert "cfg-file-secret-123" not in str(err)


# -- YAML strictness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, line",
    [
        (BASE + "merchant: evil\n", "merchant", 12),
        (BASE.replace("  lookback: 15m", "  lookback: 15m\n  lookback: 1h"), "lookback", 8),
        (BASE.replace('{"12": "WH1"}', '{"12": "WH1", "12": "WH2"}'), "12", 11),
    ],
)
def test_duplicate_keys_are_errors_naming_key_and_line(tmp_path, text, key, line):
    err = load_error(tmp_path, text)
    assert f"duplicate key '{key}'" in str(err) and f"line {line}" in str(err)


def test_merge_keys_may_still_override(tmp_path):
    text = BASE.replace("schedule: {every: 15m}", "schedule: {<<: {every: 15m}, every: 5m}")
    cfg = load_config(write(tmp_path, text), env=ENV)
    assert cfg.every.total_seconds() == 300


@pytest.mark.parametrize(
    "change, key, problem",
    [
        ("every: 90", "schedule.every", "needs a unit"),
        ("every: 1.5", "schedule.every", "needs a unit"),
        ("every: 99999999999999999999d", "schedule.every", "absurdly long"),
        ("every: 1" + "0" * 400 + "s", "schedule.every", "absurdly long"),
        ("every: -5m", "schedule.every", "not a duration"),
        ("every: '-5m'", "schedule.every", "not a duration"),
        ("every: ５m", "schedule.every", "not a duration"),
        ("every: .inf", "schedule.every", "needs a unit"),
        ("every: 15m}\nloop: {lookback: 60", "loop.lookback", "needs a unit"),
    ],
)
def test_durations_need_a_unit_and_a_sane_size(tmp_path, change, key, problem):
    text = BASE.replace("every: 15m", change)
    if "loop: {" in change:  # the one-line `loop:` replaces the block below
        text = text.replace(
            "schedule: {every: 15m}\nloop: {lookback: 60}", "schedule: {every: 15m}"
        ).replace("  lookback: 15m", "  lookback: 60")
    err = load_error(tmp_path, text)
    assert err.key == key
    if problem:
        assert problem in err.problem


@pytest.mark.parametrize(
    "old, new, key",
    [
        (
            "  lookback: 15m",
            "  lookback: 15m\n  page_size: 99999999999999999999999999999",
            "loop.page_size",
        ),
        (
            "  lookback: 15m",
            "  lookback: 15m\n  page_size: -99999999999999999999999999999",
            "loop.page_size",
        ),
        ("  lookback: 15m", "  lookback: 15m\n  page_size: " + "9" * 5000, ""),
        ("kind: shiphero", "kind: shiphero\n  credits_max: 1" + "0" * 40, "warehouse.credits_max"),
        (
            "kind: shiphero",
            "kind: shiphero\n  credits_per_second: 1e300",
            "warehouse.credits_per_second",
        ),
        (
            "kind: shiphero",
            "kind: shiphero\n  credits_per_second: .nan",
            "warehouse.credits_per_second",
        ),
        ("  lookback: 15m", "  lookback: 15m\n  timeout: 99999999999999999999999d", "loop.timeout"),
        (
            "  start_at: 2026-01-01T00:00:00Z",
            "  start_at: 0001-01-01T00:00:00+01:00",
            "loop.start_at",
        ),
        ("  start_at: 2026-01-01T00:00:00Z", "  start_at: 99999-01-01T00:00:00Z", "loop.start_at"),
    ],
)
def test_absurd_values_are_config_errors(tmp_path, old, new, key):
    assert load_error(tmp_path, BASE.replace(old, new)).key == key


@pytest.mark.parametrize(
    "nested",
    [
        "x: " + "[" * 3000 + "]" * 3000,
        "x: " + "{a: " * 3000 + "1" + "}" * 3000,
        "".join("  " * i + f"k{i}:\n" for i in range(200)),
    ],
)
def test_documents_nested_thousands_deep_are_config_errors(tmp_path, nested):
    err = load_error(tmp_path, nested + "\n")
    assert "nested deeper" in err.problem


def test_alias_bombs_are_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    merges = ["m0: &m0 {x: 1, y: 2}"]
    merges += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], z{i}: 1}}" for i in range(1, 40)]
    for text in ("\n".join(lines), "\n".join(merges), "a: &a [*a]"):
        started = time.process_time()
        err = load_error(tmp_path, text + "\n")
        assert "invalid YAML" in err.problem
        assert time.process_time() - started < 5  # CPU time, generous: the bomb is 10^9


# -- hypothesis: anything in, a MerchantConfig or a ConfigError out -----------------------------

_SCALARS = st.one_of(
    st.sampled_from(
        [
            "15m",
            "90",
            "-1",
            "1e400",
            "0x1F",
            "~",
            "null",
            "true",
            "&a x",
            "*a",
            "!!binary aGVsbG8=",
            "!!python/object:os.system x",
            "${LOOP_API_KEY}",
            "${file:/nonexistent}",
            "${NOPE}",
            "2026-01-01",
            "[",
            "{",
            "'",
            "<<: *a",
            "9" * 30,
            "1" * 5000 + "d",
            "\\ud800",
            "\x00",
            "- a",
            "? a",
            "|",
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def yamlish(draw):
    lines = BASE.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        head = lines[i].split(":")[0] if ":" in lines[i] else lines[i]
        choice = draw(st.integers(0, 3))
        if choice == 0:
            lines[i] = f"{head}: {draw(_SCALARS)}"
        elif choice == 1:
            lines.insert(i, lines[i])  # a duplicate
        elif choice == 2:
            lines[i] = draw(st.text(max_size=30))
        else:
            lines.insert(i, "  " * draw(st.integers(0, 3)) + draw(_SCALARS))
    return "\n".join(lines) + "\n"


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.one_of(yamlish(), st.text(max_size=200)))
def test_any_yamlish_text_gives_a_config_or_a_config_error(tmp_path, text):
    path = tmp_path / "h.yaml"
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        return
    try:
        cfg = load_config(path, env=ENV)
    except ConfigError as exc:
        assert "cfg-loop-secret-1" not in str(exc)
        return
    assert isinstance(cfg, MerchantConfig)


def test_yaml_that_safe_load_accepts_but_is_not_a_mapping_is_a_config_error(tmp_path):
    for doc in (yaml.safe_dump([1, 2]), "just text", "--- 3\n"):
        assert load_error(tmp_path, doc).problem


# -- check-config over a directory --------------------------------------------------------------


def test_check_config_on_a_directory_reports_every_file_then_exits_2(tmp_path, monkeypatch, capsys):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    d = tmp_path / "conf"
    d.mkdir()
    write(d, BASE, "a-good.yaml")
    write(d, BASE.replace("every: 15m", "every: 90"), "b-units.yaml")
    write(d, BASE + "merchant: other\n", "c-dup.yml")
    write(
        d, BASE.replace("acme-us", "acme-eu").replace("kind: shiphero", "kind: nope"), "d-kind.yaml"
    )
    write(d, BASE.replace("acme-us", "acme-ca"), "e-good.yaml")
    write(d, BASE, "f-same-merchant.yaml")
    write(d, "not: [yaml", "g-broken.yaml")
    (d / "README.txt").write_text("ignored")
    assert main(["check-config", "-c", str(d)]) == 2
    captured = capsys.readouterr()
    ok = captured.out.strip().splitlines()
    bad = captured.err.strip().splitlines()
    assert [line.split(":")[0] for line in ok] == [str(d / "a-good.yaml"), str(d / "e-good.yaml")]
    assert all(": ok (merchant" in line for line in ok)
    assert len(bad) == 5
    for name, key in [
        ("b-units.yaml", "schedule.every"),
        ("c-dup.yml", "duplicate key"),
        ("d-kind.yaml", "warehouse.kind"),
        ("f-same-merchant.yaml", "merchant"),
        ("g-broken.yaml", "invalid YAML"),
    ]:
        assert any(str(d / name) in line and key in line for line in bad), (name, bad)


def test_check_config_on_a_good_directory_exits_0(tmp_path, monkeypatch, capsys):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, BASE.replace("acme-us", "acme-eu"), "b.yaml")
    assert main(["check-config", "-c", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_load_each_returns_configs_and_failures_in_order(tmp_path):
    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, "merchant: [", "b.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    got = load_each([str(tmp_path), str(empty)], env=ENV)
    assert [type(x) for x in got] == [MerchantConfig, ConfigFailure, ConfigFailure]
    assert got[1].file.endswith("b.yaml") and "invalid YAML" in str(got[1].error)
    assert got[2].file == str(empty) and "no configuration files" in str(got[2].error)


def test_a_secret_file_swapped_for_a_fifo_after_any_check_cannot_hang_start_up(
    tmp_path, monkeypatch
):
    # The check is made on what was opened: a name that looked like a regular file when
    # checked (here: Path.stat lies, as a swap between check and open would) but is a FIFO
    # when opened is refused, never read (a read would block start-up for ever).
    import threading
    from pathlib import Path

    os.mkfifo(tmp_path / "key")
    regular = os.stat(__file__)  # what a regular file reports
    real_stat = Path.stat
    monkeypatch.setattr(
        Path, "stat", lambda self, **kw: regular if self.name == "key" else real_stat(self, **kw)
    )
    errors: list[Exception] = []
    worker = threading.Thread(
        target=lambda: errors.append(
            load_error(tmp_path, BASE.replace("${LOOP_API_KEY}", "${file:key}"))
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(tmp_path / "key", "wb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK)):
            pass
        worker.join(timeout=5)
        pytest.fail("reading the secret file blocked on a FIFO")
    assert "not a regular file" in errors[0].problem
