"""ShipHeroConnector against the emulated ShipHero over real HTTP on 127.0.0.1.
The connector and the emulator share one FakeClock, so credit waits cost no real time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests

from loopsync.configkit import Section
from loopsync.connectors.base import ConnectorContext, NotReady, PushRequest, WarehouseSettings
from loopsync.rules import GradingRules, StatusRules, normalize_status
from loopsync.connectors.shiphero import ShipHeroConnector
from loopsync.errors import ErrorBody, OutcomeUnknown, Rejected
from loopsync.http import RetryPolicy
from loopsync.models import LoopReturn, RmaRef
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import ApiServer, Fault, Recorder
from loopsync.sandbox.shiphero import WAREHOUSES, CreditMeter, ShipHeroEmulator
from loopsync.testing import FakeClock


class World:
    def __init__(self, clock: FakeClock, emulator: ShipHeroEmulator, url: str) -> None:
        self.clock = clock
        self.emu = emulator
        self.url = url
        self.config = emulator.warehouse_config(url)

    def connector(self, *, poll_batch: int = 50, **keys: Any) -> ShipHeroConnector:
        section = Section(
            {"refresh_token": self.config["refresh_token"], **keys},
            file="sandbox.yaml",
            path="warehouse",
            env=self.emu.secret_env(),
        )
        settings = WarehouseSettings(
            kind="shiphero",
            base_url=self.url,
            destinations=self.config["destinations"],
            statuses=StatusRules.build(**ShipHeroConnector.default_statuses),
            grading=GradingRules(),
            order_wait=timedelta(days=2),
            poll_batch=poll_batch,
            timeout=5.0,
            connector=ShipHeroConnector.parse_settings(section),
        )
        ctx = ConnectorContext(
            merchant="sandbox",
            clock=self.clock,
            policy=RetryPolicy(attempts=4, base=0.01, cap=0.05),
        )
        return ShipHeroConnector(settings, ctx)

    def loop_returns(
        self, n: int, first_id: int = 9001, *, with_order: bool = True, **overrides: Any
    ) -> list[LoopReturn]:
        out = []
        for rid in range(first_id, first_id + n):
            raw = make_return(return_id=rid, units=2 + rid % 2, **overrides)
            self.emu.on_loop_return(raw, with_order=with_order)
            out.append(LoopReturn.from_api(raw))
        return out

    def request(self, ret: LoopReturn) -> PushRequest:
        return PushRequest(ret=ret, destination=self.config["destinations"][ret.destination_id])

    def push(self, connector: ShipHeroConnector, rets: list[LoopReturn]) -> list[RmaRef]:
        refs = []
        for ret in rets:
            req = self.request(ret)
            refs.append(connector.create_rma(req, connector.locate(req)))
        return refs

    def mutations(self) -> list[Any]:
        assert self.emu.recorder is not None
        return self.emu.recorder.calls("shiphero", path="/graphql", writes=True)

    def graphql_calls(self) -> list[Any]:
        assert self.emu.recorder is not None
        return self.emu.recorder.calls("shiphero", path="/graphql")


@pytest.fixture
def world(clock):
    emulator = ShipHeroEmulator(clock)
    emulator.recorder = Recorder()
    server = ApiServer(emulator).start()
    yield World(clock, emulator, server.url)
    server.stop()


def test_create_poll_and_receive_every_scenario(world):
    connector = world.connector()
    rets = world.loop_returns(5)
    refs = world.push(connector, rets)
    assert len(world.mutations()) == 5 and len(world.graphql_calls()) == 10
    assert all(world.emu.rma_count(r.id) == 1 for r in rets)

    pending = connector.poll(refs)
    assert {s.status for s in pending.statuses.values()} == {"pending"}
    assert [s.expected_units for s in pending.statuses.values()] == [r.expected_units for r in rets]

    scenarios = dict(
        zip((r.id for r in rets), ("full", "short", "over", "damaged", "cancelled"), strict=True)
    )
    for rid, scenario in scenarios.items():
        assert world.emu.receive(rid, scenario)
    result = connector.poll(refs)
    assert not result.errors
    by_scenario = {scenarios[rid]: status for rid, status in result.statuses.items()}
    assert {name: normalize_status(s.status) for name, s in by_scenario.items()} == {
        "full": "warehouse complete",
        "short": "warehouse complete",
        "over": "warehouse complete",
        "damaged": "damaged",
        "cancelled": "rts",
    }
    assert len({by_scenario[n].status for n in ("full", "short", "over")}) == 3  # spellings
    received = {name: s.received_units - s.expected_units for name, s in by_scenario.items()}
    assert (received["full"], received["short"], received["over"]) == (0, -1, 1)
    assert by_scenario["cancelled"].received_units == 0
    assert "damaged" in {item.condition for item in by_scenario["damaged"].items}
    assert connector.rma_label(refs[0]).startswith("ShipHero return 33943")


def test_lost_create_answer_is_found_instead_of_created_twice(world):
    connector = world.connector()
    (ret,) = world.loop_returns(1)
    req = world.request(ret)
    located = connector.locate(req)
    assert connector.find_rma(req, located) is None
    world.emu.faults.inject(Fault("reset_after"), when=world.emu.is_write)
    with pytest.raises(OutcomeUnknown):
        connector.create_rma(req, located)
    found = connector.find_rma(req, located)
    assert found is not None and found.return_id == ret.id
    assert world.emu.rma_count(ret.id) == 1 and len(world.mutations()) == 1


def test_order_number_fallback_and_order_not_there_yet(world):
    connector = world.connector()
    (late,) = world.loop_returns(1, 9101, with_order=False)
    with pytest.raises(NotReady, match="not found in ShipHero"):
        connector.locate(world.request(late))
    # The shop's order sync left partner_order_id empty: found by order number instead.
    world.emu.add_order(
        order_number=late.order_name, partner_order_id=None, units_by_sku=late.units_by_sku()
    )
    located = connector.locate(world.request(late))
    assert located["order_number"] == late.order_name
    assert set(located["skus"]) == set(late.units_by_sku())


def test_a_sku_not_on_the_order_is_rejected_by_the_mutation(world):
    connector = world.connector()
    (ret,) = world.loop_returns(1)
    located = connector.locate(world.request(ret))
    extra = LoopReturn.from_api(
        {
            **ret.raw,
            "line_items": [*ret.raw["line_items"], {"line_item_id": "x1", "sku": "NOT-ON-ORDER"}],
        }
    )
    with pytest.raises(Rejected, match="SKU NOT-ON-ORDER is not on order"):
        connector.create_rma(world.request(extra), located)
    assert world.emu.rma_count(ret.id) == 0


def post_graphql(
    world: World, query: str, variables: dict[str, Any] | None = None, token: str | None = None
) -> requests.Response:
    if token is None:
        token = requests.post(
            f"{world.url}/auth/refresh", timeout=5, json={"refresh_token": world.emu.refresh_token}
        ).json()["access_token"]
    return requests.post(
        f"{world.url}/graphql",
        timeout=5,
        headers={"Authorization": f"Bearer {token}"},
        json={"query": query, "variables": variables or {}},
    )


def return_input(**changes: Any) -> dict[str, Any]:
    """A valid CreateReturnInput with `changes` applied (None drops a field)."""
    data = {
        "order_id": "T3JkZXI6MQ==",
        "warehouse_id": next(iter(WAREHOUSES)),
        "return_reason": "Too small",
        "label_type": "SELF_RETURN",
        "label_cost": "0.00",
        "address": {"name": "Pat"},
        "dimensions": {"weight": "0"},
        "shipping_carrier": "USPS",
        "shipping_method": "USPS",
        "line_items": [{"sku": "A", "quantity": 1, "return_reason": "Too small"}],
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


CREATE = "mutation ($data: CreateReturnInput!) { return_create(data: $data) { return { id } } }"


@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        (
            "{ orders(first: 10) { data { edges { node { id } } } } }",
            None,
            "Unknown argument 'first' on field 'Query.orders'",
        ),
        (CREATE, {"data": return_input(label_type="PREPAID")}, "ReturnLabelType"),
        (CREATE, {"data": return_input(warehouse_id=None)}, "warehouse_id"),
    ],
    ids=["first-on-root-field", "unknown-label-type", "missing-required-field"],
)
def test_the_emulator_refuses_what_the_schema_refuses(world, query, variables, expected):
    body = post_graphql(world, query, variables).json()
    assert "data" not in body or body["data"] is None
    assert expected in body["errors"][0]["message"]
    assert not world.emu.returns


def test_unknown_or_expired_tokens_get_401_and_the_connector_refreshes(world):
    assert (
        post_graphql(world, "{ user_quota { credits_remaining } }", token="forged").status_code
        == 401
    )
    connector = world.connector()
    rets = world.loop_returns(2)
    refs = world.push(connector, rets[:1])
    world.emu.expire_tokens()
    refs += world.push(connector, rets[1:])
    assert len(connector.poll(refs).statuses) == 2
    assert world.emu.recorder is not None
    assert len(world.emu.recorder.calls("shiphero", path="/auth/refresh")) == 2


def test_throttled_when_credits_run_out(world):
    world.emu.credits_enabled = False
    refs = world.push(world.connector(), world.loop_returns(50))
    world.clock.advance(120)  # the account's shared bucket refills from the pushes
    # ShipHero's bucket is smaller than the connector believes (default 1001).
    world.emu.credits = CreditMeter(world.clock, capacity=120, per_second=15)
    world.clock.slept.clear()
    result = world.connector(poll_batch=25).poll(refs)  # two queries of 100 credits
    assert len(result.statuses) == 50
    assert world.emu.credits.throttled == 1
    assert [s for s in world.clock.slept if s >= 1] == [pytest.approx(6, abs=0.3)]  # 80/15


@pytest.mark.parametrize("status", [200, 429])
def test_scripted_throttle_answers_are_retried(world, status):
    connector = world.connector()
    (ret,) = world.loop_returns(1)
    world.emu.faults.inject(
        world.emu.throttle_fault(status=status, seconds=3), when=lambda req: req.path == "/graphql"
    )
    world.clock.slept.clear()
    assert connector.locate(world.request(ret))["skus"]
    assert world.emu.faults.injected == ["custom"]
    if status == 200:  # time_remaining honoured; a bare 429 backs off instead
        assert any(3 <= s <= 3.3 for s in world.clock.slept), world.clock.slept
    assert len(world.graphql_calls()) == 2


def test_polling_500_rmas_is_batched_and_never_overdraws_credits(world):
    world.emu.credits_enabled = False
    refs = world.push(world.connector(), world.loop_returns(500, 20001))
    # Account without refusing, so the lowest balance shows any overdraft.
    world.emu.credits = CreditMeter(world.clock, enforce=False)
    world.emu.recorder.clear()
    world.clock.slept.clear()
    result = world.connector().poll(refs)  # default settings
    assert len(result.statuses) == 500 and not result.errors
    assert len(world.graphql_calls()) <= 500 // 25
    assert world.emu.credits.min_balance >= 0, world.emu.credits.peak_debt
    assert world.emu.credits.spent > world.emu.credits.capacity  # so pacing was needed
    assert sum(world.clock.slept) > 0


def test_complexity_follows_page_sizes_and_is_charged(world):
    body = post_graphql(
        world, "{ orders { complexity data(first: 100) { edges { node { id } } } } }"
    ).json()
    assert body["data"]["orders"]["complexity"] == 101  # ShipHero's own example
    quota = post_graphql(world, "{ user_quota { credits_remaining max_available } }").json()
    assert quota["data"]["user_quota"] == {
        "credits_remaining": 1001 - 101 - 1,
        "max_available": 1001,
    }


def test_credit_meter_refuses_or_records_an_overdraft(clock):
    lenient = CreditMeter(clock, capacity=100, per_second=10, enforce=False)
    assert lenient.try_spend(80) and lenient.try_spend(50)
    assert (lenient.min_balance, lenient.peak_debt) == (-30, 30)
    clock.advance(2)
    assert lenient.balance() == pytest.approx(-10)
    strict = CreditMeter(clock, capacity=100, per_second=10)
    assert strict.try_spend(80) and not strict.try_spend(50)
    assert (strict.throttled, strict.seconds_until(50)) == (1, 3)


def test_find_rma_pages_through_the_returns_of_a_busy_order(world):
    connector = world.connector()
    rets = world.loop_returns(30, 9201, provider_order_id="7770001", order_name="#7770")
    world.push(connector, rets)
    assert len(world.emu.orders) == 1
    world.emu.recorder.clear()
    last = world.request(rets[-1])
    found = connector.find_rma(last, connector.locate(last))
    assert found is not None and found.return_id == rets[-1].id
    pages = [
        c.json()["variables"]["after"]
        for c in world.graphql_calls()
        if "LoopsyncReturns" in c.json()["query"]
    ]
    from loopsync.connectors.shiphero.wire import RETURNS_PAGE_SIZE

    assert len(pages) == -(-30 // RETURNS_PAGE_SIZE) and pages[0] is None and all(pages[1:])


def test_a_generic_graphql_error_is_an_error_body(world):
    connector = world.connector()
    (ret,) = world.loop_returns(1)
    world.emu.faults.inject(
        world.emu.graphql_error_fault("Internal server error"),
        when=lambda req: req.path == "/graphql",
    )
    with pytest.raises(ErrorBody, match="Internal server error"):
        connector.locate(world.request(ret))


def test_set_status_takes_custom_words_and_partial_counts(world):
    connector = world.connector()
    (ret,) = world.loop_returns(1, 9301)
    (ref,) = world.push(connector, [ret])
    first_sku = next(iter(ret.units_by_sku()))
    assert not world.emu.set_status("no-such-return", "Issue")
    assert world.emu.set_status(ret.id, "Issue", received={first_sku: 1})
    status = connector.poll([ref]).statuses[ret.id]
    assert (status.status, status.received_units) == ("Issue", 1)


def test_password_grant_issues_tokens(world):
    url = f"{world.url}/auth/token"
    wrong = requests.post(url, json={"username": world.emu.username, "password": "nope"}, timeout=5)
    assert wrong.status_code == 403
    good = requests.post(
        url, json={"username": world.emu.username, "password": world.emu.password}, timeout=5
    ).json()
    assert good["expires_in"] == 2419200 and good["refresh_token"]
    quota = post_graphql(world, "{ user_quota { max_available } }", token=good["access_token"])
    assert quota.json()["data"]["user_quota"]["max_available"] == 1001
