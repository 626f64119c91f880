"""Secrets never appear in logs, errors or the state database; the database is 0600."""

import io
import os
import stat

import pytest

from loopsync import logs
from loopsync.connectors import kind_names
from loopsync.sandbox.server import Fault


@pytest.mark.parametrize("kind", kind_names())
def test_no_secret_in_logs_or_database(make_sandbox, tmp_path, kind):
    sb = make_sandbox(kind, rate_limits=False)
    seeded = sb.seed(3, states_weights=[("open", 1)])
    cfg = sb.merchant_config(
        tmp_path,
        warehouse_extra={"peoplevox": {"rate_limit": {"requests": 1000, "per": "1s"}}}.get(kind),
    )
    secrets = [v for v in sb.env().values() if v]
    assert secrets, "the sandbox config should carry secrets"
    out = io.StringIO()
    logs.configure(json_output=True, level="debug", stream=out)
    # An error path too: a failing call must not echo credentials either.
    sb.loop.faults.inject(Fault("status", status=500), times=2)
    sb.run_cycle(cfg)
    for raw in seeded:
        sb.warehouse.receive(str(raw["id"]), "full")
    sb.run_cycle(cfg)
    text = out.getvalue()
    assert "cycle.summary" in text
    db_bytes = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("sandbox.sqlite")
    )
    for secret in secrets:
        assert secret not in text, f"{kind}: a secret reached the logs"
        assert secret.encode() not in db_bytes, f"{kind}: a secret reached the database"
    mode = stat.S_IMODE(os.stat(cfg.state_path).st_mode)
    assert mode == 0o600, oct(mode)


def test_redaction_masks_registered_values():
    out = io.StringIO()
    logs.configure(json_output=True, stream=out)
    logs.register_secret("hunter2-secret")
    import structlog

    structlog.get_logger().info(
        "oops", detail="token=hunter2-secret", nested={"a": ["hunter2-secret"]}
    )
    assert "hunter2-secret" not in out.getvalue() and "***" in out.getvalue()
