"""A live book says how old it is: the exchange stalls its pushes, still answers pings and
queries, and its book moves (issue: REST depth stayed a HIT with Age 0 for the whole stall).

Gateway and simulator over loopback sockets, with small check intervals so each test takes a few
seconds. The simulator is quiet: only the orders placed here move its book, and with pushes
stalled nothing the exchange pushes can tell the gateway about them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import StartGateway
from tests.e2e.test_upstream_resilience import metric
from tests.e2e.test_ws_fanout import (
    MARKET,
    PATIENCE,
    SELL,
    Sockets,
    State,
    View,
    Watcher,
    gateway,
    place_book,
    to_state,
    until,
)
from tests.gateway_harness import RunningGateway
from tests.simulator_harness import RunningSimulator

VIEW: View = (MARKET, 10, "0")
DEPTH = f"/v1/markets/{MARKET}/depth"
RESYNCS = f'expie_gateway_live_book_resyncs_total{{market="{MARKET}"}}'
VERIFY_INTERVAL = 0.2
STALL = 120  # longer than any test: pushes stay stalled until a test clears the fault


async def rest_depth(gw: RunningGateway) -> tuple[Any, str, int]:
    status, body, headers = await gw.call("GET", DEPTH, gw.token())
    assert status == 200, body
    return body, headers["X-Cache"], int(headers["Age"])


async def follow_settled_book(sim: RunningSimulator, gw: RunningGateway,
                              sockets: Sockets) -> tuple[Watcher, Any]:
    """A client follows the market and REST depth is served from the settled live book; the
    client and the exchange's depth."""
    await place_book(sim)
    client = await sockets.gateway(gw, VIEW)
    before = await sim.get(DEPTH)
    await until(lambda: client.book.state == to_state(before))
    assert await rest_depth(gw) == (before, "HIT", 0)
    return client, before


async def stall_and_move(sim: RunningSimulator) -> Any:
    """Stall the exchange's pushes, then move its book: a new best ask. The exchange's depth."""
    await sim.set_faults(stall_pushes_s=STALL)
    await sim.place(MARKET, SELL, "0.7", "0.1390")
    return await sim.get(DEPTH)


async def test_an_unconfirmed_book_stops_being_served_as_a_hit_after_the_maximum_age(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """No resync here (its confirmation wait is longer than the test): only the age rule acts."""
    max_book_age = 2.5
    gw = await gateway(sim, start_gateway_for, verify_interval=VERIFY_INTERVAL,
                       verify_confirm_after=60.0, max_book_age=max_book_age)
    _, before = await follow_settled_book(sim, gw, sockets)
    moved = await stall_and_move(sim)
    assert moved != before
    stale_ages: list[int] = []
    answers: list[tuple[Any, str, int]] = []

    async def fell_back() -> bool:
        answers.append(await rest_depth(gw))
        body, cache, age = answers[-1]
        if cache == "HIT" and body == before:
            stale_ages.append(age)
            return False
        return True

    await until(fell_back, within=max_book_age + PATIENCE)
    # The exchange's own depth, through the cache path (nothing cached there: a miss).
    assert answers[-1][:2] == (moved, "MISS")
    # While stale it said how old it was, and never claimed more than the maximum age.
    assert stale_ages == sorted(stale_ages)
    assert 1 <= stale_ages[-1] <= max_book_age


async def test_a_book_the_exchange_contradicts_twice_is_resynced_for_every_client(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    confirm_after = 1.0
    gw = await gateway(sim, start_gateway_for, verify_interval=VERIFY_INTERVAL,
                       verify_confirm_after=confirm_after, max_book_age=5.0)
    client, _ = await follow_settled_book(sim, gw, sockets)
    direct = await sockets.direct(sim)
    mark = len(client.log)
    moved = await stall_and_move(sim)
    # The stall stops pushes only: the exchange still answers depth.query with its book.
    assert await direct.query(VIEW) == to_state(moved)
    await until(lambda: client.book.state == to_state(moved), within=confirm_after + PATIENCE)
    assert client.log[mark:] == ["clean"]  # one clean snapshot, nothing pushed by the exchange
    body, cache, age = await rest_depth(gw)
    assert (body, cache) == (moved, "HIT")  # the resynced book…
    assert age <= 1  # …just confirmed
    assert await metric(gw, RESYNCS) == 1

    # Pushes resume: the exchange's next diff is relative to what it last pushed, and the
    # client's book follows the exchange's exactly.
    await sim.set_faults(stall_pushes_s=0)
    await sim.place(MARKET, SELL, "0.3", "0.1385")
    expected: State = await direct.query(VIEW)
    assert expected != to_state(moved)
    await until(lambda: client.book.state == expected)
    assert "diff" in client.log[mark:]
    assert await metric(gw, RESYNCS) == 1
    assert await rest_depth(gw) == (await sim.get(DEPTH), "HIT", 0)


async def test_a_book_the_exchange_agrees_with_stays_served_and_young_without_any_push(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """A quiet market gets no pushes at all: the checks alone keep its book confirmed."""
    max_book_age = 1.0
    gw = await gateway(sim, start_gateway_for, verify_interval=VERIFY_INTERVAL,
                       verify_confirm_after=1.0, max_book_age=max_book_age)
    _, expected = await follow_settled_book(sim, gw, sockets)
    for _ in range(6):  # three times the maximum age in all
        await asyncio.sleep(max_book_age / 2)
        body, cache, age = await rest_depth(gw)
        assert (body, cache) == (expected, "HIT")
        assert age <= 1
    assert await metric(gw, RESYNCS) is None
