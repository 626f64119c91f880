"""Issue 14 §2: a registered secret never reaches a table, `status` (text or JSON), a
reason file, a log line or a configuration error, in plain form or a common encoding."""

import base64
import io
import json
import sqlite3
import textwrap
from urllib.parse import quote, quote_plus

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import logs, redaction
from loopsync.cli import main
from loopsync.configkit import Secret
from loopsync.sandbox.server import Fault
from loopsync.state import EffectStatus, Stage, Store
from loopsync.testing import FakeClock

# Unique to this module: the registry is process-wide.
KEY = "rdx-loop-key-7f3a9c1e"
QUOTED = 'rdx"pa\\ss/wörd+1 x'


def _db_text(path):
    """Every byte of the state database (and its WAL), as text."""
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
    return raw.decode("utf-8", "replace")


def _all_forms(value):
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}


# -- the registry -----------------------------------------------------------------------------


def test_resolved_secret_registers_itself_and_is_masked_in_every_encoding():
    Secret("RDX", QUOTED)
    text = " | ".join(
        [
            f"plain {QUOTED}",
            f"url {quote(QUOTED, safe='')}",
            f"form {quote_plus(QUOTED)}",
            f"json {json.dumps({'k': QUOTED})}",
            f"basic {base64.b64encode(('user:' + QUOTED).encode()).decode()}",
            f"b64 {base64.b64encode(QUOTED.encode()).decode()}",
            f"urlsafe {base64.urlsafe_b64encode(('ab' + QUOTED).encode()).decode()}",
        ]
    )
    out = redaction.redact(text)
    for form in _all_forms(QUOTED):
        assert form not in out
    b64 = base64.b64encode(QUOTED.encode()).decode()
    assert b64[2:-2] not in out
    assert out.count(redaction.REDACTED) >= 7


def test_too_short_values_are_never_registered():
    redaction.register("abc1234")
    assert redaction.redact("abc1234 stays") == "abc1234 stays"


def test_log_lines_mask_secrets_inside_exception_objects_and_reprs():
    Secret("RDX_LOG", "rdx-log-secret-42")
    out = io.StringIO()
    logs.configure(json_output=True, stream=out)
    try:
        raise RuntimeError("refused rdx-log-secret-42")
    except RuntimeError as exc:
        structlog.get_logger().error(
            "boom",
            error=exc,
            exc_info=True,
            obj=object.__new__(type("T", (), {"__repr__": lambda s: "T(rdx-log-secret-42)"})),
        )
    text = out.getvalue()
    assert "boom" in text and "rdx-log-secret-42" not in text


# -- the state database -----------------------------------------------------------------------


def test_every_store_write_of_remote_text_masks_the_secret(tmp_path):
    Secret("LOOP_API_KEY", KEY)
    echo = f"401: key {KEY} is not valid (sent {quote(KEY)})"
    store = Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))
    from datetime import UTC, datetime

    when = datetime(2026, 6, 1, tzinfo=UTC)
    store.returns.upsert(
        "1",
        {"id": 1, "note": echo},
        state="open",
        updated_at=when,
        created_at=when,
        destination_id="d",
        order_name="#1",
    )
    store.returns.move("1", Stage.REJECTED, echo)
    store.runs.add_problem("1", "push", echo, "run1")
    store.ledger.intent("k1", "1", "note", {"text": echo})
    # The engine sends what the ledger holds: a warehouse echo never reaches Loop in a note.
    assert store.ledger.pending()[0].payload["text"].startswith("401: key *** is not")
    store.ledger.error("k1", echo)
    store.ledger.not_sent("k1", echo)
    store.ledger.outcome("k1", EffectStatus.FAILED, result={"answer": echo}, error=echo)
    store.rmas.link("1", "RMA-1", {"remote": echo})
    store.rmas.record_poll("1", echo, json.dumps({"s": echo}), "fp", "flag", echo)
    store.asn.upsert({"id": "1", "return_line_item_id": "2", "note": echo})
    store.kv("generic").set("last", echo)
    store.cursors.save_page("returns", "open", when, when, f"cursor-{KEY}")
    assert store.cursors.get("returns", "open").page_cursor is None  # resume re-reads the window
    store.cursors.save_page("returns", "closed", when, when, "plain-cursor")
    assert store.cursors.get("returns", "closed").page_cursor == "plain-cursor"
    store.runs.start("run1", "run")
    store.runs.finish("run1", "crashed", {}, 1, echo)
    # Stored JSON stays readable JSON.
    assert store.ledger.get("k1").result == {"answer": f"401: key *** is not valid (sent ***)"}
    assert store.ledger.pending() == []
    store.close()
    text = _db_text(tmp_path / "s.sqlite")
    assert "is not valid" in text
    for form in _all_forms(KEY):
        assert form not in text


