"""The order desk end to end: refusals, form and JSON bodies, idempotency, risk, ownership.

The gateway runs in front of the simulator over loopback sockets; the simulator's request
counters (``GET /_sim/stats``) prove what reached the exchange and the audit trail
(``GET /admin/audit``) proves what was recorded. Tests taking ``redis_settings`` run twice: with
the gateway's in-process stores and with the real Redis under the test's key prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDictProxy

from gateway.app import Overrides
from gateway.auth.signing import KeyRing, generate_signing_key
from gateway.auth.users import User, UserDirectory, load_users
from gateway.core.principal import ALL_SCOPES, Scope
from gateway.order_settings import RatePolicy, RiskPolicy, RiskRules, UserLimits
from gateway.settings import RedisSettings, Settings
from tests.clock import FakeClock
from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

ORDERS = "/v1/markets/BCCBTC/orders"
PLACE_ROUTE = "POST /v1/markets/{market}/orders"
CANCEL_ROUTE = "POST /v1/markets/{market}/orders/{order_id}/_cancel"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"
TRADER = frozenset({Scope.MARKET_READ, Scope.ORDERS_READ, Scope.ORDERS_WRITE})

Answer = tuple[int, Any, CIMultiDictProxy[str]]


# --- helpers -----------------------------------------------------------------------------------


def trader(user_id: str, **fields: Any) -> User:
    """A user of desk-alpha with the trading scopes, changed by ``fields``."""
    values: dict[str, Any] = {"scopes": TRADER, "markets": None, "account": "desk-alpha"}
    return User(id=user_id, name=user_id, **{**values, **fields})


DEMO = trader("demo-trader")
ADMIN = trader("desk-admin", scopes=ALL_SCOPES)


def sell(amount: str = "1", price: str = "0.2") -> dict[str, str]:
    return {"side": "1", "amount": amount, "price": price}


async def start_desk(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis: RedisSettings | None,
    *users: User, settings: Settings | None = None, **options: Any,
) -> RunningGateway:
    """A gateway whose directory holds demo-trader, desk-admin and ``users``."""
    directory = UserDirectory([DEMO, ADMIN, *users])
    return await start_gateway_for(sim, settings=settings or gateway_settings(sim, redis),
                                   overrides=Overrides(directory=directory), **options)


async def route_calls(sim: RunningSimulator, route: str = PLACE_ROUTE) -> int:
    count: int = (await sim.stats())["rest_requests"].get(route, 0)
    return count


async def orders_placed(sim: RunningSimulator) -> int:
    placed: int = (await sim.stats())["orders"]["placed"]
    return placed


async def audit_events(gateway: RunningGateway, **filters: str) -> list[dict[str, Any]]:
    """Every audit event matching ``filters``, oldest first, read as a desk admin would."""
    token, events, after = gateway.token("desk-admin"), [], 0
    while True:
        status, body, _ = await gateway.call(
            "GET", "/admin/audit", token, params={**filters, "after": str(after), "limit": "1000"})
        assert status == 200, body
        events += [record["event"] for record in body["records"]]
        if body["next_after"] is None:
            return events
        after = body["next_after"]


def token(gateway: RunningGateway, user: str) -> str:
    """A token asking for every scope: the caller gets what ``user`` holds."""
    return gateway.token(user, sorted(ALL_SCOPES))


async def place(gateway: RunningGateway, user: str = "demo-trader",
                body: dict[str, str] | None = None, key: str | None = None,
                market: str = "BCCBTC") -> Answer:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await gateway.call("POST", f"/v1/markets/{market}/orders", token(gateway, user),
                              headers=headers, data=body or sell())


async def trade(sim: RunningSimulator, market: str, price: str, amount: str = "1") -> None:
    """One trade at ``price`` between desk-beta and desk-gamma, straight on the exchange."""
    await sim.place(market, 1, amount, price, account="desk-beta")
    await sim.place(market, 2, amount, price, account="desk-gamma")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def redis_settings(request: pytest.FixtureRequest) -> RedisSettings | None:
    """None: the gateway's in-process stores; else the real Redis under the test's prefix."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("key_prefix")
    return RedisSettings(url=url, key_prefix=prefix)


# --- each refusal kind -------------------------------------------------------------------------

CAPPED = trader("capped", risk=RiskRules(default=RiskPolicy(
    max_order_amount=Decimal(5), max_notional=Decimal(1), price_band_percent=Decimal(10))))
