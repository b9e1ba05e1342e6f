"""``expie-sim``: run the Expie simulator on a loopback address."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from gateway.core.mapping_reader import ConfigError
from simulator.app import create_app
from simulator.banner import demo_banner
from simulator.config import load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="expie-sim", description="Run the Expie simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--config", type=Path, default=Path("config/simulator.yaml"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the market activity")
    parser.add_argument("--activity", type=float, default=0.0,
                        help="market activity in events per second (0 = a quiet market)")
    parser.add_argument("--push-interval", type=float, default=None,
                        help="seconds between WebSocket push polls (overrides the config)")
    parser.add_argument("--demo", action="store_true",
                        help="print the addresses, a token and example calls at start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"expie-sim: {exc}", file=sys.stderr)
        return 2
    if args.push_interval is not None:
        if not 0.01 <= args.push_interval <= 60:
            print("expie-sim: --push-interval must be between 0.01 and 60", file=sys.stderr)
            return 2
        config = config.with_push_interval(args.push_interval)
    app = create_app(config, seed=args.seed, activity=args.activity)
    if args.demo:
        print(demo_banner(config, args.host, args.port), flush=True)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                loop=_new_loop())
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator, absent on some platforms
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