def _write_config(tmp_path, state):
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        merchant: rdx
        state_path: {state}
        loop:
          api_key: ${{RDX_STATUS_KEY}}
          start_at: 2026-01-01T00:00:00Z
        warehouse:
          kind: shiphero
          refresh_token: ${{RDX_STATUS_REFRESH}}
        """)
    )
    return path


@pytest.mark.parametrize("as_json", [False, True])
def test_status_never_prints_a_secret_even_from_an_old_state_file(
    tmp_path, monkeypatch, capsys, as_json
):
    secret = "rdx-status-key-" + ("json" if as_json else "text") + "-55"
    monkeypatch.setenv("RDX_STATUS_KEY", secret)
    monkeypatch.setenv("RDX_STATUS_REFRESH", "rdx-status-refresh-token")
    state = tmp_path / "rdx.sqlite"
    Store(state, FakeClock("2026-06-01T00:00:00Z")).close()
    # Written behind the store's back, as a loopsync without redaction would have.
    db = sqlite3.connect(state)
    db.execute(
        "insert into problems (return_id, stage, message, at, run_id) values "
        "('9', 'push', ?, '2026-06-01T00:00:00Z', 'r')",
        [f"echo {secret}"],
    )
    db.execute(
        "insert into runs (id, started_at, ended_at, mode, status, counts, errors, error) "
        "values ('r', '2026-06-01T00:00:00Z', '2026-06-01T00:01:00Z', 'run', 'crashed', "
        "'{}', 1, ?)",
        [f"AuthError: {secret}"],
    )
    db.commit()
    db.close()
    cfg = _write_config(tmp_path, state)
    argv = ["status", "-c", str(cfg)] + (["--json"] if as_json else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "echo ***" in out and secret not in out


def test_remote_error_echoing_the_key_is_stored_and_shown_without_it(
    make_sandbox, tmp_path, capsys, monkeypatch
):
    sb = make_sandbox("shiphero", rate_limits=False)
    sb.seed(2, states_weights=[("open", 1)])
    cfg = sb.merchant_config(tmp_path)
    key = cfg.loop.api_key.value
    echo = {"message": f"invalid api key {key} (X-Authorization: {key})"}
    # Loop refuses the note (a per-return call): recorded against the return.
    sb.loop.faults.inject(
        Fault("status", status=422, body=echo),
        times=50,
        when=lambda req: req.method == "POST" and "note" in req.path,
    )
    sb.run_cycle(cfg)
    text = _db_text(cfg.state_path)
    assert "invalid api key ***" in text and key not in text
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    for extra in ([], ["--json"]):
        assert main(["status", "-c", cfg.file, *extra]) == 0
        out = capsys.readouterr().out
        assert "invalid api key ***" in out
        assert key not in out


# -- files the folder transport writes ----------------------------------------------------------


def test_reason_file_for_a_rejected_receipt_does_not_quote_a_secret(clock, tmp_path):
    from tests.test_generic import deliver, folder_connector, request
    from loopsync.sandbox.generic import GenericEmulator

    secret = "rdx-folder-secret-99"
    Secret("RDX_FOLDER", secret)
    emu = GenericEmulator(clock=clock)
    emu.config = emu.folder_config(tmp_path / "3pl")
    conn = folder_connector(emu, clock)
    ref = deliver(conn, request(99904621, units=1))
    sku = next(iter(ref.extra["units"]))
    emu.write_inbox_file(
        "bad.csv", f"rma_number,sku,quantity,condition\n{ref.rma_id},{sku},{secret},available\n"
    )
    conn.poll([ref]).commit()
    reason = (emu.root / "rejected" / "bad.csv.reason.txt").read_text()
    assert "quantity" in reason and secret not in reason


def test_an_uncaught_crash_prints_a_redacted_traceback(monkeypatch, capsys):
    import sys
    import threading

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    Secret("RDX_CRASH", "rdx-crash-secret-31")
    redaction.install_excepthooks()
    try:
        raise RuntimeError("loop HTTP 500: echo rdx-crash-secret-31")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    worker = threading.Thread(
        target=lambda: (_ for _ in ()).throw(ValueError("thread rdx-crash-secret-31")), name="w"
    )
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert "RuntimeError: loop HTTP 500: echo ***" in err and "ValueError: thread ***" in err
    assert "rdx-crash-secret-31" not in err


def test_library_log_records_are_redacted_too():
    import logging

    Secret("RDX_STDLIB", "rdx-stdlib-secret-8")
    out = io.StringIO()
    logs.configure(json_output=True, stream=out)
    try:
        raise RuntimeError("loop HTTP 401: rdx-stdlib-secret-8")
    except RuntimeError:
        logging.getLogger("apscheduler.executors.default").exception(
            'Job "sync:acme" raised an exception (%s)', "rdx-stdlib-secret-8"
        )
    text = out.getvalue()
    assert "raised an exception" in text and "loop HTTP 401: ***" in text
    assert "rdx-stdlib-secret-8" not in text


def test_run_time_tokens_are_masked_and_the_registry_stays_bounded():
    Secret("LOOP_API_KEY", KEY)
    before = redaction.registered_count()
    tokens = [f"rdx-session-{i:04d}-token" for i in range(redaction.MAX_TRANSIENT * 3)]
    for token in tokens:
        logs.register_secret(token)
    assert redaction.registered_count() <= before + redaction.MAX_TRANSIENT
    assert redaction.redact(f"session {tokens[-1]}") == "session ***"
    assert redaction.redact(KEY) == "***"  # configured secrets are never dropped


_NO_STAR = st.characters(blacklist_characters="*", blacklist_categories=("Cs",))


@settings(max_examples=50, deadline=None)
@given(
    secret=st.text(_NO_STAR, min_size=8, max_size=40),
    prefix=st.text(_NO_STAR, max_size=30),
    suffix=st.text(_NO_STAR, max_size=30),
    user=st.text(_NO_STAR, max_size=10),
)
def test_no_encoded_form_of_a_secret_survives_redaction(secret, prefix, suffix, user):
    r = redaction.Redactor()  # private: random values must not mask other tests' text
    r.register(secret)
    for form in _all_forms(secret):
        assert form not in r.redact(prefix + form + suffix)
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    out = r.redact(f"Authorization: Basic {basic}")
    assert redaction.REDACTED in out
    # What is left of the encoding cannot carry more than the few edge bits of the secret.
    left = out.replace("Authorization: Basic ", "").split(redaction.REDACTED)
    assert sum(len(part) for part in left) <= len(basic) - len(secret.encode()) * 4 // 3 + 4
