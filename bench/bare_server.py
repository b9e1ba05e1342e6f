"""The baseline server: one aiohttp handler answering ``GET /`` with a constant JSON body.

``--size`` pads the body to the size of the response it stands in for. It runs on uvloop in one
process, with no access log, exactly like ``expie-sim``, and binds loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

MIN_SIZE = len(b'{"pad":""}')


def constant_body(size: int) -> bytes:
    """A JSON object of exactly ``max(size, MIN_SIZE)`` bytes."""
    return json.dumps({"pad": "x" * max(0, size - MIN_SIZE)}, separators=(",", ":")).encode()


def create_app(body: bytes) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/", handler)
    return app


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator, as in expie-sim
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Constant-body aiohttp baseline server.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=100, help="body size in bytes")
    args = parser.parse_args()
    web.run_app(create_app(constant_body(args.size)), host="127.0.0.1", port=args.port,
                access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()
