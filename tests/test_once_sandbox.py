"""Exactly once at the edges (issue 14 §4) through the whole worker, against the sandbox's
emulated Loop and warehouses over real HTTP on 127.0.0.1, with a shared FakeClock."""

from __future__ import annotations

import json

import pytest

from loopsync import status as status_mod
from loopsync.config import load_config, resolve_state_path
from loopsync.connectors import variants
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import Fault, json_response
from loopsync.state import Store


def open_returns(sb, n):
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


def cycle(sb, cfg, clock, seconds=60):
    clock.advance(seconds)
    return sb.run_cycle(cfg)


def effects_seen(sb, ids):
    """Everything that must happen once per return, as the remotes saw it."""
    return {
        rid: (
            sb.warehouse.rma_count(rid),
            tuple(sb.loop.notes_for(rid)),
            tuple(sb.loop.actions_for(rid)),
        )
        for rid in ids
    }


def forget_state(cfg):
    for suffix in ("", "-wal", "-shm"):
        cfg.state_path.with_name(cfg.state_path.name + suffix).unlink(missing_ok=True)


# -- 4. lost state creates nothing twice ----------------------------------------------------


@pytest.mark.parametrize("kind,transport", variants())
def test_lost_state_file_creates_no_second_rma_note_or_action(
    make_sandbox, tmp_path, clock, kind, transport
):
    extra = (
        {"transport": "folder", "folder_root": tmp_path / "3pl"} if transport == "folder" else {}
    )
    sb = make_sandbox(kind, **extra)
    ids = open_returns(sb, 4)
    cfg = sb.merchant_config(tmp_path)
    first = cycle(sb, cfg, clock)
    assert first.counts.pushed + first.counts.linked == 4
    sb.warehouse.receive(ids[0], "full")
    sb.warehouse.receive(ids[1], "short")
    second = cycle(sb, cfg, clock)
    assert second.counts.processed + second.counts.flagged == 2, second.stage_errors
    before = effects_seen(sb, ids)
    assert all(n == 1 for n, _, _ in before.values())

    forget_state(cfg)  # a new volume, another working directory: empty state
    again = cycle(sb, cfg, clock)
    assert again.ok, again.stage_errors
    assert again.counts.pushed == 0 and again.counts.linked == 2
    cycle(sb, cfg, clock)
    assert effects_seen(sb, ids) == before, "lost state repeated an effect"


# -- 2. a create error that did create ------------------------------------------------------


def _create_then_answer(api, answer):
    """Run the real handler (the record is created), then answer `answer` instead."""

    def respond(req):
        with api.lock:
            api.handle(req)
        return answer(req)

    return Fault("custom", response=respond)


