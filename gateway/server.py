"""Running the gateway process: listen, serve, and on SIGTERM drain before stopping.

The drain, in order: ``/readyz`` answers 503 ``draining`` at once; the listener keeps accepting
for ``server.drain_delay`` seconds (the endpoints of a Kubernetes Service take that long to drop
this pod); then it stops accepting, closes WebSockets with 1001, lets in-flight requests finish
(bounded by ``server.shutdown_timeout``), writes the audit spool (bounded) and returns. A second
signal skips what is left of the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal

from aiohttp import web

from gateway.app import create_app
from gateway.errors import GatewayError
from gateway.keys import LIFECYCLE
from gateway.settings import Settings
from gateway.web.edge import GatewayRunner

logger = logging.getLogger("gateway.server")


class ListenFailed(GatewayError):
    """The listening socket could not be opened (the address is in use, or not this host's)."""

    code = "listen_failed"


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
    """Serve until SIGTERM or SIGINT, then drain; ``ListenFailed`` if the port cannot be had."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(settings))
    finally:
        loop.close()


async def _serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = GatewayRunner(app, shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    try:
        await listen(runner, settings.server.host, settings.server.port)
        # Objects made at start-up live as long as the process: keep them out of every collection.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        signals = _signals()
        await signals.get()
        app[LIFECYCLE].draining = True
        logger.info("draining: /readyz answers 503; still accepting for %g s",
                    settings.server.drain_delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signals.get(), settings.server.drain_delay)
        logger.info("stopping: no new connections; open requests have %g s",
                    settings.server.shutdown_timeout)
    finally:
        await runner.cleanup()
    logger.info("stopped")


async def listen(runner: web.AppRunner, host: str, port: int) -> None:
    """Open ``host:port`` for ``runner`` and say so; one clear ``ListenFailed`` if it cannot."""
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        reason = "the address is in use" if exc.errno == errno.EADDRINUSE else (
            exc.strerror or str(exc))
        raise ListenFailed(f"cannot listen on {host}:{port}: {reason}") from None
    logger.info("listening on http://%s:%d", host, port)


def _signals() -> asyncio.Queue[int]:
    """SIGTERM and SIGINT as they arrive (the first starts the drain, a second cuts it short)."""
    received: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, received.put_nowait, number)
    return received
