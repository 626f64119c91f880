"""Batched ShipHero look-ups (`ShipHeroConnector.prepare`): many orders, and many orders'
returns, per aliased GraphQL document, against the emulated ShipHero on 127.0.0.1; and
the pure reader of a batch answer under hostile input."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors.base import PREPARED_FOR, NotReady
from loopsync.connectors.shiphero.mapping import settled_aliases
from loopsync.cycle import Engine
from loopsync.effects import create_rma_key
from loopsync.models import LoopReturn
from loopsync.runner import build_connector, build_loop_client, new_run_id
from loopsync.sandbox.server import (
    ApiServer,
    Fault,
    Recorder,
    Request,
    Response,
    json_response,
)
from loopsync.sandbox.shiphero import ShipHeroEmulator
from loopsync.stages import push as push_stage
from loopsync.state import EffectKind, Store
from loopsync.testing import FakeClock, Sandbox
from tests.test_poison_parsers import any_json
from tests.test_sandbox_shiphero import World, post_graphql


@pytest.fixture
def world(clock: FakeClock) -> Iterator[World]:
    emulator = ShipHeroEmulator(clock)
    emulator.recorder = Recorder()
    server = ApiServer(emulator).start()
    yield World(clock, emulator, server.url)
    server.stop()


def rewrite(world: World, document: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Pass the emulator's answers to `document` (an operation name) through `change`."""
    handle = world.emu.handle

    def rewritten(req: Request) -> Response:
        resp = handle(req)
        if document.encode() not in req.body:
            return resp
        body = json.loads(resp.body)
        change(body)
        return json_response(body, resp.status)

    world.emu.handle = rewritten  # type: ignore[method-assign]  # a test's wiretap


def push_all(world: World, rets: list[LoopReturn]) -> int:
    """prepare, then locate / find_rma / create each as the push stage does; the
    GraphQL requests that took."""
    connector = world.connector()
    before = len(world.graphql_calls())
    connector.prepare([world.request(r) for r in rets])
    for ret in rets:
        req = world.request(ret)
        located = connector.locate(req)
        if connector.find_rma(req, located) is None:
            connector.create_rma(req, located)
    return len(world.graphql_calls()) - before


def test_fifty_returns_cost_two_lookup_requests_and_one_create_each(world):
    rets = world.loop_returns(50)
    assert push_all(world, rets) == 2 + 50
    assert all(world.emu.rma_count(r.id) == 1 for r in rets)
    spent = world.emu.credits.spent_by
    # Each alias is charged on its own: an order (1 + order, address, 5 lines) and a
    # page of 2 returns (1 + 2).
    assert spent["orders"] == 50 * 8 and spent["returns"] == 50 * 3
    assert spent["return_create"] == 50 * 2


def test_a_batch_with_a_missing_order_settles_the_others(world):
    rets = world.loop_returns(4) + world.loop_returns(1, first_id=9100, with_order=False)
    connector = world.connector()
    connector.prepare([world.request(r) for r in rets])
    before = len(world.graphql_calls())
    for ret in rets[:4]:
        req = world.request(ret)
        assert connector.find_rma(req, connector.locate(req)) is None
    assert len(world.graphql_calls()) == before  # all four answered by the batch
    with pytest.raises(NotReady, match="not found in ShipHero"):
        connector.locate(world.request(rets[4]))  # the order number is tried alone


def test_an_alias_the_server_drops_is_looked_up_alone(world):
    rets = world.loop_returns(3)
    rewrite(world, "LoopsyncOrdersBatch", lambda body: body["data"].pop("a1"))
    rewrite(world, "LoopsyncReturnsBatch", lambda body: body["data"].pop("a0"))
    # 2 batches; the dropped order looked up alone, and its returns (never batched);
    # the returns of the order whose alias was dropped; 3 creates.
    assert push_all(world, rets) == 2 + 2 + 1 + 3
    assert all(world.emu.rma_count(r.id) == 1 for r in rets)


def test_a_batch_answer_cut_short_or_erred_is_looked_up_alone(world):
    rets = world.loop_returns(3)

    def cut(body: dict[str, Any]) -> None:
        del body["data"]["a0"]["data"]["pageInfo"]  # cannot tell the page is complete
        body["data"]["a2"]["data"]["pageInfo"]["hasNextPage"] = True

    def erred(body: dict[str, Any]) -> None:
        body["data"]["a0"] = None
        body["errors"] = [{"message": "Internal error", "path": ["a0"]}]

    rewrite(world, "LoopsyncOrdersBatch", cut)
    rewrite(world, "LoopsyncReturnsBatch", erred)
    # Only the one settled order reaches the returns batch, and its alias errs: 2 orders
    # and 3 returns look-ups alone, then 3 creates.
    assert push_all(world, rets) == 2 + 2 + 3 + 3
    assert all(world.emu.rma_count(r.id) == 1 for r in rets)


def test_an_existing_rma_in_a_batch_answer_is_linked_not_created_again(world):
    rets = world.loop_returns(3)
    connector = world.connector()
    made = world.push(connector, rets[:1])[0]  # an RMA the lost state forgot
    fresh = world.connector()
    fresh.prepare([world.request(r) for r in rets])
    req = world.request(rets[0])
    found = fresh.find_rma(req, fresh.locate(req))
    assert found is not None and found.rma_id == made.rma_id
    assert world.emu.rma_count(rets[0].id) == 1


