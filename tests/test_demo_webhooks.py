"""`loopsync demo --webhooks` and the latency trials behind it and `benchmarks/latency.py`."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from loopsync.cli import main
from loopsync.testing.latency import percentile


def test_percentile_is_the_nearest_rank():
    values = [float(n) for n in range(1, 21)]  # 1..20
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile(values, 100) == 20.0
    assert percentile([3.0], 95) == 3.0
    assert math.isnan(percentile([], 50))


@given(hs.lists(hs.floats(0, 1e6), min_size=1, max_size=50), hs.floats(0, 100))
def test_a_percentile_is_one_of_the_values_and_grows_with_q(values, q):
    p = percentile(values, q)
    assert p in values
    assert p <= percentile(values, min(100.0, q + 10))


@pytest.mark.slow
def test_demo_with_webhooks_shows_both_latencies_and_exits_0():
    """The worker (serve --http) with webhooks and polling only, side by side: every return
    gets one RMA and one process in both, and both latencies are printed per mode."""
    out = io.StringIO()
    assert main(["demo", "--webhooks", "--returns", "2"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "all good." in text
    table = [line.split() for line in text.splitlines() if line.endswith(" s")]
    assert [row[0] for row in table] == ["webhooks", "polling"], text
    # both returns measured in each mode (the first whole number of a row is the count)
    assert [next(t for t in row if t.isdigit()) for row in table] == ["2", "2"], text
    assert "delivered" in text
