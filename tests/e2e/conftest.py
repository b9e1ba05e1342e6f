"""E2E-tier fixtures: a fake wall clock, and the real Redis of the component tier.

The Redis fixtures are the component tier's own (imported, so registered here too): a test that
needs Redis fails under ``CI=true`` when there is none and is skipped elsewhere, and every key
under its ``key_prefix`` is deleted afterwards.
"""

from __future__ import annotations

import time

import pytest

from tests.clock import FakeClock
from tests.component.conftest import key_prefix, redis_client, redis_relay, redis_url

__all__ = ["clock", "key_prefix", "redis_client", "redis_relay", "redis_url"]


@pytest.fixture
def clock() -> FakeClock:
    """Starts on a whole second near the real time (Redis entries expire on a realistic scale)."""
    return FakeClock(float(int(time.time())))
