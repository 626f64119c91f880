"""The readers `discover` added for remote data (Loop destinations, ShipHero warehouses,
PeopleVox sites, Xoro stores) return typed values or raise the one `Unreadable`, whatever
the remote sends; and `discover` sends no credential to another host."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopsync.connectors.peoplevox.wire import site_rows
from loopsync.connectors.shiphero.mapping import read_warehouses
from loopsync.connectors.xoro.wire import store_rows
from loopsync.discovery import read_destinations
from loopsync.errors import Unreadable

from .test_poison_parsers import any_json, hostile_text

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HUGE = 10**5000  # str() of it raises ValueError (Python's 4,300-digit limit)
rows_of_json = st.lists(st.one_of(any_json, st.just(HUGE)), max_size=5)


def _total(read: Any, value: Any) -> Any:
    try:
        return read(value)
    except Unreadable:
        return None


@FEW
@given(
    st.lists(
        st.one_of(
            any_json,
            st.dictionaries(
                st.sampled_from(["id", "name", "type", "enabled"]),
                st.one_of(any_json, st.just(HUGE)),
            ),
        ),
        max_size=5,
    )
)
def test_loop_destinations_of_any_json_are_typed_or_unreadable(rows: list[Any]) -> None:
    got = _total(read_destinations, rows)
    assert got is None or all(d.id and isinstance(d.name, str) for d in got)


@FEW
@given(
    st.one_of(
        any_json,
        st.builds(lambda ws: {"data": {"account": {"data": {"warehouses": ws}}}}, rows_of_json),
    )
)
def test_shiphero_warehouses_of_any_answer_are_typed_or_unreadable(body: Any) -> None:
    got = _total(read_warehouses, body)
    assert got is None or all(w.id and isinstance(w.name, str) for w in got)


@FEW
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["Reference", "SiteReference", "Name", "x"]), hostile_text),
        max_size=5,
    )
)
def test_peoplevox_site_rows_of_any_cells_keep_only_rows_with_a_reference(rows: Any) -> None:
    assert all(ref and ref == ref.strip() for ref, _ in site_rows(rows))


@FEW
@given(
    st.lists(
        st.one_of(
            any_json,
            st.dictionaries(
                st.sampled_from(["StoreCode", "StoreId", "StoreName", "Id"]),
                st.one_of(any_json, st.just(HUGE)),
            ),
        ),
        max_size=5,
    )
)
def test_xoro_store_rows_of_any_json_are_ids_and_names_or_unreadable(rows: list[Any]) -> None:
    got = _total(store_rows, rows)
    assert got is None or all(ident and isinstance(name, str) for ident, name in got)


@pytest.mark.parametrize("api", ["loop", "warehouse"])
def test_discover_and_connect_send_no_credential_to_a_host_a_remote_redirects_to(
    api, make_sandbox, tmp_path, monkeypatch, capsys
):
    from loopsync.cli import main
    from loopsync.sandbox.server import Fault, Response
    from loopsync.timeutil import SystemClock

    from .hostile import HostileServer, reply

    sb = make_sandbox("shiphero", clock=SystemClock(), rate_limits=False)
    env = sb.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = sb.write_config(tmp_path / "cfg", merchant="m")
    with HostileServer(reply(200, {"data": {}})) as elsewhere:
        moved = Response(307, b"", {"Location": f"{elsewhere.url}/steal"})
        target = sb.loop if api == "loop" else sb.warehouse
        target.faults.inject(Fault("custom", response=lambda req: moved), times=10**6)
        codes = [
            main(["discover", "-c", str(path)]),
            main(["check-config", "--connect", "-c", str(path)]),
        ]
        err = capsys.readouterr().err
    assert codes[0] != 0 and codes[1] != 0 and "Traceback" not in err
    assert not any(r.contains(secret) for r in elsewhere.received for secret in env.values())
