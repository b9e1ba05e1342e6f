"""Running the gateway process: listen, serve, and on SIGTERM drain before stopping.

The drain, in order: ``/readyz`` answers 503 ``draining`` at once; the listener keeps accepting
for ``server.drain_delay`` seconds (the endpoints of a Kubernetes Service take that long to drop
this pod); then it stops accepting, closes WebSockets with 1001, lets in-flight requests finish
(bounded by ``server.shutdown_timeout``), writes the audit spool (bounded) and returns. A second
signal skips what is left of the delay.

Under ``serve --workers N`` each worker runs this, on the port it shares with the others
(``SO_REUSEPORT``); ``gateway.supervisor`` starts them and forwards the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal

from aiohttp import web

from gateway.app import create_app
from gateway.keys import LIFECYCLE
from gateway.listening import ListenFailed, listen_failed
from gateway.settings import Settings
from gateway.web.edge import GatewayRunner

__all__ = ["ListenFailed", "listen", "new_event_loop", "run_gateway"]

logger = logging.getLogger("gateway.server")
PARENT_CHECK_INTERVAL = 0.5  # seconds between a worker's checks that its supervisor is alive


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


def run_gateway(settings: Settings, *, worker_of: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain; ``ListenFailed`` if the port cannot be had.

    ``worker_of``: the pid of the supervisor (``serve --workers N``) this process is a worker of.
    The port is then opened with ``SO_REUSEPORT`` beside the other workers' sockets, and the
    worker drains as on SIGTERM if that supervisor goes away.
    """
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(settings, worker_of))
    finally:
        loop.close()


async def _serve(settings: Settings, worker_of: int | None) -> None:
    app = create_app(settings)
    runner = GatewayRunner(app, shutdown_timeout=settings.server.shutdown_timeout)
    await runner.setup()
    watch: asyncio.Task[None] | None = None
    try:
        await listen(runner, settings.server.host, settings.server.port,
                     reuse_port=worker_of is not None)
        # Objects made at start-up live as long as the process: keep them out of every collection.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        signals = _signals()
        if worker_of is not None:
            watch = asyncio.create_task(_watch_parent(worker_of, signals))
        await signals.get()
        app[LIFECYCLE].draining = True
        logger.info("draining: /readyz answers 503; still accepting for %g s",
                    settings.server.drain_delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signals.get(), settings.server.drain_delay)
        logger.info("stopping: no new connections; open requests have %g s",
                    settings.server.shutdown_timeout)
    finally:
        if watch is not None:
            watch.cancel()
        await runner.cleanup()
    logger.info("stopped")


async def listen(runner: web.AppRunner, host: str, port: int, *, reuse_port: bool = False
                 ) -> None:
    """Open ``host:port`` for ``runner`` and say so; one clear ``ListenFailed`` if it cannot.

    ``reuse_port``: ``SO_REUSEPORT``, so the workers of one supervisor share the port (the kernel
    spreads new connections over their sockets).
    """
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        raise listen_failed(host, port, exc) from None
    logger.info("listening on http://%s:%d", host, port)


async def _watch_parent(parent: int, signals: asyncio.Queue[int]) -> None:
    """Drain, as on SIGTERM, once the supervisor ``parent`` is gone (killed, not signalled)."""
    while True:
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
        if os.getppid() != parent:
            break
    logger.warning("the supervisor (pid %d) is gone: draining", parent)
    signals.put_nowait(signal.SIGTERM)


def _signals() -> asyncio.Queue[int]:
    """SIGTERM and SIGINT as they arrive (the first starts the drain, a second cuts it short)."""
    received: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, received.put_nowait, number)
    return received
