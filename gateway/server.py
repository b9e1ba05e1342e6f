"""Running the gateway process: the app on its address, on uvloop where available."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web

from gateway.app import create_app
from gateway.settings import Settings


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# The fan-out allocates a few short-lived objects per delivery; with thousands of sockets the
# default thresholds run a collection many times a second, and each one stops every delivery
# (a third of the CPU at 5,000 clients, measured with bench/ws_fanout.py). Nothing here relies on
# prompt collection of cycles.
GC_THRESHOLDS = (100_000, 50, 100)


def run_gateway(settings: Settings) -> None:
    app = create_app(settings)
    # Objects made at start-up live as long as the process: keep them out of every collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(app, host=settings.server.host, port=settings.server.port, access_log=None,
                shutdown_timeout=settings.server.shutdown_timeout, loop=new_event_loop(),
                print=lambda text: None)
