"""Red team on the batched ShipHero look-ups: a batch answer is used only for what it
proves. An alias whose nodes name another key than the one asked (aliases swapped or
renamed by a proxy, a filter the server ignored) settles nothing in its document, so no
RMA lands on another order and no lost RMA is missed (a second RMA). The emulated
ShipHero on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors.base import NotReady
from loopsync.connectors.shiphero.mapping import answers_for_others, order_named
from loopsync.connectors.shiphero.wire import CreditBucket
from loopsync.models import LoopReturn
from loopsync.sandbox.shiphero import _order_view
from loopsync.testing import FakeClock
from tests.test_poison_parsers import any_json
from tests.test_shiphero_batch import push_all, rewrite, world

__all__ = ["world"]


def swap(first: str, second: str) -> Any:
    def change(body: dict[str, Any]) -> None:
        data = body["data"]
        data[first], data[second] = data[second], data[first]

    return change


def order_of_rma(world: Any, ret: LoopReturn) -> str:
    (made,) = world.emu._returns_for(ret.id)
    return str(made.order.partner_order_id)


def test_swapped_order_aliases_put_no_rma_on_another_order(world):
    rets = world.loop_returns(3)
    rewrite(world, "LoopsyncOrdersBatch", swap("a0", "a1"))
    push_all(world, rets)
    for ret in rets:
        assert world.emu.rma_count(ret.id) == 1
        assert order_of_rma(world, ret) == ret.provider_order_id


def test_swapped_returns_aliases_never_hide_an_existing_rma(world):
    rets = world.loop_returns(3)
    made = world.push(world.connector(), rets[:1])  # an RMA the lost state forgot
    assert made and world.emu.rma_count(rets[0].id) == 1
    rewrite(world, "LoopsyncReturnsBatch", swap("a0", "a1"))
    rewrite(world, "LoopsyncReturnsBatch", swap("a0", "a2"))
    push_all(world, rets)
    assert [world.emu.rma_count(r.id) for r in rets] == [1, 1, 1]


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=4).map(str.strip).filter(bool), max_size=4),
    data=st.data(),
)
def test_a_batch_answer_proves_its_aliases_only_when_every_node_names_its_key(keys, data):
    settled = {
        i: data.draw(st.lists(st.one_of(any_json, st.fixed_dictionaries({"k": any_json}))))
        for i in range(len(keys))
    }
    mismatched = answers_for_others(settled, keys, "k")  # total on any answer
    named = all(
        isinstance(node, dict)
        and type(node.get("k")) in (str, int)
        and str(node["k"]).strip() == keys[i]
        for i, nodes in settled.items()
        for node in nodes
    )
    assert mismatched is not named or not any(settled.values())
    own = {i: [{"k": key, "id": i}] for i, key in enumerate(keys)}
    assert not answers_for_others(own, keys, "k")
    if len(keys) > 1 and keys[0] != keys[1]:
        assert answers_for_others({0: own[1], 1: own[0]}, keys, "k")  # swapped aliases


@pytest.mark.parametrize("real_order_too", [True, False])
def test_an_order_look_up_whose_filter_the_server_ignores_uses_no_other_order(
    world, real_order_too
):
    rets = world.loop_returns(2)
    other = world.loop_returns(1, first_id=9500)[0]
    (order,) = [
        o for o in world.emu.orders.values() if o.partner_order_id == other.provider_order_id
    ]
    rewrite(world, "LoopsyncOrdersBatch", lambda body: body["data"].pop("a0"))

    def ignored_filter(body: dict[str, Any]) -> None:
        # Another customer's order first, holding every SKU of the return asked for.
        node = _order_view(order)
        skus = sorted({sku for ret in rets for sku in ret.units_by_sku()})
        node["line_items"] = {
            "pageInfo": {"hasNextPage": False, "endCursor": None},
            "edges": [{"node": {"sku": sku}} for sku in skus],
        }
        edges = body["data"]["orders"]["data"]["edges"]
        edges[:] = [{"node": node}, *(edges if real_order_too else [])]

    rewrite(world, "query LoopsyncOrders(", ignored_filter)
    connector = world.connector()
    connector.prepare([world.request(r) for r in rets])
    for ret in rets:
        req = world.request(ret)
        if not real_order_too and ret is rets[0]:
            with pytest.raises(NotReady):  # waits for its order; no RMA on another's
                connector.locate(req)
            assert world.emu.rma_count(ret.id) == 0
            continue
        located = connector.locate(req)
        if connector.find_rma(req, located) is None:
            connector.create_rma(req, located)
        assert world.emu.rma_count(ret.id) == 1
        assert order_of_rma(world, ret) == ret.provider_order_id


@settings(max_examples=100, deadline=None)
@given(node=any_json, value=st.text(max_size=8))
def test_an_order_is_named_only_by_the_value_asked_for(node, value):
    for field in ("partner_order_id", "order_number"):
        named = order_named(node, field, value)  # total on any answer
        assert not named or (isinstance(node, dict) and field in node)
    assert order_named({"order_number": " #A1 "}, "order_number", "a1")
    assert not order_named({"partner_order_id": "91"}, "partner_order_id", "9")
    assert order_named({"shop_name": "Shop.myshopify.com"}, "shop_name", "shop.MYSHOPIFY.com")


@settings(max_examples=100, deadline=None)
@given(
    actual=st.floats(min_value=0, max_value=1e300),
    remaining=st.floats(min_value=-1e300, max_value=1e300),
)
def test_a_hostile_credit_figure_never_holds_the_worker_past_one_full_bucket(actual, remaining):
    clock = FakeClock("2026-05-01T00:00:00Z")
    bucket = CreditBucket(1001, 15.0, clock)
    bucket.correct(10, actual)  # ShipHero says a batch cost this much
    assert bucket.take(500) <= 2 * 1001 / 15.0 + 1
    bucket.throttled(remaining, 500)  # ... or that this much is left
    assert bucket.take(500) <= 2 * 1001 / 15.0 + 1


def test_swapped_poll_aliases_never_give_a_return_another_rmas_status(world):
    rets = world.loop_returns(2)
    refs = world.push(world.connector(), rets)
    assert world.emu.receive(rets[0].id, "full")

    def swapped_anonymous(body: dict[str, Any]) -> None:
        data = body["data"]
        data["r0"], data["r1"] = data["r1"], data["r0"]
        for entry in data.values():
            entry["data"]["partner_id"] = None  # nothing left to tell them apart by...

    rewrite(world, "LoopsyncPoll", swapped_anonymous)
    result = world.connector().poll(refs)
    for ref in refs:  # ... but the RMA id each alias asked for
        status = result.statuses.get(ref.return_id)
        assert status is None or status.rma_id == ref.rma_id
    assert set(result.errors) == {r.id for r in rets}


@pytest.mark.parametrize("batched", [True, False])
def test_an_order_of_another_shop_is_not_used_when_shop_name_is_set(world, batched):
    (ret,) = world.loop_returns(1)
    if not batched:
        rewrite(world, "LoopsyncOrdersBatch", lambda body: body["data"].pop("a0"))

    def other_shop(body: dict[str, Any]) -> None:
        # The filter ignored: the order of the same partner_order_id in another shop.
        for entry in body["data"].values():
            for edge in entry["data"]["edges"]:
                edge["node"]["shop_name"] = "someone-else.myshopify.com"

    rewrite(world, "LoopsyncOrders", other_shop)
    connector = world.connector(shop_name=world.emu.shop_name)
    req = world.request(ret)
    connector.prepare([req])
    with pytest.raises(NotReady):  # its own shop's order is not there: it waits
        connector.locate(req)
    assert world.emu.rma_count(ret.id) == 0
