"""A simulator with background activity, seen over REST: a ticker that moves, a book that trades."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import ROUND_DOWN, Decimal
from typing import Any

from tests.simulator_harness import RunningSimulator

StartSimulator = Callable[..., Awaitable[RunningSimulator]]
TICKER = "/v1/markets/BCCBTC/ticker"
POLLS = 200
POLL_PAUSE = 0.05


async def changed_ticker(sim: RunningSimulator, first: dict[str, Any]) -> dict[str, Any]:
    """The first ticker that differs from ``first`` after a deal, or the last one seen."""
    ticker = first
    for _ in range(POLLS):
        await asyncio.sleep(POLL_PAUSE)
        ticker = await sim.get(TICKER)
        if ticker != first and Decimal(ticker["last"]) > 0:
            break
    return ticker


async def test_activity_moves_the_ticker(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(activity=200)
    first = await sim.get(TICKER)
    ticker = await changed_ticker(sim, first)
    assert ticker != first
    assert Decimal(ticker["last"]) > 0
    assert 0 < Decimal(ticker["bid"]) < Decimal(ticker["ask"])
    assert (await sim.stats())["orders"]["placed"] > 0


async def test_activity_book_is_two_sided_and_fills_a_client(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(activity=200)
    depth = await sim.get("/v1/markets/BCCBTC/depth")
    assert depth["asks"]
    assert depth["bids"]
    ask = Decimal(depth["asks"][0][0])
    price = (ask * Decimal("1.05")).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
    order = await sim.place("BCCBTC", 2, "0.01", str(price))
    assert Decimal(order["deal_stock"]) > 0
