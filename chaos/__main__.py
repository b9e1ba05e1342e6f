"""``python -m chaos [--short] [--only NAME …]``: run the chaos scenarios, one JSON line each.

Exit status 1 when any scenario is not ok (a check failed, or it could not run: then its line
says why in ``error``), 0 otherwise. ``--short`` runs smaller versions (fewer orders, shorter
outages), the one ``make test`` runs. A failed scenario's gateway logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.common import BenchError
from chaos.processes import ChaosError, Lab, open_lab
from chaos.registry import SCENARIOS

LOG_LINES = 40  # of each of a failed scenario's gateway logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true",
                        help="smaller scenarios: fewer orders, shorter outages (make test)")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    return parser.parse_args(argv)


async def run_all(names: list[str], short: bool) -> bool:
    with tempfile.TemporaryDirectory(prefix="chaos-") as directory:
        async with open_lab(Path(directory)) as lab:
            results = [await run_one(lab, name, short) for name in names]
    return all(results)


async def run_one(lab: Lab, name: str, short: bool) -> bool:
    await lab.faults(clear=True)
    try:
        line = await SCENARIOS[name](lab, short)
    except (BenchError, ChaosError, aiohttp.ClientError, OSError, TimeoutError, KeyError,
            ValueError) as exc:
        line = {"scenario": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        await lab.faults(clear=True)
    print(json.dumps(line), flush=True)
    if line["ok"] is not True:
        for log in sorted(lab.directory.glob(f"{name}-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-LOG_LINES:]
            if tail:
                print(f"--- {log.name}", *tail, sep="\n", file=sys.stderr)
    return line["ok"] is True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SCENARIOS)
    return 0 if asyncio.run(run_all(names, args.short)) else 1


if __name__ == "__main__":
    sys.exit(main())
