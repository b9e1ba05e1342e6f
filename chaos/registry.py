"""Every chaos scenario, by name, in the order ``python -m chaos`` runs them.

A scenario is one module with ``async def run(lab: Lab, short: bool) -> dict[str, object]``
(the JSON line it prints, ``ok`` among it); adding one is that module and a line here. Redis
restarted without its data comes first: it empties the lab's Redis, which the others then start
on afresh rather than find their own keys gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from chaos import (
    exchange_faults,
    push_stall,
    redis_emptied,
    redis_killed,
    replica_killed,
    retry_storm,
)
from chaos.processes import Lab

Scenario = Callable[[Lab, bool], Awaitable[dict[str, object]]]

SCENARIOS: dict[str, Scenario] = {
    redis_emptied.NAME: redis_emptied.run,
    redis_killed.NAME: redis_killed.run,
    replica_killed.NAME: replica_killed.run,
    exchange_faults.NAME: exchange_faults.run,
    retry_storm.NAME: retry_storm.run,
    push_stall.NAME: push_stall.run,
}