def test_a_prepared_answer_serves_once_and_only_while_fresh(world, clock):
    rets = world.loop_returns(2)
    connector = world.connector()
    connector.prepare([world.request(r) for r in rets])
    before = len(world.graphql_calls())
    connector.locate(world.request(rets[0]))
    connector.locate(world.request(rets[0]))  # used once: this one asks ShipHero
    assert len(world.graphql_calls()) == before + 1
    clock.advance(PREPARED_FOR + 1)
    connector.locate(world.request(rets[1]))  # too old to trust
    assert len(world.graphql_calls()) == before + 2


def test_a_small_credit_bucket_gets_smaller_batches(world):
    rets = world.loop_returns(10)
    connector = world.connector(credits_max=40)
    connector.prepare([world.request(r) for r in rets])
    batches = [c for c in world.graphql_calls() if b"LoopsyncOrdersBatch" in c.body]
    assert len(batches) == 5  # 2 orders of 8 credits each: at most half the bucket


def test_the_emulator_charges_every_alias(world):
    one = "orders(partner_order_id: $p) { complexity data(first: 1) { edges { node { id } } } }"
    fields = " ".join(f"o{i}: {one}" for i in range(3))
    body = post_graphql(world, f"query ($p: String) {{ {fields} }}", {"p": "x"}).json()
    assert [body["data"][f"o{i}"]["complexity"] for i in range(3)] == [2, 2, 2]
    assert world.emu.credits.spent_by["orders"] == 6


def test_the_push_stage_never_prepares_a_return_with_a_create_intent(tmp_path: Path):
    """A lost create is looked up afresh by its own find_rma, never from a batch read
    before it could have landed."""
    with Sandbox("shiphero", clock=FakeClock()) as sb:
        ids = [str(r["id"]) for r in sb.seed(3, days=1, states_weights=[("open", 1)])]
        cfg = sb.merchant_config(tmp_path)
        store = Store(cfg.state_path, sb.clock)
        connector = build_connector(cfg, sb.clock, store, stop=threading.Event())
        loop = build_loop_client(cfg, sb.clock)
        engine = Engine(cfg, store, loop, connector, clock=sb.clock, run_id=new_run_id())
        try:
            engine.ingest()
            store.ledger.plan(create_rma_key(ids[0]), ids[0], EffectKind.CREATE_RMA)
            seen: list[str] = []
            connector.prepare = lambda reqs: seen.extend(r.ret.id for r in reqs)  # type: ignore[method-assign]  # a spy
            push_stage.prepare(engine.ctx, ids)
        finally:
            connector.close()
            store.close()
    assert sorted(seen) == sorted(ids[1:])


def test_a_batch_refused_whole_only_costs_requests(tmp_path: Path):
    """A batch document ShipHero refuses (too complex, an outage of that query) leaves
    every return to its own look-up: each pushed once, the cycle clean."""
    with Sandbox("shiphero", clock=FakeClock()) as sb:
        ids = [str(r["id"]) for r in sb.seed(5, days=1, states_weights=[("open", 1)])]
        refused = json_response({"data": None, "errors": [{"message": "Query too complex"}]})
        sb.warehouse.faults.inject(
            Fault("custom", response=lambda req: refused),
            times=10**6,
            when=lambda req: b"LoopsyncOrdersBatch" in req.body,
        )
        result = sb.run_cycle(sb.merchant_config(tmp_path))
        assert result.ok and result.counts.pushed == 5
        assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)
        assert any(c.fault for c in sb.recorder.calls("shiphero"))  # the batch was refused


# -- the pure reader, hostile answers ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=any_json, count=st.integers(min_value=0, max_value=5))
def test_a_hostile_batch_answer_settles_only_what_it_proves(body, count):
    settled = settled_aliases(body, "o", count)
    assert set(settled) <= set(range(count))
    assert all(isinstance(nodes, list) for nodes in settled.values())


def alias(nodes: Any, page: Any) -> Any:
    return {"complexity": 8, "data": {"pageInfo": page, "edges": nodes}}


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.one_of(
            any_json,
            st.builds(alias, st.lists(st.fixed_dictionaries({"node": any_json})), any_json),
            st.builds(
                alias,
                st.lists(st.fixed_dictionaries({"node": any_json})),
                st.fixed_dictionaries({"hasNextPage": st.booleans()}),
            ),
        ),
        max_size=4,
    ),
    errors=any_json,
)
def test_an_alias_settles_only_on_a_complete_page_without_an_error(entries, errors):
    body = {"data": {f"o{i}": entry for i, entry in enumerate(entries)}, "errors": errors}
    settled = settled_aliases(body, "o", len(entries))
    erred = {
        e["path"][0]
        for e in (errors if isinstance(errors, list) else [errors])
        if isinstance(e, dict) and isinstance(e.get("path"), list) and e["path"]
    }
    for i in settled:
        entry = entries[i]
        assert f"o{i}" not in erred
        assert entry["data"]["pageInfo"]["hasNextPage"] is False
        assert settled[i] == [e["node"] for e in entry["data"]["edges"] if e["node"] is not None]
