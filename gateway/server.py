"""Running the gateway process: the app on its address, on uvloop where available."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.app import create_app
from gateway.settings import Settings


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_gateway(settings: Settings) -> None:
    app = create_app(settings)
    web.run_app(app, host=settings.server.host, port=settings.server.port, access_log=None,
                shutdown_timeout=settings.server.shutdown_timeout, loop=new_event_loop(),
                print=lambda text: None)
