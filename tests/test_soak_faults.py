"""The sandbox's fault table (transport faults of the real internet), its poison records,
and the soak's crash counting. The soak itself is in test_soak.py."""

import json
import socket
import threading
import time

from datetime import UTC, datetime

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors import kind_names
from loopsync.sandbox import poison as poison_mod
from loopsync.sandbox import server as server_mod
from loopsync.sandbox import shiphero as shiphero_mod
from loopsync.sandbox.server import (
    FAULT_KINDS,
    HANDLER_RUNS,
    ApiServer,
    EmulatedApi,
    Fault,
    json_response,
)
from tests.test_soak import load_soak

BODY = {"returns": [{"id": str(n), "note": "x" * 40} for n in range(20)]}


class CountingApi(EmulatedApi):
    """Answers BODY and counts the requests it handled (its effect happened)."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def handle(self, req):
        self.handled += 1
        return json_response(BODY)


@pytest.fixture
def counting_server():
    api = CountingApi()
    srv = ApiServer(api).start()
    yield api, srv
    srv.stop()


def test_every_fault_kind_is_a_documented_row_of_the_fault_table():
    for kind in FAULT_KINDS:
        assert f'"{kind}"' in Fault.__doc__, f"fault kind {kind} is not documented"
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("drop_everything")
    assert {
        "slow",
        "reset_after",
        "malformed",
        "drip",
        "truncated",
        "bad_chunked",
        "bad_gzip",
    } == set(HANDLER_RUNS)


@pytest.mark.parametrize(
    "kind, error",
    [
        ("truncated", requests.exceptions.ChunkedEncodingError),
        ("bad_chunked", requests.exceptions.ChunkedEncodingError),
        ("bad_gzip", requests.exceptions.ContentDecodingError),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_cut_or_undecodable_answer_comes_after_the_effect_happened(
    counting_server, kind, error, method
):
    api, srv = counting_server
    api.faults.inject(Fault(kind))
    with pytest.raises(error):
        requests.request(method, f"{srv.url}/x", json={"a": 1}, timeout=10)
    assert api.handled == 1, "the handler must run: only the answer is spoiled"
    assert requests.get(f"{srv.url}/x", timeout=10).json() == BODY  # the next one is clean


def test_drip_sends_the_whole_answer_a_byte_at_a_time(counting_server):
    api, srv = counting_server
    api.faults.inject(Fault("drip", delay=1.0))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        pieces = []
        while piece := sock.recv(65536):
            pieces.append(piece)
    head, _, body = b"".join(pieces).partition(b"\r\n\r\n")
    assert json.loads(body) == BODY, "a drip delivers the whole answer, correctly framed"
    assert api.handled == 1
    # 24 bytes 40 ms apart: even a reader on a loaded machine sees them in several pieces.
    assert len(pieces) >= 3, "the answer came in one piece, not dripped"


def test_a_drip_is_bounded_whatever_delay_it_asks(counting_server, monkeypatch):
    """A soak of hundreds of drips stays minutes long: the drip's length is capped."""
    monkeypatch.setattr(server_mod, "DRIP_MAX_SECONDS", 0.2)
    api, srv = counting_server
    api.faults.inject(Fault("drip", delay=3600))
    done = threading.Event()
    result = {}

    def fetch():
        result["body"] = requests.get(f"{srv.url}/x", timeout=10).json()
        done.set()

    threading.Thread(target=fetch, daemon=True).start()
    assert done.wait(60), "a drip asked for an hour was not capped"
    assert result["body"] == BODY


# -- poison records ---------------------------------------------------------------------------


def test_loop_poison_returns_are_served_exactly_as_given_beside_good_ones(make_sandbox, clock):
    sb = make_sandbox("shiphero")
    good = sb.seed(2, states_weights=[("open", 1)])
    now = clock.now()
    seeded = poison_mod.loop_poison_returns(first_id=48_000_001, at=now)
    for _, raw in seeded:
        sb.loop.add_poison_return(raw, at=now)
    resp = requests.get(
        f"{sb.loop_url}/warehouse/return/list",
        timeout=10,
        headers={"X-Authorization": "sandbox-loop-key-0001"},
        params={
            "from": "2026-05-01 00:00:00",
            "to": "2026-06-02 00:00:00",
            "filter": "updated_at",
            "state": "open",
        },
    )
    assert resp.status_code == 200, resp.text
    listed = {r["id"]: r for r in resp.json()}
    assert {str(r["id"]) for r in good} <= set(listed)
    by_kind = {kind: listed[str(raw["id"])] for kind, raw in seeded}
    assert [k for k, _ in poison_mod.LOOP_POISON] == list(by_kind)
    overflow = by_kind["overflowing timestamps"]
    assert overflow["updated_at"] == "9999-12-31T23:59:59-01:00"
    with pytest.raises(OverflowError):  # what a careless reader meets
        datetime.fromisoformat(overflow["updated_at"]).astimezone(UTC)
    full_width = by_kind["full-width digits id"]["id"]
    assert full_width.isdigit() and not full_width.isascii()
    assert all(
        li["sku"].endswith("\ud800") for li in by_kind["lone surrogate in a SKU"]["line_items"]
    )


def _push_one(sb, tmp_path):
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    if not sb.warehouse.has_rma(rid):
        sb.run_cycle(sb.merchant_config(tmp_path))
    assert sb.warehouse.has_rma(rid)
    return rid


def test_warehouse_poison_needs_an_rma(make_sandbox):
    for kind in kind_names():
        sb = make_sandbox(kind)
        assert sb.warehouse.poison("40999999") is False


