"""The simulator's composition root: ``create_app`` builds the engine, REST, WebSocket, control
endpoints and the optional market activity, and wires their lifetimes into the aiohttp app."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from simulator.activity import Activity
from simulator.config import SimConfig
from simulator.control import setup_control_routes
from simulator.engine.opening import open_exchange
from simulator.faults import Faults
from simulator.keys import ACCOUNTS_BY_TOKEN, CONFIG, COUNTERS, EXCHANGE, FAULTS, WS_SERVER
from simulator.rest import setup_routes
from simulator.stats import RestCounters
from simulator.ws.server import WsServer


def create_app(
    config: SimConfig, *, seed: int = 0, activity: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application()
    exchange = open_exchange(config, clock)
    faults = Faults(rng=random.Random(seed))
    app[CONFIG] = config
    app[EXCHANGE] = exchange
    app[FAULTS] = faults
    app[COUNTERS] = RestCounters()
    app[ACCOUNTS_BY_TOKEN] = {account.token: account for account in config.accounts}
    app[WS_SERVER] = WsServer(exchange, config, faults)
    setup_routes(app)
    setup_control_routes(app)
    app.router.add_get("/ws", app[WS_SERVER].handle)
    app.cleanup_ctx.append(_ws_lifetime)
    # aiohttp waits for open handlers before cleanup: close the sockets first so it need not.
    app.on_shutdown.append(_close_sockets)
    if activity > 0:
        app.cleanup_ctx.append(_activity_lifetime(Activity(exchange, activity, seed)))
    return app


async def _ws_lifetime(app: web.Application) -> AsyncIterator[None]:
    await app[WS_SERVER].start()
    yield
    await app[WS_SERVER].close()


async def _close_sockets(app: web.Application) -> None:
    await app[WS_SERVER].close()


def _activity_lifetime(
    activity: Activity,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        activity.seed_books()
        task = asyncio.create_task(activity.run(), name="sim-activity")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return lifetime
