"""Issue 15 §2: a Xoro `Result: false` under HTTP 200 is classified like any other remote
error (transient ones retried with backoff through the `check=` hook), and one failed
listing request does not stop the poll's decisions."""

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors.xoro.wire import check_envelope
from loopsync.errors import AuthError, ErrorBody, RateLimited, TransientError, XoroBusy, XoroRefused
from loopsync.http import HttpResult
from loopsync.sandbox.server import Fault
from tests.test_xoro import connector, imported_return, linked, request, xoro  # noqa: F401

BUSY = {"Result": False, "Message": "An error has occurred. Please try again later.", "Data": None}


def every_nth(n, path="getasn"):
    """A `when` for Fault injection: true on every n-th request to `path` (thread-safe)."""
    count = itertools.count(1)
    lock = threading.Lock()

    def when(req):
        if path not in req.path:
            return False
        with lock:
            return next(count) % n == 0

    return when


def test_intermittent_result_false_one_in_eight_still_acts_on_every_closed_asn(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("xoro")
    sb.warehouse.page_size = 2  # 16 ASNs: an 8-page listing, so every listing meets errors
    ids = [str(r["id"]) for r in sb.seed(16, states_weights=[("open", 1)])]
    cfg = sb.merchant_config(tmp_path)
    sb.warehouse.faults.inject(
        Fault("status", status=200, body=BUSY), times=10**6, when=every_nth(8)
    )
    for _ in range(2):
        clock.advance(60)
        sb.run_cycle(cfg)
    for rid in ids:
        sb.warehouse.receive(rid, "full")
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 16, result.stage_errors
    assert all(sb.loop.actions_for(rid) == ["process"] for rid in ids)
    assert "status:200" in sb.warehouse.faults.injected


def test_transient_result_false_is_retried_by_the_http_layer(xoro, clock):  # noqa: F811
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52394000, 3)
    xoro.recorder.clear()
    xoro.faults.inject(Fault("status", status=200, body=BUSY), times=2)
    result = conn.poll(refs)
    assert len(result.statuses) == 3 and not result.errors
    assert len(xoro.recorder.calls("xoro", path="/asn/getasn")) == 3


def test_listing_failing_on_a_later_page_still_decides_the_asns_read(xoro, clock):  # noqa: F811
    xoro.page_size = 2
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52394100, 6)
    xoro.faults.inject(
        Fault("status", status=200, body=BUSY),
        times=10**6,
        when=lambda req: req.query.get("page") == "3",
    )
    result = conn.poll(refs)
    assert len(result.statuses) == 4  # pages 1 and 2
    late = set(r.return_id for r in refs) - set(result.statuses)
    assert len(late) == 2 and all("stopped early" in result.errors[rid] for rid in late)


def test_listing_failing_on_its_first_page_raises_the_classified_error(xoro, clock):  # noqa: F811
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52394200, 2)
    xoro.faults.inject(Fault("status", status=200, body=BUSY), times=10**6)
    with pytest.raises(TransientError, match="try again"):
        conn.poll(refs)


def test_refused_credentials_under_200_are_an_auth_error(xoro, clock):  # noqa: F811
    xoro.auth_failure = "result_false"
    conn = connector(xoro, clock)
    conn.client.http.session.auth = (xoro.api_key, "wrong")
    xoro.recorder.clear()
    with pytest.raises(AuthError):
        conn.find_rma(request(imported_return(xoro, clock)), {})
    assert len(xoro.recorder.calls("xoro")) == 1  # not retried


def _result(body):
    return HttpResult(200, {}, "", body)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Invalid API Key or API Secret", XoroRefused),
        ("This app does not have access to the asn module", XoroRefused),
        ("Invalid filter", ErrorBody),
        ("Too many requests", RateLimited),
        ("Object reference not set to an instance of an object.", XoroBusy),
        ("", XoroBusy),
    ],
)
def test_result_false_is_classified(message, error):
    with pytest.raises(error):
        check_envelope(_result({"Result": False, "Message": message}))


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    st.sampled_from([None, False, "false", 0, True, "true"]),
)
def test_any_envelope_is_accepted_or_a_remote_error(payload, flag):
    body = {"Result": flag, "Message": payload, "Data": payload} if flag is not None else payload
    try:
        check_envelope(_result(body))
    except (TransientError, ErrorBody):
        pass
