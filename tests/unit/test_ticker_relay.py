"""Price and deals as the relay carries them: a follower's state is the leader's, and a gap
filled from the snapshot neither loses a deal nor repeats one.

What a user notices: a follower replica answering ``price.query`` or ``deals.query`` other than
the leader would, or the same deal pushed twice after a resync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.core.jsonrpc import JsonValue
from gateway.fanout.ticker import Ticker


def deal(deal_id: int, price: str = "0.14") -> dict[str, JsonValue]:
    return {"id": deal_id, "time": 1_700_000_000.0 + deal_id, "price": price, "amount": "1",
            "type": "buy"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:  # never used: no upstream here
        yield opened


async def follower(session: aiohttp.ClientSession) -> Ticker:
    ticker = Ticker("ws://127.0.0.1:1/ws", session, heartbeat=10, linger=0)
    await ticker.use_relay()
    return ticker


async def test_a_follower_applying_the_leaders_changes_holds_its_state(
    session: aiohttp.ClientSession,
) -> None:
    one, other = await follower(session), await follower(session)
    steps: list[tuple[str, JsonValue]] = [
        ("p", ["BCCBTC", "0.14"]), ("d", ["BCCBTC", [deal(2), deal(1)]]),
        ("p", ["BCCBTC", "0.1410"]), ("d", ["BCCBTC", [deal(3)]]), ("l", None),
        ("d", ["BCCBTC", [deal(4), deal(3)]])]
    for kind, data in steps:
        one.apply(kind, data)
        other.apply(kind, data)
    assert one.fields(True) == other.fields(True)


async def test_a_snapshot_gives_a_late_follower_the_leaders_state_and_it_goes_on_from_there(
    session: aiohttp.ClientSession,
) -> None:
    leader_state, late = await follower(session), await follower(session)
    leader_state.apply("p", ["BCCBTC", "0.14"])
    leader_state.apply("p", ["BCCBTC", "0.1410"])
    leader_state.apply("d", ["BCCBTC", [deal(2), deal(1)]])
    late.load(leader_state.fields(True))
    assert late.whole
    assert late.fields(True) == leader_state.fields(True)
    for ticker in (leader_state, late):
        ticker.apply("d", ["BCCBTC", [deal(3)]])
    assert late.fields(True) == leader_state.fields(True)
    assert late.deals_query("BCCBTC", 3, 0) is None  # nobody follows it here: asked upstream


async def test_the_leader_reports_only_what_changed_since_its_last_snapshot(
    session: aiohttp.ClientSession,
) -> None:
    ticker = await follower(session)
    ticker.apply("p", ["BCCBTC", "0.14"])
    ticker.apply("p", ["ETHBTC", "0.05"])
    assert set(ticker.fields(False)) == {"p:BCCBTC", "p:ETHBTC"}
    ticker.apply("p", ["ETHBTC", "0.051"])
    assert set(ticker.fields(False)) == {"p:ETHBTC"}
    assert set(ticker.fields(True)) == {"p:BCCBTC", "p:ETHBTC"}
