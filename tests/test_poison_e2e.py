"""The poison examples of issue 15 §1 over real HTTP: the emulated Loop lists one poison
return among good ones; the good ones are pushed, the poison one is listed by
`loopsync status` with its reason, and the next cycle goes on (sandbox on 127.0.0.1)."""

from __future__ import annotations

from typing import Any

import pytest

from .test_bad_input import config, loop_return_served_as, open_returns, reported, set_field


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


POISON = [
    (
        "utc overflow",
        set_field("updated_at", "0001-01-01T00:00:00+01:00"),
        r"updated_at timestamp out of range in UTC",
    ),
    ("lone surrogate", set_field("state", "\ud800"), r"state"),
    ("full-width digits as id", set_field("id", "１００２"), r"return id missing or not numeric"),
    ("nested 500 deep", set_field("x_new", nested(500)), r"nested more than 64 deep"),
]


@pytest.mark.parametrize("case, edit, reason", POISON, ids=[c[0] for c in POISON])
def test_poison_loop_return_over_http_holds_back_only_itself(
    make_sandbox, tmp_path, case, edit, reason
):
    sb = make_sandbox("shiphero")
    good = open_returns(sb, 3)
    bad = open_returns(sb, 1)[0]
    loop_return_served_as(sb, bad, edit)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.counts.pushed == 3 and not result.stage_errors, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good)
    reported(cfg, rf"ingest\s+malformed Loop return: .*{reason}")
    again = sb.run_cycle(cfg)
    assert again.counts.pushed == 0 and not again.stage_errors