BTG_ONLY = trader("btg-only", markets=frozenset({"BTGBTC"}))
SLOW = trader("slow", limits=UserLimits(place=RatePolicy(1, 60.0)))
HALTED = trader("halted")
STRANGER = KeyRing(generate_signing_key("stranger"), [])


async def place_once_as_slow(gateway: RunningGateway) -> None:
    status, body, _ = await place(gateway, "slow")
    assert status == 200, body


async def halt_user(gateway: RunningGateway) -> None:
    status, body, _ = await gateway.call(
        "POST", "/admin/kill-switch", gateway.token("desk-admin"),
        json={"scope": "user", "target": "halted", "reason": "fat finger review"})
    assert status == 200, body


async def place_with_key(gateway: RunningGateway) -> None:
    status, body, _ = await place(gateway, key="order-1")
    assert status == 200, body


@dataclass(frozen=True)
class Refusal:
    id: str
    status: int
    code: str
    user: str | None = "demo-trader"  # None: no token at all
    scopes: list[str] | None = None
    body: dict[str, str] = field(default_factory=sell)
    key: str | None = None
    token: str = "valid"  # or "stranger": signed by a key the gateway does not know
    prepare: Callable[[RunningGateway], Awaitable[None]] | None = None
    says: str = ""


REFUSALS = [
    Refusal("no-token", 401, "unauthenticated", user=None, says="missing bearer token"),
    Refusal("bad-token", 401, "invalid_token", token="stranger"),
    Refusal("missing-scope", 403, "insufficient_scope", scopes=["orders:read"],
            says="orders:write"),
    Refusal("market-not-allowed", 403, "market_not_allowed", user="btg-only", says="BCCBTC"),
    Refusal("bad-side", 400, "invalid_order", body={**sell(), "side": "3"}, says="side"),
    Refusal("too-many-decimals", 400, "invalid_order", body=sell(amount="1.00001"),
            says="5 decimal places"),
    Refusal("unknown-field", 400, "invalid_order", body={**sell(), "note": "hi"},
            says="unknown field 'note'"),
    Refusal("market-order-not-enabled", 400, "invalid_order", body={"side": "1", "amount": "1"},
            says="market orders are disabled on BCCBTC"),
    Refusal("max-amount", 403, "risk_limit_exceeded", user="capped", body=sell("6", "0.1"),
            says="maximum order amount 5"),
    Refusal("max-notional", 403, "risk_limit_exceeded", user="capped", body=sell("4", "0.3"),
            says="notional 1.2 exceeds"),
    Refusal("price-band", 403, "risk_limit_exceeded", user="capped", body=sell("1", "0.2"),
            says="away from the last price 0.1"),
    Refusal("rate-limit", 429, "rate_limited", user="slow", prepare=place_once_as_slow),
    Refusal("kill-switch", 423, "kill_switch_engaged", user="halted", prepare=halt_user,
            says="fat finger review (kill switch set by desk-admin"),
    Refusal("idempotency-conflict", 422, "idempotency_key_reused", body=sell("2"),
            key="order-1", prepare=place_with_key, says="order-1"),
]


def token_for(gateway: RunningGateway, case: Refusal) -> str | None:
    if case.user is None:
        return None
    if case.token == "stranger":
        return gateway.issuer(STRANGER).issue(case.user, ["orders:write"], 900)[0]
    return gateway.token(case.user, case.scopes)


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.id)
async def test_each_refusal_kind_is_audited_and_not_forwarded(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None,
    case: Refusal,
) -> None:
    await trade(sim, "BCCBTC", "0.1")  # the last price the price band is measured from
    gateway = await start_desk(sim, start_gateway_for, redis_settings,
                               CAPPED, BTG_ONLY, SLOW, HALTED)
    if case.prepare is not None:
        await case.prepare(gateway)
    forwarded, intents = await route_calls(sim), len(await audit_events(gateway, kind="intent"))
    headers = {"Idempotency-Key": case.key} if case.key else {}
    status, body, answer_headers = await gateway.call(
        "POST", ORDERS, token_for(gateway, case), data=case.body, headers=headers)
    assert (status, body["error"]["code"]) == (case.status, case.code), body
    assert case.says in body["error"]["message"]
    refusals = await audit_events(gateway, kind="refusal")
    assert [(event["reason"], event["action"], event["market"], event["idempotency_key"])
            for event in refusals] == [(case.code, "place", "BCCBTC", case.key)]
    assert await route_calls(sim) == forwarded
    assert len(await audit_events(gateway, kind="intent")) == intents
    if status == 429:
        assert int(answer_headers["Retry-After"]) >= 1
        assert (answer_headers["RateLimit-Limit"], answer_headers["RateLimit-Remaining"]) == (
            "1", "0")
        assert int(answer_headers["RateLimit-Reset"]) >= 1


