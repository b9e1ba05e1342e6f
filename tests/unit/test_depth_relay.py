"""A market's book as the relay carries it: a follower loading the leader's snapshot, or applying
the leader's steps, serves exactly the leader's book, to the character.

What a user notices: a follower replica whose depth (REST or ``depth.query``) differs from the
leader's, in a level, an amount, or the way a number is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from gateway.core.jsonrpc import JsonValue
from gateway.core.relay_order import RelayFormatError
from gateway.fanout.depth import MarketDepth
from gateway.ws_settings import WebSocketSettings
from tests.clock import FakeClock

SNAPSHOT: dict[str, JsonValue] = {
    "asks": [["0.14000000", "1.5"], ["0.1410", "2.00000000"], ["0.15", "0e-8"]],
    "bids": [["0.13000000", "2"], ["0.1290", "0.00000001"]],
}
DIFF: dict[str, JsonValue] = {"asks": [["0.1410", "0"], ["0.1420", "3.25"]]}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:  # never used: no upstream here
        yield opened


def market(session: aiohttp.ClientSession) -> MarketDepth:
    return MarketDepth("BCCBTC", WebSocketSettings(), "ws://127.0.0.1:1/ws", session,
                       FakeClock())


def wire(depth: MarketDepth, limit: int = 10) -> object:
    view = depth.query(limit, Decimal(0))
    return None if view is None else view.to_wire()


async def test_a_follower_applying_the_leaders_steps_serves_the_same_book(
    session: aiohttp.ClientSession,
) -> None:
    leader, follower = market(session), market(session)
    for depth in (leader, follower):
        depth.apply("u", [True, SNAPSHOT])
        depth.apply("u", [False, DIFF])
    assert wire(follower) == wire(leader) is not None
    assert wire(follower, 2) == {"asks": [["0.14", "1.5"], ["0.142", "3.25"]],
                                 "bids": [["0.13", "2"], ["0.129", "1e-8"]]}


async def test_a_snapshot_loaded_mid_stream_then_the_next_steps_give_the_leaders_book(
    session: aiohttp.ClientSession,
) -> None:
    leader, follower = market(session), market(session)
    leader.apply("u", [True, SNAPSHOT])
    follower.load(leader.fields(True))
    assert wire(follower) == wire(leader)
    for depth in (leader, follower):
        depth.apply("u", [False, DIFF])
    assert wire(follower) == wire(leader)


async def test_a_resync_served_over_the_pushed_book_travels_in_the_snapshot(
    session: aiohttp.ClientSession,
) -> None:
    leader, follower = market(session), market(session)
    leader.apply("u", [True, SNAPSHOT])
    leader.apply("r", {"asks": [["0.16", "1"]], "bids": [["0.12", "1"]]})
    follower.load(leader.fields(True))
    assert wire(follower) == wire(leader) == {"asks": [["0.16", "1"]], "bids": [["0.12", "1"]]}
    # The next push patches the book the exchange pushed, not the queried one: on both sides.
    for depth in (leader, follower):
        depth.apply("u", [False, DIFF])
    assert wire(follower) == wire(leader)
    assert wire(leader, 1) == {"asks": [["0.14", "1.5"]], "bids": [["0.13", "2"]]}


async def test_a_lost_upstream_leaves_the_follower_without_a_book_until_the_next_snapshot(
    session: aiohttp.ClientSession,
) -> None:
    leader, follower = market(session), market(session)
    leader.apply("u", [True, SNAPSHOT])
    follower.load(leader.fields(True))
    follower.apply("l", None)
    assert wire(follower) is None
    follower.load(market(session).fields(True))  # a leader with no book yet
    assert wire(follower) is None


async def test_an_unreadable_snapshot_is_refused_and_shows_no_book(
    session: aiohttp.ClientSession,
) -> None:
    follower = market(session)
    follower.apply("u", [True, SNAPSHOT])
    with pytest.raises(RelayFormatError):
        follower.load({"book": "[{\"asks\": 3}, null]"})
    assert wire(follower) is None
