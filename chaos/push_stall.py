"""The exchange stalls its WebSocket pushes but still answers pings and queries; its book moves.

Two replicas, each with a WebSocket client following one market's depth, so each keeps a live
book from its upstream subscription and serves REST depth from it (``X-Cache: HIT``, ``Age``
from the book's last confirmation). Then the simulator stalls its pushes (``stall_pushes_s``)
and an order moves its book: no push tells the gateway, its ``depth.query`` checks disagree.
REST depth must stop serving the stale book as fresh once it is ``ws.max_book_age`` old (until
then it says how old it is), and serve the exchange's own book through the cache instead. The
upstream connections stay up through the stall (the exchange answers the gateway's pings);
when pushes resume, the clients get them again. Resyncs are off here (their confirmation wait is
longer than the scenario), so only the age rule acts.

``seconds_to_recover``: from the move until every replica serves the exchange's moved book.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from chaos.desk import result
from chaos.processes import Lab, Replica

NAME = "push_stall"
MARKET = "BTGBTC"  # a market the order scenarios leave alone
DEPTH = f"/v1/markets/{MARKET}/depth"
VERIFY_INTERVAL = 0.5
STALL_S = 120  # longer than the scenario: the pushes stay stalled until it clears the fault
PATIENCE = 10.0  # bounds each wait beyond the maximum age; it measures nothing
POLL = 0.1
Served = tuple[Any, str | None, int]  # REST depth's body, X-Cache and Age


def settings(max_book_age: float) -> dict[str, dict[str, object]]:
    return {"ws": {"verify_interval": VERIFY_INTERVAL, "verify_confirm_after": 600,
                   "max_book_age": max_book_age, "heartbeat": 1}}


class Follower:
    """A WebSocket client of one replica following ``MARKET``'s depth; counts the pushes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushes = 0
        self.subscribed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = message.json()
            if frame.get("id") == 1 and not self.subscribed.done():
                self.subscribed.set_result(frame.get("error") is None)
            elif frame.get("method") == "depth.update":
                self.pushes += 1

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def following(lab: Lab, replica: Replica) -> AsyncIterator[Follower]:
    ws = await lab.http.ws_connect(
        f"ws://{replica.base.removeprefix('http://')}/ws",
        headers={"Authorization": f"Bearer {lab.tokens['trader-a']}"})
    follower = Follower(ws)
    try:
        await ws.send_json({"method": "depth.subscribe", "params": [MARKET, 10, "0"], "id": 1})
        if not await asyncio.wait_for(follower.subscribed, PATIENCE):
            raise ValueError(f"depth.subscribe on {replica.base} was refused")
        yield follower
    finally:
        await follower.close()


async def rest_depth(lab: Lab, replica: Replica) -> Served:
    answer = await lab.gateway(replica, "GET", DEPTH, "trader-a")
    return answer.body, answer.headers.get("X-Cache"), int(answer.headers.get("Age", "-1"))


async def until_served(lab: Lab, replica: Replica, book: Any, within: float, *,
                       live: bool = False) -> list[Served]:
    """REST depth of ``replica``, polled until it is ``book`` (a ``HIT`` when ``live``), within
    ``within`` seconds; every answer seen."""
    seen = [await rest_depth(lab, replica)]
    deadline = time.monotonic() + within
    while (seen[-1][0] != book or (live and seen[-1][1] != "HIT")) and (
            time.monotonic() < deadline):
        await asyncio.sleep(POLL)
        seen.append(await rest_depth(lab, replica))
    return seen


async def run(lab: Lab, short: bool) -> dict[str, object]:
    max_book_age = 2.0 if short else 5.0
    async with lab.replicas(NAME, 2, settings(max_book_age)) as replicas:
        for side, price in ((1, "0.0170"), (2, "0.0150")):
            await lab.exchange("POST", f"/v1/markets/{MARKET}/orders",
                               data={"side": str(side), "amount": "1", "price": price})
        before = await lab.exchange("GET", DEPTH)
        # Followed only now, so each live book starts from the exchange's snapshot of this book.
        async with following(lab, replicas[0]) as first, following(lab, replicas[1]) as second:
            return await _stall(lab, replicas, [first, second], before, max_book_age)


async def _stall(lab: Lab, replicas: list[Replica], followers: list[Follower], before: Any,
                 max_book_age: float) -> dict[str, object]:
    if not await _pushes_after(followers, [0, 0]):
        raise ValueError("a follower never got the depth snapshot")
    live = [(await until_served(lab, replica, before, PATIENCE, live=True))[-1]
            for replica in replicas]
    connections = (await lab.stats())["ws_connections"]

    await lab.faults(stall_pushes_s=STALL_S)
    await lab.exchange("POST", f"/v1/markets/{MARKET}/orders",
                       data={"side": "1", "amount": "0.7", "price": "0.0165"})
    moved_at = time.monotonic()
    moved = await lab.exchange("GET", DEPTH)
    seen = await asyncio.gather(*(until_served(lab, replica, moved,
                                               max_book_age + PATIENCE)
                                  for replica in replicas))
    served_at = time.monotonic()
    stayed = (await lab.stats())["ws_connections"] == connections
    stale_ages = [age for answers in seen for body, cache, age in answers
                  if body == before and cache == "HIT"]

    held = [follower.pushes for follower in followers]
    await lab.faults(stall_pushes_s=0)
    resumed = await _pushes_after(followers, held)
    checks = {
        "live_book_served_fresh": all(body == before and cache == "HIT" and age <= 1
                                      for body, cache, age in live),
        # Right after the move nothing has told the gateway yet: the stale book is served.
        "stale_book_served_at_first": bool(stale_ages),
        "stale_book_said_its_age": all(0 <= age <= max_book_age for age in stale_ages),
        "stale_book_no_longer_served": all(answers[-1][0] == moved for answers in seen),
        "upstream_connections_stayed": stayed,
        "pushes_resume_after_the_stall": resumed,
    }
    return result(NAME, 0, None, served_at - moved_at if checks[
        "stale_book_no_longer_served"] else None, checks,
        max_book_age_s=max_book_age, stale_hits=len(stale_ages),
        oldest_stale_age_s=max(stale_ages, default=None),
        served_after=sorted({str(answers[-1][1]) for answers in seen}))


async def _pushes_after(followers: list[Follower], held: list[int]) -> bool:
    """Whether every follower gets a push within ``PATIENCE`` once pushes resume (the exchange
    pushes the change it held back)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if all(f.pushes > count for f, count in zip(followers, held, strict=True)):
            return True
        await asyncio.sleep(POLL)
    return False
