"""Bounded waits for tests that watch something happen in real time (never a timing assertion)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Poll ``check`` until it holds or ``within`` seconds (real time) have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True
