"""``expie-gateway``: the gateway's command line.

Commands are added as the gateway grows (serve, token, users, audit, check-config, demo); today it
reports its version and lists what it has.
"""

from __future__ import annotations

import argparse
import sys

from gateway import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expie-gateway",
        description="Authenticated REST + WebSocket gateway in front of the Expie exchange API.",
    )
    parser.add_argument("--version", action="version", version=f"expie-gateway {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