@pytest.mark.parametrize("case", [case for case in REFUSALS if case.id in (
    "missing-scope", "market-not-allowed")], ids=lambda case: case.id)
async def test_a_refusal_of_a_verified_caller_names_the_caller_in_the_audit(
    sim: RunningSimulator, start_gateway_for: StartGateway, case: Refusal
) -> None:
    """The token verified, so the trail must say whose order was refused (an auditor's question)."""
    gateway = await start_desk(sim, start_gateway_for, None, BTG_ONLY)
    status, _, _ = await gateway.call("POST", ORDERS, token_for(gateway, case), data=sell())
    assert status == case.status
    refusals = await audit_events(gateway, kind="refusal")
    assert [(event["reason"], event["user"], event["account"]) for event in refusals] == [
        (case.code, case.user, "desk-alpha")]


# --- bodies ------------------------------------------------------------------------------------


async def test_form_and_json_bodies_place_the_same_order_and_the_answer_is_the_exchanges(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = gw.token()
    async with gw.http.post(gw.url(ORDERS), data=sell("1.5", "0.25"),
                            headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        form_bytes = await response.read()
    status, json_order, headers = await gw.call(
        "POST", ORDERS, token, json={"side": 1, "amount": 1.5, "price": "0.250"})
    assert status == 200, json_order
    assert "RateLimit-Remaining" in headers
    form_order = json.loads(form_bytes)
    pending = (await sim.get("/v1/markets/BCCBTC/orders/_pending"))["records"]
    assert pending == [json_order, form_order]  # newest first, each as the exchange holds it
    assert form_bytes == json.dumps(pending[1]).encode()  # byte for byte what the exchange sent

    def meaning(order: dict[str, Any]) -> tuple[object, ...]:
        return (order["market"], order["side"], order["type"], Decimal(order["price"]),
                Decimal(order["amount"]))

    assert meaning(form_order) == meaning(json_order) == ("BCCBTC", 1, 1, Decimal("0.25"),
                                                         Decimal("1.5"))


@pytest.mark.parametrize(("body", "field"), [
    ({"side": "3", "amount": "1", "price": "0.2"}, "side"),
    ({"side": "1", "amount": "1.00001", "price": "0.2"}, "amount"),
    ({"side": "1", "amount": "1", "price": "0.2", "tif": "ioc"}, "tif"),
])
async def test_an_invalid_order_names_its_field_in_the_error(
    gw: RunningGateway, body: dict[str, str], field: str
) -> None:
    status, answer, _ = await gw.call("POST", ORDERS, gw.token(), data=body)
    assert status == 400
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid_order", field)
    assert field in answer["error"]["message"]


async def test_a_key_first_used_with_a_form_replays_for_the_same_order_in_json(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    status, first, _ = await place(gw, key="same-order", body=sell("1.5", "0.25"))
    assert status == 200, first
    status, again, headers = await gw.call(
        "POST", ORDERS, gw.token(), headers={"Idempotency-Key": "same-order"},
        json={"amount": "1.50", "price": 0.25, "side": 1})
    assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
    assert await orders_placed(sim) == 1


# --- idempotency -------------------------------------------------------------------------------


async def test_a_replay_answers_the_stored_response_without_calling_the_exchange(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings)
    status, first, headers = await place(gateway, key="replay-me")
    assert status == 200, first
    assert "Idempotent-Replayed" not in headers
    forwarded = await route_calls(sim)
    status, again, headers = await place(gateway, key="replay-me")
    assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
    assert await route_calls(sim) == forwarded
    status, body, _ = await place(gateway, key="replay-me", body=sell("2"))
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    assert await route_calls(sim) == forwarded
    assert await orders_placed(sim) == 1


async def test_concurrent_duplicates_make_one_upstream_order(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings)
    answers = await asyncio.gather(*(place(gateway, key="one-order") for _ in range(20)))
    assert {status for status, _, _ in answers} == {200}
    assert len({body["id"] for _, body, _ in answers}) == 1
    replayed = [headers.get("Idempotent-Replayed") for _, _, headers in answers]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19
    assert await route_calls(sim) == 1
    assert await orders_placed(sim) == 1
    assert len(await audit_events(gateway, kind="intent")) == 1


STORMY = trader("stormy", limits=UserLimits(place=RatePolicy(3, 60.0)))


async def test_a_retry_storm_spends_one_slot_of_the_limit(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    """Fifty copies of one keyed order: one order, one slot of a 3-per-minute limit spent, so
    the user's next orders are still admitted (replays are answered before any limit)."""
    gateway = await start_desk(sim, start_gateway_for, redis_settings, STORMY)
    answers = await asyncio.gather(*(place(gateway, "stormy", key="storm") for _ in range(50)))
    assert {status for status, _, _ in answers} == {200}
    assert len({body["id"] for _, body, _ in answers}) == 1
    status, _, headers = await place(gateway, "stormy", key="next")
    assert (status, headers["RateLimit-Remaining"]) == (200, "1")
    status, _, _ = await place(gateway, "stormy", key="last")
    assert status == 200
    status, body, _ = await place(gateway, "stormy", key="one-too-many")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    status, _, headers = await place(gateway, "stormy", key="storm")
    assert (status, headers["Idempotent-Replayed"]) == (200, "true")  # a replay, even now
    assert await orders_placed(sim) == 3


async def test_a_refused_order_holds_no_key(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    """An order refused by its limit is not claimed: once the limit allows, the same key
    places it (it was never sent)."""
    gateway = await start_desk(sim, start_gateway_for, redis_settings, SLOW)
    await place_once_as_slow(gateway)
    status, body, _ = await place(gateway, "slow", key="later")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert await orders_placed(sim) == 1
    again = await place(gateway, "slow", key="later")
    assert again[0] == 429  # still refused by the limit, never "in progress"


async def test_idempotency_keys_belong_to_one_user(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings, trader("other-trader"))
    first = await place(gateway, "demo-trader", key="shared-key")
    second = await place(gateway, "other-trader", key="shared-key")
    assert (first[0], second[0]) == (200, 200)
    assert first[1]["id"] != second[1]["id"]
    assert "Idempotent-Replayed" not in second[2]
    assert await orders_placed(sim) == 2


async def test_a_cancel_is_idempotent_too(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings)
    orders = [(await place(gateway))[1]["id"] for _ in range(2)]
    token, cancel = gateway.token(), f"{ORDERS}/{orders[0]}/_cancel"
    key = {"Idempotency-Key": "cancel-1"}
    status, first, _ = await gateway.call("POST", cancel, token, headers=key)
    assert (status, first["id"]) == (200, orders[0])
    status, again, headers = await gateway.call("POST", cancel, token, headers=key)
    assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
    status, body, _ = await gateway.call("POST", f"{ORDERS}/{orders[1]}/_cancel", token,
                                         headers=key)
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused")
    assert await route_calls(sim, CANCEL_ROUTE) == 1
    pending = (await sim.get("/v1/markets/BCCBTC/orders/_pending"))["records"]
    assert [order["id"] for order in pending] == [orders[1]]


async def test_an_unknown_outcome_is_never_sent_again(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    settings = gateway_settings(sim, redis_settings)
    settings = dataclasses.replace(settings, upstream=dataclasses.replace(
        settings.upstream, total_timeout=0.3, retries=0))
    gateway = await start_desk(sim, start_gateway_for, redis_settings, settings=settings)
    status, _, _ = await place(gateway)  # fills the markets cache before the exchange slows
    assert status == 200
    await sim.set_faults(latency_ms=1000)
    status, body, _ = await place(gateway, key="slow-order")
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    forwarded = await route_calls(sim)
    status, body, _ = await place(gateway, key="slow-order")
    assert (status, body["error"]["code"]) == (409, "idempotency_outcome_unknown")
    intents = [event for event in await audit_events(gateway, kind="intent")
               if event["idempotency_key"] == "slow-order"]
    assert len(intents) == 1
    assert intents[0]["id"] in body["error"]["message"]
    outcomes = await audit_events(gateway, kind="outcome", outcome="unknown")
    assert [event["intent_id"] for event in outcomes] == [intents[0]["id"]]
    assert await route_calls(sim) == forwarded


# --- risk ---------------------------------------------------------------------------------------

USERS_FILE = """
users:
  - id: eth-trader
    name: ETH desk
    scopes: [market:read, orders:read, orders:write]
    markets: all
    account: desk-alpha
    risk:
      markets:
        ETHBTC: {max_notional: "1"}
"""


def notional_in(message: str) -> Decimal:
    found = re.search(r"notional ([0-9.]+) exceeds", message)
    assert found is not None, message
    return Decimal(found.group(1))


async def test_a_market_orders_notional_uses_the_cached_ticker_and_per_market_overrides_apply(
    sim: RunningSimulator, start_gateway_for: StartGateway, tmp_path: Path, clock: FakeClock
) -> None:
    settings = gateway_settings(sim)
    settings = dataclasses.replace(settings, orders=dataclasses.replace(
        settings.orders, risk=RiskRules(default=RiskPolicy(max_notional=Decimal(100)))))
    (tmp_path / "users.yaml").write_text(USERS_FILE, encoding="utf-8")
    directory = load_users(tmp_path / "users.yaml", ["desk-alpha"], settings.orders)
    gateway = await start_gateway_for(sim, settings=settings, clock=clock,
                                      overrides=Overrides(directory=directory))
    user = "eth-trader"
    await trade(sim, "ETHBTC", "0.05")
    await sim.place("ETHBTC", 2, "40", "0.04", account="desk-beta")  # a bid to sell into
    status, ticker, _ = await gateway.call("GET", "/v1/markets/ETHBTC/ticker",
                                           token(gateway, user))
    assert (status, Decimal(ticker["last"])) == (200, Decimal("0.05"))
    await trade(sim, "ETHBTC", "0.1")  # the exchange moves on; the gateway's ticker is cached
    status, body, _ = await place(gateway, user, {"side": "1", "amount": "30"}, market="ETHBTC")
    assert (status, body["error"]["code"]) == (403, "risk_limit_exceeded")
    message = body["error"]["message"]
    assert "exceeds this user's maximum notional 1 on ETHBTC" in message
    assert notional_in(message) == Decimal("1.5")  # 30 x 0.05, the cached last price
    status, order, _ = await place(gateway, user, {"side": "1", "amount": "15"}, market="ETHBTC")
    assert (status, Decimal(order["deal_stock"])) == (200, Decimal(15))
    assert await route_calls(sim, TICKER_ROUTE) == 1
    status, body, _ = await place(gateway, user, sell("30", "0.05"), market="ETHBTC")
    assert (status, body["error"]["code"]) == (403, "risk_limit_exceeded")
    status, _, _ = await place(gateway, user, sell("30", "0.05"), market="BCCBTC")
    assert status == 200  # the desk's default limit (100) elsewhere


# --- ownership ----------------------------------------------------------------------------------

ALICE, BOB = trader("alice"), trader("bob")
DESK_VIEWER = trader("desk-viewer", scopes=frozenset({Scope.ORDERS_READ, Scope.ORDERS_DESK}))


async def listing(gateway: RunningGateway, user: str, which: str, **paging: int) -> Any:
    query = {name: str(value) for name, value in paging.items()}
    status, body, _ = await gateway.call("GET", f"{ORDERS}/{which}", token(gateway, user),
                                         params=query)
    assert status == 200, body
    return body


def ids(body: Any) -> list[int]:
    return [record["id"] for record in body["records"]]


async def paged_ids(gateway: RunningGateway, user: str, which: str, size: int) -> list[int]:
    """The list read page by page (``size`` each) until a short page, concatenated."""
    found: list[int] = []
    while True:
        page = await listing(gateway, user, which, limit=size, offset=len(found))
        assert (page["limit"], page["offset"]) == (size, len(found))
        found += ids(page)
        if len(page["records"]) < size:
            return found


async def place_interleaved(
    sim: RunningSimulator, gateway: RunningGateway
) -> dict[str, list[int]]:
    """Alice 7, Bob 5 and 3 outside the gateway, interleaved; each one's ids, oldest first."""
    sequence = ["alice", "bob"] * 5 + ["alice", "alice"]
    placed: dict[str, list[int]] = {"alice": [], "bob": [], "outside": []}
    for index, who in enumerate(sequence):
        status, order, _ = await place(gateway, who, sell("1", f"0.2{index:02d}"))
        assert status == 200, order
        placed[who].append(order["id"])
        if index in (2, 6, 9):
            outside = await sim.place("BCCBTC", 1, "1", f"0.3{index:02d}")
            placed["outside"].append(outside["id"])
    return placed


async def test_two_users_of_one_account_see_only_their_own_orders(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings, ALICE, BOB, DESK_VIEWER)
    placed = await place_interleaved(sim, gateway)
    everything = sorted(placed["alice"] + placed["bob"] + placed["outside"], reverse=True)
    for user, count in (("alice", 7), ("bob", 5)):
        mine = sorted(placed[user], reverse=True)
        whole = await listing(gateway, user, "_pending", limit=100)
        assert (ids(whole), whole["total"]) == (mine, count)
        assert await paged_ids(gateway, user, "_pending", 3) == mine
        assert (await listing(gateway, user, "_pending", limit=2, offset=4))["total"] == count
    viewed = await listing(gateway, "desk-viewer", "_pending", limit=100)
    assert (ids(viewed), viewed["total"]) == (everything, 15)


async def test_another_users_order_is_not_found_and_stays_on_the_exchange(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings, ALICE, BOB)
    placed = await place_interleaved(sim, gateway)
    for target in (placed["bob"][0], placed["outside"][0]):
        status, body, _ = await gateway.call("POST", f"{ORDERS}/{target}/_cancel",
                                             gateway.token("alice"))
        assert (status, body["error"]["code"]) == (404, "order_not_found")
        status, body, _ = await gateway.call("GET", f"{ORDERS}/{target}", gateway.token("alice"))
        assert (status, body["error"]["code"]) == (404, "order_not_found")
    status, _, _ = await gateway.call("GET", f"{ORDERS}/{placed['alice'][0]}",
                                      gateway.token("alice"))
    assert status == 200
    pending = (await sim.get("/v1/markets/BCCBTC/orders/_pending", limit=100))["records"]
    assert {placed["bob"][0], placed["outside"][0]} <= {order["id"] for order in pending}
    assert await route_calls(sim, CANCEL_ROUTE) == 0
    refusals = await audit_events(gateway, kind="refusal", action="cancel")
    assert [event["reason"] for event in refusals] == ["order_not_found"] * 2


async def test_finished_lists_are_each_users_own_after_fills(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_settings: RedisSettings | None
) -> None:
    gateway = await start_desk(sim, start_gateway_for, redis_settings, ALICE, BOB, DESK_VIEWER)
    placed = await place_interleaved(sim, gateway)
    # Another account buys the four cheapest: alice's 1st and 2nd, bob's 1st and 2nd.
    await sim.place("BCCBTC", 2, "4", "0.203", account="desk-beta")
    filled = {"alice": placed["alice"][:2], "bob": placed["bob"][:2]}
    for user in ("alice", "bob"):
        done = sorted(filled[user], reverse=True)
        assert ids(await listing(gateway, user, "_finished", limit=100)) == done
        assert await paged_ids(gateway, user, "_finished", 1) == done
        pending = await listing(gateway, user, "_pending", limit=100)
        assert pending["total"] == len(placed[user]) - 2
    finished = await listing(gateway, "desk-viewer", "_finished", limit=100)
    assert ids(finished) == sorted(filled["alice"] + filled["bob"], reverse=True)
    assert (await listing(gateway, "desk-viewer", "_pending", limit=100))["total"] == 11


# --- the client address behind a proxy ------------------------------------------------------------


@pytest.mark.parametrize(("trusted", "expected"), [
    (("127.0.0.0/8",), "203.0.113.7"),
    ((), "127.0.0.1"),
    (("10.0.0.0/8",), "127.0.0.1"),
], ids=["from-a-trusted-proxy", "no-proxy-trusted", "peer-not-a-trusted-proxy"])
async def test_the_audit_names_the_client_behind_a_trusted_proxy_only(
    sim: RunningSimulator, start_gateway_for: StartGateway, trusted: tuple[str, ...],
    expected: str,
) -> None:
    base = gateway_settings(sim)
    proxies = tuple(ipaddress.ip_network(cidr) for cidr in trusted)
    settings = dataclasses.replace(
        base, server=dataclasses.replace(base.server, trusted_proxies=proxies))
    gateway = await start_desk(sim, start_gateway_for, None, settings=settings)
    for headers in ({"X-Forwarded-For": "6.6.6.6, 203.0.113.7"},
                    {"Forwarded": 'for="203.0.113.7:4711";proto=https'}):
        status, _, _ = await gateway.call("POST", ORDERS, gateway.token("demo-trader"),
                                          data=sell(), headers=headers)
        assert status == 200
    intents = await audit_events(gateway, kind="intent")
    assert [event["client"] for event in intents] == [expected, expected]