def test_shiphero_poison_condition_holds_a_lone_surrogate_and_nul(make_sandbox, tmp_path):
    sb = make_sandbox("shiphero")
    rid = _push_one(sb, tmp_path)
    assert sb.warehouse.poison(rid)
    (ret,) = sb.warehouse._returns_for(rid)
    view = shiphero_mod._return_view(ret)
    assert view["total_items_received"] == view["total_items_expected"]
    assert all(line["condition"] == "good\ud800\x00" for line in view["line_items"])


def test_peoplevox_poison_quantity_is_in_full_width_digits(make_sandbox, tmp_path):
    sb = make_sandbox("peoplevox")
    rid = _push_one(sb, tmp_path)
    assert sb.warehouse.poison(rid)
    rows = [r for r in sb.warehouse._report_rows() if r["RMA number"] == rid]
    assert rows and all(r["RMA status"] == "Completed" for r in rows)
    assert all(r["Quantity"].isdigit() and not r["Quantity"].isascii() for r in rows)


def test_xoro_poison_received_quantity_is_infinity(make_sandbox):
    sb = make_sandbox("xoro")
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    rid = str(raw["id"])
    assert sb.warehouse.poison(rid)
    wire = sb.warehouse.asn(rid).to_wire()
    assert wire["AsnHeaderData"]["Status"].lower() == "closed"
    assert "Infinity" in json.dumps(wire)


@pytest.mark.parametrize("transport", ["http", "folder"])
def test_generic_poison_receipt_quantity_is_in_full_width_digits(make_sandbox, tmp_path, transport):
    sb = make_sandbox("generic", transport=transport, folder_root=tmp_path / "3pl")
    rid = _push_one(sb, tmp_path)
    assert sb.warehouse.poison(rid)
    if transport == "http":
        assert sb.warehouse.receipts[-1]["quantity"] == "１２"
    else:
        (path,) = (tmp_path / "3pl" / "inbox").glob(f"receipts-{rid}-*.csv")
        assert "１２" in path.read_text(encoding="utf-8")


# -- crash counting ---------------------------------------------------------------------------

PLAIN = """starting
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    int("a")
ValueError: invalid literal for int() with base 10: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "x.py", line 3, in <module>
    raise KeyError
KeyError
"""


def test_crash_lines_finds_each_traceback_plain_or_in_a_json_log_line():
    soak = load_soak()
    assert soak.crash_lines(PLAIN + PLAIN.split("During")[0]) == [
        "KeyError (from ValueError)",
        "ValueError: invalid literal for int() with base N: 'a'",
    ]
    event = {
        "event": "job failed",
        "level": "error",
        "exception": 'Traceback (most recent call last):\n  File "e.py", line 9\n'
        "OverflowError: date value out of range",
    }
    assert soak.crash_lines(json.dumps(event) + "\n") == ["OverflowError: date value out of range"]
    quiet = json.dumps({"event": "cycle.summary", "errors": 2}) + "\nplain words\n"
    assert soak.crash_lines(quiet) == []


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(),
            st.just("Traceback (most recent call last):"),
            st.builds(lambda e: json.dumps({"exception": e}), st.text()),
        )
    )
)
def test_crash_lines_reads_any_log_without_failing(lines):
    found = load_soak_module().crash_lines("\n".join(lines))
    assert isinstance(found, list) and all(isinstance(line, str) and line for line in found)


_SOAK = []


def load_soak_module():
    if not _SOAK:
        _SOAK.append(load_soak())
    return _SOAK[0]


def test_kill_point_comes_by_request_count_not_by_time(tmp_path):
    """The soak's kill point: the sandbox saw the chosen number of requests and the run's
    armed fault went off, however long that took."""
    soak = load_soak_module()
    cs = soak.ConnectorSoak(
        "generic",
        1,
        1,
        tmp_path,
        fault_rate=0,
        mode="run",
        deadline=time.monotonic() + 600,
        max_delay=600,
        max_requests=5,
    )

    class Alive:
        def poll(self):
            return None

    fired = threading.Event()

    def traffic():
        for n in range(7):
            cs.sb.recorder.add(server_mod.CallRecord("loop", "GET", "/", {}, {}, b"", 200, 0))
            if n == 4:
                fired.set()
            time.sleep(0.01)

    threading.Thread(target=traffic, daemon=True).start()
    try:
        code, by_count = cs.wait_for_kill_point(Alive(), calls=3, fired=fired)
    finally:
        for srv in (cs.sb.loop_server, cs.sb.warehouse_server):
            srv._server.server_close()  # built, never started
    assert (code, by_count) == (None, True)
    assert cs.sb.recorder.count() >= 5, "killed before the armed fault went off"


def test_benchmarks_row_carries_crashed_runs_and_the_old_table_gains_the_column(tmp_path):
    soak = load_soak_module()
    old_head = (
        "| date | machine | commit | command | connectors | kills | faults | returns | "
        "eligible | finished | duplicates | losses | violations | seconds |"
    )
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# Benchmarks\n\n## Reliability soak\n\ntext\n\n"
        + old_head
        + "\n"
        + "|---" * 14
        + "|\n| old | row |\n\n## Next\n",
        encoding="utf-8",
    )
    report = soak.Report("shiphero", kills_wanted=3, kills=3, crashed_runs=2)
    soak.record([report], seconds=12, command="benchmarks/soak.py --kills 3", path=path)
    lines = path.read_text(encoding="utf-8").splitlines()
    head = lines.index(soak.TABLE_HEAD)
    assert lines[head + 1] == soak.TABLE_RULE and lines[head + 2] == "| old | row |"
    assert lines[head + 3].endswith("| 12 | 2 |") and lines[head + 5] == "## Next"
    summary = soak.summary_line([report], seconds=12, seed=1)
    assert "3 kills" in summary and "2 crashed runs" in summary