def test_shiphero_return_create_error_that_created_it_is_linked_not_rejected(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("shiphero")
    (rid,) = open_returns(sb, 1)
    error = {
        "data": {"return_create": None},
        "errors": [{"message": "Internal error", "path": ["return_create"]}],
    }
    sb.warehouse.faults.inject(
        _create_then_answer(sb.warehouse, lambda r: json_response(error)),
        when=lambda r: b"return_create" in r.body,
    )
    cfg = sb.merchant_config(tmp_path)
    first = cycle(sb, cfg, clock)
    assert first.counts.rejected == 0 and first.counts.pushed == 1
    assert Store(cfg.state_path, clock).returns.get(rid).stage == "open"
    sb.warehouse.receive(rid, "full")
    cycle(sb, cfg, clock)
    assert sb.warehouse.rma_count(rid) == 1
    assert sb.loop.actions_for(rid) == ["process"] and len(sb.loop.notes_for(rid)) == 1


def test_generic_http_refusal_that_created_it_is_linked_not_rejected(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic")
    (rid,) = open_returns(sb, 1)
    refusal = lambda r: json_response({"error": "try again"}, 422)  # noqa: E731
    sb.warehouse.faults.inject(
        _create_then_answer(sb.warehouse, refusal), when=lambda r: r.method == "POST"
    )
    cfg = sb.merchant_config(tmp_path)
    first = cycle(sb, cfg, clock)
    assert first.counts.rejected == 0 and first.counts.pushed == 1
    assert sb.warehouse.deliveries[rid] == 1


def test_generic_http_rma_the_partner_has_is_looked_up_not_posted(make_sandbox, tmp_path, clock):
    """The contract: GET {rma_url}/{rma_number} before the first POST; an RMA the 3PL
    already holds (delivered before the state was lost) is not POSTed again."""
    sb = make_sandbox("generic")
    ids = open_returns(sb, 2)
    cfg = sb.merchant_config(tmp_path)
    cycle(sb, cfg, clock)
    posts = len(sb.recorder.calls("generic", method="POST"))
    forget_state(cfg)
    cycle(sb, cfg, clock)
    assert len(sb.recorder.calls("generic", method="POST")) == posts == 2
    looked_up = {c.path.rsplit("/", 1)[-1] for c in sb.recorder.calls("generic", method="GET")}
    assert set(ids) <= looked_up


# -- 3. an action error in words loopsync does not know -------------------------------------


def test_unknown_loop_action_error_is_settled_from_the_return_state(make_sandbox, tmp_path, clock):
    sb = make_sandbox("shiphero")
    done_elsewhere, still_open = open_returns(sb, 2)
    cfg = sb.merchant_config(tmp_path)
    cycle(sb, cfg, clock)
    for rid in (done_elsewhere, still_open):
        sb.warehouse.receive(rid, "full")
    sb.loop.set_state(done_elsewhere, "closed")
    odd = {"errors": {"message": "Return has already been processed"}}
    sb.loop.faults.inject(
        Fault("status", status=200, body=odd), times=2, when=lambda r: r.path.endswith("/process")
    )
    result = cycle(sb, cfg, clock)
    store = Store(cfg.state_path, clock)
    assert store.returns.get(done_elsewhere).stage in ("done", "skipped")
    row = store.returns.get(still_open)
    assert row.stage == "reported" and "already been processed" in row.reason
    assert result.needs_attention
    report = status_mod.merchant_status(cfg)
    assert still_open in json.dumps(report, default=str)
    cycle(sb, cfg, clock, seconds=3600)
    assert sb.loop.actions_for(still_open) == []  # never guessed


# -- 5. ambiguity: Xoro by order number -----------------------------------------------------


def test_xoro_two_returns_one_order_one_asn_are_reported_and_neither_acted_on(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("xoro")
    now = clock.now()
    first = make_return(
        rng=sb.rng,
        return_id=61001,
        state="open",
        updated_at=now,
        order_name="#5001",
        order_number="5001",
    )
    second = make_return(
        rng=sb.rng,
        return_id=61002,
        state="open",
        updated_at=now,
        order_name="#5001",
        order_number="5001",
    )
    sb.add_return(first)  # Xoro's app imports it: one ASN for the order
    sb.loop.add_return(second)  # the second return of the order: no ASN of its own
    cfg = sb.merchant_config(tmp_path, warehouse_extra={"match_by": "order_number"})
    result = cycle(sb, cfg, clock)
    assert result.needs_attention and result.counts.linked == 0
    sb.warehouse.receive("61001", "full")
    cycle(sb, cfg, clock)
    assert sb.loop.actions_for("61001") == [] == sb.loop.actions_for("61002")
    store = Store(cfg.state_path, clock)
    for rid in ("61001", "61002"):
        row = store.returns.get(rid)
        assert row.stage == "reported" and "ambiguous" in row.reason
    shown = json.dumps(status_mod.merchant_status(cfg), default=str)
    assert "61001" in shown and "61002" in shown


# -- 6. state_path ---------------------------------------------------------------------------


def test_state_path_resolves_beside_the_config_file_not_the_working_directory(
    make_sandbox, tmp_path, monkeypatch
):
    sb = make_sandbox("shiphero")
    folder = tmp_path / "conf"
    path = sb.write_config(folder, merchant="acme", state_path="data/acme.sqlite")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, env=sb.env())
    assert cfg.state_path == folder / "data" / "acme.sqlite"
    default = load_config(sb.write_config(folder, merchant="other"), env=sb.env())
    assert default.state_path == folder / "state" / "other.sqlite"


def test_state_dir_from_the_environment_holds_relative_state_paths(tmp_path):
    state_dir = str(tmp_path / "vol")
    assert (
        resolve_state_path(None, "m", tmp_path / "cfg", state_dir) == tmp_path / "vol" / "m.sqlite"
    )
    assert resolve_state_path("x/m.db", "m", tmp_path, state_dir) == tmp_path / "vol" / "x" / "m.db"
    assert (
        resolve_state_path(str(tmp_path / "abs.db"), "m", tmp_path, state_dir)
        == tmp_path / "abs.db"
    )


def test_every_run_logs_the_absolute_state_path(make_sandbox, tmp_path, clock, capsys):
    from loopsync import logs

    sb = make_sandbox("shiphero")
    cfg = sb.merchant_config(tmp_path)
    logs.configure(json_output=True, level="info")
    sb.run_cycle(cfg)
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    said = [line for line in lines if line.get("event") == "state"]
    assert said and said[0]["path"] == str(cfg.state_path) and cfg.state_path.is_absolute()


def test_shiphero_two_orders_that_both_fit_the_return_are_reported_not_guessed(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("shiphero")
    raw = make_return(
        rng=sb.rng,
        return_id=62001,
        state="open",
        updated_at=clock.now(),
        order_name="#7001",
        provider_order_id="",
    )
    sb.add_return(raw)  # one order #7001 with the return's SKUs
    units = {str(li["sku"]): 1 for li in raw["line_items"]}
    sb.warehouse.add_order(
        order_number="#7001", partner_order_id=None, units_by_sku=units, email=None
    )  # another shop's order with the same number and SKUs
    cfg = sb.merchant_config(tmp_path)
    result = cycle(sb, cfg, clock)
    assert result.needs_attention and result.counts.pushed == 0
    assert sb.warehouse.rma_count("62001") == 0
    row = Store(cfg.state_path, clock).returns.get("62001")
    assert row.stage == "reported" and "#7001" in row.reason


def test_xoro_several_asns_for_one_return_are_reported_for_a_person(make_sandbox, tmp_path, clock):
    sb = make_sandbox("xoro")
    now = clock.now()
    old = make_return(
        rng=sb.rng,
        return_id=63001,
        state="closed",
        updated_at=now,
        order_name="#5002",
        order_number="5002",
    )
    new = make_return(
        rng=sb.rng,
        return_id=63002,
        state="open",
        updated_at=now,
        order_name="#5002",
        order_number="5002",
    )
    sb.warehouse.on_loop_return(old)  # an ASN of an earlier return of the order
    sb.add_return(new)
    cfg = sb.merchant_config(tmp_path, warehouse_extra={"match_by": "order_number"})
    result = cycle(sb, cfg, clock)
    assert result.needs_attention
    row = Store(cfg.state_path, clock).returns.get("63002")
    assert row.stage == "reported" and "several Xoro ASNs" in row.reason


def test_lost_state_while_loop_still_queues_the_process_does_not_process_twice(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("shiphero")
    sb.loop.process_delay_seconds = 300  # Loop works through its queue in 5 minutes
    (rid,) = open_returns(sb, 1)
    cfg = sb.merchant_config(tmp_path)
    cycle(sb, cfg, clock)
    sb.warehouse.receive(rid, "full")
    cycle(sb, cfg, clock)
    assert sb.loop.actions_for(rid) == ["process"]  # queued; the return still says open
    forget_state(cfg)
    cycle(sb, cfg, clock)  # found again, warehouse complete, Loop still open
    cycle(sb, cfg, clock, seconds=11 * 60)
    cycle(sb, cfg, clock)
    assert sb.loop.actions_for(rid) == ["process"], "processed twice after lost state"
    assert sb.warehouse.rma_count(rid) == 1 and len(sb.loop.notes_for(rid)) == 1


def test_generic_http_3pl_without_a_lookup_gets_each_rma_once_by_its_number(
    make_sandbox, tmp_path, clock
):
    """A 3PL with no GET {rma_url}/{n} (405) still gets every RMA, and after lost state
    the repeated POST is answered by the idempotency contract (409 with the record): one
    RMA per number at the 3PL, one note in Loop."""
    sb = make_sandbox("generic")
    ids = open_returns(sb, 2)
    no_lookup = Fault("status", status=405, body={"error": "method not allowed"})
    sb.warehouse.faults.inject(
        no_lookup, times=10**6, when=lambda r: r.method == "GET" and "/rmas/" in r.path
    )
    cfg = sb.merchant_config(tmp_path)
    assert cycle(sb, cfg, clock).counts.pushed == 2
    forget_state(cfg)
    again = cycle(sb, cfg, clock)
    assert again.ok, again.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)
    assert all(len(sb.loop.notes_for(rid)) == 1 for rid in ids)
