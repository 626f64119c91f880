"""Logs a container platform can read: every line JSON (libraries' too), tracebacks as a
field, secrets masked on every path, `stage` inside a stage, scheduler events in words."""

import io
import json
import logging
import threading
from types import SimpleNamespace

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

from loopsync import logs
from loopsync.configkit import Secret
from loopsync.cycle import Engine
from loopsync.runner import run_merchant
from loopsync.scheduling import describe_event, log_event


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _configured(level: str = "info") -> io.StringIO:
    out = io.StringIO()
    logs.configure(json_output=True, level=level, stream=out)
    return out


def test_a_library_line_is_json_with_the_same_keys_as_loopsyncs_own():
    out = _configured()
    structlog.get_logger("loopsync.x").warning("own.event", merchant="acme")
    logging.getLogger("urllib3.connectionpool").warning("Retrying (%s) after %s", 2, "reset")
    own, foreign = _lines(out)
    assert foreign["event"] == "Retrying (2) after reset"
    assert foreign["logger"] == "urllib3.connectionpool" and foreign["level"] == "warning"
    assert {"event", "level", "logger", "timestamp"} <= set(own) & set(foreign)


def test_a_traceback_is_the_exception_field_of_one_json_line_on_both_paths():
    out = _configured()
    try:
        raise ValueError("broken")
    except ValueError:
        structlog.get_logger("loopsync.x").exception("own.crash")
        logging.getLogger("apscheduler.executors.default").exception("Job raised")
    text = out.getvalue()
    assert len(text.splitlines()) == 2  # no raw traceback lines between them
    for line in _lines(out):
        assert "Traceback (most recent call last)" in line["exception"]
        assert "ValueError: broken" in line["exception"]


def test_a_secret_is_masked_in_a_library_lines_message_args_and_traceback():
    Secret("RDX_FOREIGN", "rdx-foreign-secret-77")
    out = _configured()
    try:
        raise RuntimeError("HTTP 401 for rdx-foreign-secret-77")
    except RuntimeError:
        logging.getLogger("requests").error(
            "token %s refused", "rdx-foreign-secret-77", exc_info=True
        )
    text = out.getvalue()
    assert "rdx-foreign-secret-77" not in text
    assert "token *** refused" in _lines(out)[0]["event"]


def test_apscheduler_info_chatter_is_held_back_its_warnings_are_not():
    out = _configured(level="debug")
    logging.getLogger("apscheduler.scheduler").info('Added job "sync:acme"')
    logging.getLogger("apscheduler.scheduler").warning("Run time was missed")
    assert [line["event"] for line in _lines(out)] == ["Run time was missed"]


def test_every_line_inside_a_stage_carries_the_stage_and_none_after_it():
    out = _configured()
    engine = SimpleNamespace(ctx=SimpleNamespace(stop=threading.Event()))
    log = structlog.get_logger("loopsync.connectors.x")
    Engine._stage(
        engine, "poll", lambda: (log.info("inside"), logging.getLogger("lib").warning("lib inside"))
    )
    log.info("after")
    inside, lib_inside, after = _lines(out)
    assert inside["stage"] == "poll" and lib_inside["stage"] == "poll"
    assert "stage" not in after


def test_a_cycle_logs_cycle_start_with_merchant_and_run_id(
    make_sandbox, tmp_path, clock, monkeypatch
):
    sb = make_sandbox()
    for key, value in sb.env().items():
        monkeypatch.setenv(key, value)
    from loopsync.config import load_config

    cfg = load_config(sb.write_config(tmp_path, merchant="acme"))
    out = _configured()
    result = run_merchant(cfg, clock=clock)
    start = next(line for line in _lines(out) if line["event"] == "cycle.start")
    assert start["merchant"] == "acme" and start["run_id"] == result.run_id
    by_event = {line["event"]: line for line in _lines(out)}
    assert by_event["ingest.state"]["stage"] == "ingest"
    assert "stage" not in by_event["cycle.summary"]  # after the stages: unbound again


def test_scheduler_events_read_as_words_not_codes():
    busy = describe_event(EVENT_JOB_MAX_INSTANCES, "sync:acme")
    assert busy.message == "skipped: the previous cycle of acme is still running"
    assert busy.merchant == "acme" and busy.event == "scheduler.skipped"
    missed = describe_event(EVENT_JOB_MISSED, "sync:acme")
    assert missed.message.startswith("skipped: the cycle of acme due at")
    failed = describe_event(EVENT_JOB_ERROR, "sync:acme", error="OSError: disk full")
    assert "the cycle of acme failed: OSError: disk full" in failed.message


def test_the_scheduler_listener_logs_one_readable_json_line():
    out = _configured()
    log_event(
        SimpleNamespace(code=EVENT_JOB_MAX_INSTANCES, job_id="sync:acme", scheduled_run_time=None)
    )
    (line,) = _lines(out)
    assert line["message"] == "skipped: the previous cycle of acme is still running"
    assert "65536" not in json.dumps(line)
