"""ShipHeroConnector against scripted HTTP answers (`responses`, no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
import responses

from loopsync.configkit import Section
from loopsync.connectors.base import ConnectorContext, NotReady, PushRequest, WarehouseSettings
from loopsync.rules import GradingRules, StatusRules
from loopsync.connectors.shiphero import CreditBucket, ShipHeroConnector
from loopsync.errors import AuthError, ConfigError, OutcomeUnknown, Rejected
from loopsync.http import RetryPolicy
from loopsync.models import LoopReturn, RmaRef
from loopsync.testing import FakeClock

BASE = "https://shiphero.test"
WAREHOUSE = "V2FyZWhvdXNlOjExNzk="
ORDER_ID = "T3JkZXI6NTAwMDAwMDAx"
ENV = {"SHIPHERO_REFRESH_TOKEN": "refresh-secret", "SHIPHERO_ACCESS_TOKEN": "static-token"}

Answer = dict[str, Any] | tuple[int, dict[str, Any]] | Callable[[dict[str, Any]], Any]


class GraphQL:
    """Answers POST /graphql from a queue of answers; keeps every request it saw."""

    def __init__(self, rsps: responses.RequestsMock, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[requests.PreparedRequest] = []
        rsps.add_callback(responses.POST, f"{BASE}/graphql", callback=self._answer)

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests]

    def _answer(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if callable(answer):
            answer = answer(json.loads(request.body))
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return status, {"Content-Type": "application/json"}, json.dumps(body)


def token_endpoint(rsps: responses.RequestsMock) -> list[str]:
    """/auth/refresh hands out at-1, at-2, ...; returns the list of tokens issued."""
    issued: list[str] = []

    def refresh(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert json.loads(request.body) == {"refresh_token": "refresh-secret"}
        issued.append(f"at-{len(issued) + 1}")
        return (
            200,
            {},
            json.dumps({"access_token": issued[-1], "expires_in": 2419200, "token_type": "Bearer"}),
        )

    rsps.add_callback(responses.POST, f"{BASE}/auth/refresh", callback=refresh)
    return issued


def make_connector(
    clock: FakeClock, *, poll_batch: int = 50, token_key: str = "refresh_token", **keys: Any
) -> ShipHeroConnector:
    variable = "SHIPHERO_ACCESS_TOKEN" if token_key == "access_token" else "SHIPHERO_REFRESH_TOKEN"
    raw = {token_key: f"${{{variable}}}", **keys}
    section = Section(raw, file="acme.yaml", path="warehouse", env=ENV)
    settings = ShipHeroConnector.parse_settings(section)
    section.done()
    warehouse = WarehouseSettings(
        kind="shiphero",
        base_url=BASE,
        destinations={"12": WAREHOUSE},
        statuses=StatusRules.build(**ShipHeroConnector.default_statuses),
        grading=GradingRules(),
        order_wait=timedelta(days=2),
        poll_batch=poll_batch,
        timeout=5.0,
        connector=settings,
    )
    ctx = ConnectorContext(
        merchant="acme", clock=clock, policy=RetryPolicy(attempts=3, base=0.01, cap=0.02)
    )
    return ShipHeroConnector(warehouse, ctx)


def loop_return(rid: str = "1001", skus: tuple[str, ...] = ("A", "A", "B")) -> LoopReturn:
    return LoopReturn.from_api(
        {
            "id": rid,
            "state": "open",
            "updated_at": "2026-06-01T00:00:00Z",
            "provider_order_id": "5550001",
            "order_name": "#1001",
            "carrier": "USPS",
            "tracking_number": "9400111",
            "destination_id": "12",
            "line_items": [
                {"line_item_id": str(n), "sku": sku, "return_reason": "Too small" if n == 0 else ""}
                for n, sku in enumerate(skus)
            ],
        }
    )


def order_node(skus: tuple[str, ...] = ("A", "B"), more_lines: bool = False) -> dict[str, Any]:
    return {
        "id": ORDER_ID,
        "legacy_id": 500000001,
        "order_number": "#1001",
        "partner_order_id": "5550001",
        "shop_name": "acme.myshopify.com",
        "shipping_address": {
            "first_name": "Pat",
            "last_name": "Lee",
            "address1": "1 Main St",
            "address2": None,
            "city": "Columbus",
            "state": "OH",
            "country": "US",
            "zip": "43215",
            "phone": "555-0100",
        },
        "line_items": {
            "pageInfo": {"hasNextPage": more_lines, "endCursor": "bGluZXM="},
            "edges": [{"node": {"sku": sku}} for sku in skus],
        },
    }


def connection(
    root: str,
    nodes: list[dict[str, Any]],
    *,
    has_next: bool = False,
    cursor: str | None = None,
    complexity: int = 26,
) -> dict[str, Any]:
    return {
        "data": {
            root: {
                "request_id": "r",
                "complexity": complexity,
                "data": {
                    "pageInfo": {"hasNextPage": has_next, "endCursor": cursor},
                    "edges": [{"node": node, "cursor": f"c{n}"} for n, node in enumerate(nodes)],
                },
            }
        }
    }


def throttle(where: str = "top", seconds: int = 6, remaining: int = 10) -> dict[str, Any]:
    """A code-30 answer with its details at the top level, under `extensions`, or only
    in the message."""
    details = {
        "time_remaining": f"{seconds} seconds",
        "required_credits": 101,
        "remaining_credits": remaining,
    }
    message = "There are not enough credits to perform the requested operation."
    error: dict[str, Any] = {"code": 30, "message": message}
    if where == "top":
        error.update(details)
    elif where == "extensions":
        error = {"message": message, "extensions": {"code": 30, **details}}
    else:
        error["message"] = f"{message} Try again in {seconds} seconds"
    return {"data": {"orders": None}, "errors": [error]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2026-06-01T12:00:00Z")


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def push(ret: LoopReturn | None = None) -> PushRequest:
    return PushRequest(ret=ret or loop_return(), destination=WAREHOUSE)


# -- settings -----------------------------------------------------------------------------


def test_settings_defaults_and_exactly_one_token():
    section = Section(
        {"refresh_token": "${SHIPHERO_REFRESH_TOKEN}"}, file="a.yaml", path="warehouse", env=ENV
    )
    settings = ShipHeroConnector.parse_settings(section)
    assert (settings.label_type, settings.credits_max, settings.credits_per_second) == (
        "SELF_RETURN",
        1001,
        15.0,
    )
    assert "refresh-secret" not in repr(settings)

    with pytest.raises(ConfigError, match=r"warehouse.refresh_token: is required"):
        ShipHeroConnector.parse_settings(Section({}, file="a.yaml", path="warehouse", env=ENV))
    both = {
        "refresh_token": "${SHIPHERO_REFRESH_TOKEN}",
        "access_token": "${SHIPHERO_ACCESS_TOKEN}",
    }
    with pytest.raises(ConfigError, match=r"warehouse.access_token: .*not both"):
        ShipHeroConnector.parse_settings(Section(both, file="a.yaml", path="warehouse", env=ENV))
    bad_label = {"refresh_token": "${SHIPHERO_REFRESH_TOKEN}", "label_type": "PREPAID"}
    with pytest.raises(ConfigError, match="label_type"):
        ShipHeroConnector.parse_settings(
            Section(bad_label, file="a.yaml", path="warehouse", env=ENV)
        )


# -- auth ---------------------------------------------------------------------------------


def test_refreshes_the_token_and_retries_once_on_401(clock, rsps):
    issued = token_endpoint(rsps)
    gql = GraphQL(rsps, (401, {"message": "Unauthorized"}), connection("orders", [order_node()]))
    located = make_connector(clock).locate(push())
    assert located["order_id"] == ORDER_ID
    assert issued == ["at-1", "at-2"]
    assert [r.headers["Authorization"] for r in gql.requests] == ["Bearer at-1", "Bearer at-2"]


def test_a_second_401_after_refresh_is_an_auth_error(clock, rsps):
    token_endpoint(rsps)
    gql = GraphQL(rsps, (401, {"message": "Unauthorized"}), (401, {"message": "Unauthorized"}))
    with pytest.raises(AuthError, match="even after a refresh"):
        make_connector(clock).locate(push())
    assert len(gql.requests) == 2


def test_a_static_access_token_is_not_refreshed(clock, rsps):
    gql = GraphQL(rsps, (401, {"message": "Unauthorized"}))
    with pytest.raises(AuthError, match="configure refresh_token"):
        make_connector(clock, token_key="access_token").locate(push())
    assert gql.requests[0].headers["Authorization"] == "Bearer static-token"
    assert not [c for c in rsps.calls if c.request.url.endswith("/auth/refresh")]


# -- throttling ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "extensions", "message"])
def test_code_30_waits_time_remaining_then_retries(clock, rsps, where):
    token_endpoint(rsps)
    gql = GraphQL(rsps, throttle(where), connection("orders", [order_node()]))
    make_connector(clock).locate(push())
    assert len(gql.requests) == 2
    assert any(6 <= s <= 6.3 for s in clock.slept), clock.slept


def test_a_throttle_answer_resets_the_local_credit_balance(clock, rsps):
    token_endpoint(rsps)
    GraphQL(
        rsps,
        throttle(seconds=1, remaining=0),
        connection("orders", [order_node()]),
        connection("orders", [order_node()]),
    )
    connector = make_connector(clock)
    connector.locate(push())
    clock.slept.clear()
    connector.locate(push())  # ShipHero had 0 left, so this one waits for credits
    assert len(clock.slept) == 1 and 2.2 <= clock.slept[0] <= 2.6, clock.slept


def test_http_429_is_retried(clock, rsps):
    token_endpoint(rsps)
    gql = GraphQL(
        rsps, (429, {"message": "Too Many Attempts."}), connection("orders", [order_node()])
    )
    assert make_connector(clock).locate(push())["order_id"] == ORDER_ID
    assert len(gql.requests) == 2 and clock.slept


def test_credit_bucket_waits_for_what_the_balance_cannot_cover(clock):
    bucket = CreditBucket(100, 10.0, clock)
    assert bucket.take(80) == 0
    assert bucket.take(50) == pytest.approx(3.05)  # 30 short at 10/s, plus margin
    bucket.correct(estimated=50, actual=70)  # the answer cost more: -19.5
    assert bucket.take(10) == pytest.approx(3.0)  # 29.5 short, plus margin
    assert clock.slept == [pytest.approx(3.05), pytest.approx(3.0)]


def test_poll_is_paced_by_the_costs_answers_report(clock, rsps):
    token_endpoint(rsps)

    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "data": {
                f"r{key.removeprefix('id')}": {"complexity": 10, "data": None}
                for key in payload["variables"]
            }
        }

    GraphQL(rsps, answer, answer, answer)
    connector = make_connector(clock, poll_batch=50)
    connector.poll([RmaRef(str(n), f"gid{n}") for n in range(150)])
    # 1st batch: guessed 4/RMA (200), cost 500 -> 501 left; 2nd: 500 -> 1 left;
    # 3rd: must wait for 499 credits at 15/s before sending.
    assert clock.slept == [pytest.approx(499 / 15 + 0.05)]


# -- locate -------------------------------------------------------------------------------


def test_locate_finds_the_order_by_partner_order_id(clock, rsps):
    token_endpoint(rsps)
    gql = GraphQL(rsps, connection("orders", [order_node()]))
    located = make_connector(clock).locate(push())
    assert located == {
        "order_id": ORDER_ID,
        "order_legacy_id": 500000001,
        "order_number": "#1001",
        "skus": ["A", "B"],
        "address": {
            "name": "Pat Lee",
            "address1": "1 Main St",
            "address2": "",
            "city": "Columbus",
            "state": "OH",
            "country": "US",
            "zip": "43215",
            "phone": "555-0100",
        },
    }
    (payload,) = gql.payloads
    assert payload["variables"]["partner_order_id"] == "5550001"
    assert "order_number" not in payload["variables"]
    assert "orders(partner_order_id: $partner_order_id)" in payload["query"]
    assert "data(first: $first, after: $after)" in payload["query"]


def test_locate_falls_back_to_the_order_number(clock, rsps):
    token_endpoint(rsps)
    gql = GraphQL(rsps, connection("orders", []), connection("orders", [order_node()]))
    assert make_connector(clock).locate(push())["order_id"] == ORDER_ID
    assert gql.payloads[1]["variables"]["order_number"] == "#1001"
    assert "partner_order_id" not in gql.payloads[1]["variables"]


def test_locate_without_an_order_is_not_ready(clock, rsps):
    token_endpoint(rsps)
    GraphQL(rsps, connection("orders", []), connection("orders", []))
    with pytest.raises(NotReady, match="order #1001 not found in ShipHero"):
        make_connector(clock).locate(push())


def test_a_sku_missing_from_the_order_is_rejected(clock, rsps):
    token_endpoint(rsps)
    GraphQL(
        rsps,
        connection("orders", [order_node(skus=("A",))]),
        connection("orders", [order_node(skus=("A",))]),
    )
    with pytest.raises(Rejected, match="SKU B not on ShipHero order #1001"):
        make_connector(clock).locate(push())


def test_locate_pages_through_long_orders(clock, rsps):
    token_endpoint(rsps)
    more = {
        "data": {
            "order": {
                "request_id": "r",
                "complexity": 27,
                "data": {
                    "line_items": {
                        "pageInfo": {"hasNextPage": False, "endCursor": None},
                        "edges": [{"node": {"sku": "B"}}],
                    }
                },
            }
        }
    }
    gql = GraphQL(rsps, connection("orders", [order_node(skus=("A",), more_lines=True)]), more)
    assert make_connector(clock).locate(push())["skus"] == ["A", "B"]
    assert gql.payloads[1]["variables"] == {"id": ORDER_ID, "lines": 10, "after": "bGluZXM="}


def test_order_lines_paging_stops_when_a_next_page_has_no_cursor(clock, rsps):
    """`hasNextPage: true` without an `endCursor` ends the lines: asking again with no
    cursor would fetch page 1 over and over."""
    token_endpoint(rsps)
    more = {
        "data": {
            "order": {
                "request_id": "r",
                "complexity": 27,
                "data": {
                    "line_items": {
                        "pageInfo": {"hasNextPage": True, "endCursor": None},
                        "edges": [{"node": {"sku": "B"}}],
                    }
                },
            }
        }
    }
    gql = GraphQL(rsps, connection("orders", [order_node(skus=("A",), more_lines=True)]), more)
    assert make_connector(clock).locate(push())["skus"] == ["A", "B"]
    assert len(gql.payloads) == 2


# -- find / create ------------------------------------------------------------------------


def test_find_rma_matches_partner_id_across_pages(clock, rsps):
    token_endpoint(rsps)
    other = {"id": "UmV0dXJuOjE=", "legacy_id": 1, "partner_id": "999", "order_id": ORDER_ID}
    ours = {"id": "UmV0dXJuOjI=", "legacy_id": 2, "partner_id": "1001", "order_id": ORDER_ID}
    gql = GraphQL(
        rsps,
        connection("returns", [other], has_next=True, cursor="cGFnZTE="),
        connection("returns", [ours]),
    )
    ref = make_connector(clock).find_rma(push(), {"order_id": ORDER_ID})
    assert ref == RmaRef("1001", "UmV0dXJuOjI=", {"legacy_id": 2, "order_id": ORDER_ID})
    assert [p["variables"]["after"] for p in gql.payloads] == [None, "cGFnZTE="]
    assert gql.payloads[0]["variables"]["order_id"] == ORDER_ID


def test_find_rma_without_a_match_is_none(clock, rsps):
    token_endpoint(rsps)
    GraphQL(rsps, connection("returns", [{"id": "x", "partner_id": "999"}]))
    assert make_connector(clock).find_rma(push(), {"order_id": ORDER_ID}) is None


def located_order() -> dict[str, Any]:
    return {
        "order_id": ORDER_ID,
        "order_number": "#1001",
        "skus": ["A", "B"],
        "address": {
            "name": "Pat Lee",
            "address1": "1 Main St",
            "address2": "",
            "city": "Columbus",
            "state": "OH",
            "country": "US",
            "zip": "43215",
            "phone": "",
        },
    }


def test_create_sends_the_loop_id_as_partner_id_in_variables(clock, rsps):
    token_endpoint(rsps)
    created = {
        "data": {
            "return_create": {
                "request_id": "r",
                "complexity": 2,
                "return": {
                    "id": "UmV0dXJuOjMzOTQzMDM=",
                    "legacy_id": 3394303,
                    "status": "pending",
                    "order_id": ORDER_ID,
                    "partner_id": "1001",
                },
            }
        }
    }
    gql = GraphQL(rsps, created)
    connector = make_connector(clock, customer_account_id="QWNjb3VudDox")
    ref = connector.create_rma(push(), located_order())
    assert ref.rma_id == "UmV0dXJuOjMzOTQzMDM=" and ref.extra["legacy_id"] == 3394303
    assert connector.rma_label(ref) == "ShipHero return 3394303"
    (payload,) = gql.payloads
    assert "1001" not in payload["query"] and "$data: CreateReturnInput!" in payload["query"]
    data = payload["variables"]["data"]
    assert data["partner_id"] == "1001" and data["warehouse_id"] == WAREHOUSE
    assert data["order_id"] == ORDER_ID and data["customer_account_id"] == "QWNjb3VudDox"
    assert data["line_items"] == [
        {"sku": "A", "quantity": 2, "return_reason": "Too small"},
        {"sku": "B", "quantity": 1, "return_reason": "Returned through Loop"},
    ]
    assert (data["label_type"], data["label_cost"], data["tracking_number"]) == (
        "SELF_RETURN",
        "0.00",
        "9400111",
    )
    assert (data["shipping_carrier"], data["shipping_method"]) == ("USPS", "USPS")
    assert data["dimensions"] == {"weight": "0", "height": "0", "width": "0", "length": "0"}
    assert data["address"]["name"] == "Pat Lee"


def test_a_refused_mutation_is_rejected(clock, rsps):
    token_endpoint(rsps)
    GraphQL(
        rsps,
        {
            "data": {"return_create": None},
            "errors": [
                {
                    "message": "SKU Z is not on order #1001",
                    "path": ["return_create"],
                    "locations": [{"line": 3, "column": 3}],
                }
            ],
        },
    )
    with pytest.raises(Rejected, match="SKU Z is not on order"):
        make_connector(clock).create_rma(push(), located_order())


def test_a_lost_create_answer_is_outcome_unknown_and_not_resent(clock, rsps):
    token_endpoint(rsps)
    rsps.add(
        responses.POST, f"{BASE}/graphql", body=requests.ConnectionError("connection reset by peer")
    )
    with pytest.raises(OutcomeUnknown):
        make_connector(clock).create_rma(push(), located_order())
    assert len([c for c in rsps.calls if c.request.url.endswith("/graphql")]) == 1


# -- poll ---------------------------------------------------------------------------------


def shiphero_return(n: int, status: str) -> dict[str, Any]:
    return {
        "id": f"gid{n}",
        "legacy_id": n,
        "partner_id": str(n),
        "status": status,
        "total_items_expected": 2,
        "total_items_received": 1,
        "line_items": [
            {
                "quantity": 1,
                "quantity_received": 1,
                "condition": "damaged",
                "line_item": {"sku": "A"},
            },
            {"quantity": 1, "quantity_received": 0, "condition": None, "line_item": {"sku": "B"}},
        ],
    }


def test_poll_reads_fifty_rmas_in_one_aliased_request(clock, rsps):
    token_endpoint(rsps)

    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, rma_id in payload["variables"].items():
            n = int(rma_id.removeprefix("gid"))
            alias = f"r{key.removeprefix('id')}"
            data[alias] = (
                None
                if n == 7
                else {
                    "request_id": "r",
                    "complexity": 4,
                    "data": shiphero_return(n, "Warehouse Complete"),
                }
            )
        errors = [{"message": "Return gid7 not found", "path": ["r7"]}]
        return {"data": data, "errors": errors}

    gql = GraphQL(rsps, answer)
    refs = [RmaRef(str(n), f"gid{n}") for n in range(50)]
    result = make_connector(clock, poll_batch=50).poll(refs)
    assert len(gql.requests) == 1
    query = gql.payloads[0]["query"]
    assert "r0: return(id: $id0)" in query and "r49: return(id: $id49)" in query
    assert result.errors == {"7": "Return gid7 not found"}
    assert len(result.statuses) == 49
    status = result.statuses["3"]
    assert (status.status, status.expected_units, status.received_units) == (
        "Warehouse Complete",
        2,
        1,
    )
    assert [(i.sku, i.expected, i.received, i.condition) for i in status.items] == [
        ("A", 1, 1, "damaged"),
        ("B", 1, 0, None),
    ]


def test_poll_splits_into_batches(clock, rsps):
    token_endpoint(rsps)

    def answer(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "data": {
                f"r{k.removeprefix('id')}": {
                    "complexity": 4,
                    "data": shiphero_return(int(v.removeprefix("gid")), "pending"),
                }
                for k, v in payload["variables"].items()
            }
        }

    gql = GraphQL(rsps, answer, answer, answer)
    result = make_connector(clock, poll_batch=20).poll(
        [RmaRef(str(n), f"gid{n}") for n in range(45)]
    )
    assert [len(p["variables"]) for p in gql.payloads] == [20, 20, 5]
    assert len(result.statuses) == 45 and not result.errors


def test_a_refused_refresh_token_is_an_auth_error_without_graphql_calls(clock, rsps):
    rsps.add(
        responses.POST,
        f"{BASE}/auth/refresh",
        status=403,
        json={"error": "invalid_grant", "error_description": "Unknown refresh token."},
    )
    gql = GraphQL(rsps)
    with pytest.raises(AuthError, match="refresh token refused"):
        make_connector(clock).locate(push())
    assert gql.requests == []
