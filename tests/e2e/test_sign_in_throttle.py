"""Guessing client secrets at ``POST /auth/token``: backed off per client id and per address.

Real gateways in front of the simulator; the backoff is shortened so a test waits seconds, not
minutes. The Redis test runs two replicas sharing one count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from typing import Any

import pytest

from gateway.settings import RedisSettings, SignInSettings
from tests.conftest import StartGateway
from tests.e2e.test_gateway_tokens import SECRETS, assert_oauth_error, basic, token_request
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

SIGN_IN = SignInSettings(free_failures=2, base_delay=30.0, max_delay=60.0, forget_after=600.0)
FORM = {"grant_type": "client_credentials"}


async def throttled_gateway(sim: RunningSimulator, start_gateway_for: StartGateway,
                            redis: RedisSettings | None = None, sign_in: SignInSettings = SIGN_IN,
                            trusted: tuple[str, ...] = ()) -> RunningGateway:
    settings = gateway_settings(sim, redis)
    auth = dataclasses.replace(settings.auth, sign_in=sign_in)
    server = dataclasses.replace(settings.server, trusted_proxies=tuple(
        ipaddress.ip_network(cidr) for cidr in trusted))
    return await start_gateway_for(
        sim, settings=dataclasses.replace(settings, auth=auth, server=server), redis=redis)


async def guess(gw: RunningGateway, client_id: str, secret: str = "wrong-guess-0000000",
                extra: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    return await token_request(gw, data=FORM, headers={**basic(client_id, secret),
                                                       **(extra or {})})


async def test_past_the_free_failures_a_client_id_waits_even_with_the_right_secret(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await throttled_gateway(sim, start_gateway_for)
    for _ in range(SIGN_IN.free_failures + 1):
        status, body, _ = await guess(gw, "demo-trader")
        assert_oauth_error(status, body, 401, "invalid_client")
    status, body, headers = await guess(gw, "demo-trader", SECRETS["demo-trader"])
    assert_oauth_error(status, body, 429, "slow_down")
    assert 29 <= int(headers["Retry-After"]) <= 30
    status, body, _ = await guess(gw, "pricing-bot", SECRETS["pricing-bot"])
    assert status == 429, "the address is throttled too: another id from it must wait"


async def test_a_success_resets_the_client_id_but_not_the_address(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await throttled_gateway(sim, start_gateway_for, trusted=("127.0.0.0/8",))
    for round_number in range(3):  # each round from its own address, behind the trusted proxy
        origin = {"X-Forwarded-For": f"203.0.113.{round_number}"}
        for _ in range(SIGN_IN.free_failures):
            assert (await guess(gw, "demo-trader", extra=origin))[0] == 401
        assert (await guess(gw, "demo-trader", SECRETS["demo-trader"], extra=origin))[0] == 200
    # The last round's address kept its count: one more failure from it is past the free ones.
    origin = {"X-Forwarded-For": "203.0.113.2"}
    assert (await guess(gw, "pricing-bot", extra=origin))[0] == 401
    assert (await guess(gw, "pricing-bot", SECRETS["pricing-bot"], extra=origin))[0] == 429


async def test_naming_another_address_does_not_escape_the_count_without_a_trusted_proxy(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await throttled_gateway(sim, start_gateway_for)
    assert gw.settings.server.trusted_proxies == ()  # no proxy trusted: the header is ignored
    for number in range(SIGN_IN.free_failures + 1):
        status, _, _ = await token_request(
            gw, data=FORM, headers={**basic(f"ghost-{number}", "x" * 20),
                                    "X-Forwarded-For": f"203.0.113.{number}"})
        assert status == 401
    status, _, _ = await token_request(
        gw, data=FORM, headers={**basic("ghost-new", "x" * 20), "X-Forwarded-For": "198.51.100.1"})
    assert status == 429, "a client cannot escape its address's count by naming another"


@pytest.mark.redis
async def test_replicas_share_one_count_through_redis(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_url: str, key_prefix: str
) -> None:
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix)
    a, b = [await throttled_gateway(sim, start_gateway_for, shared) for _ in range(2)]
    for replica in (a, b, a):
        assert (await guess(replica, "demo-trader"))[0] == 401
    for replica in (a, b):
        status, body, _ = await guess(replica, "demo-trader", SECRETS["demo-trader"])
        assert_oauth_error(status, body, 429, "slow_down")


async def test_concurrent_guesses_beyond_the_secret_check_slots_are_turned_away_fast(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    """With one slot and no queueing, a burst cannot pile scrypt work onto the cores."""
    lenient = SignInSettings(free_failures=1000, secret_checks=1, secret_check_wait=0.001)
    gw = await throttled_gateway(sim, start_gateway_for, sign_in=lenient)
    answers = await asyncio.gather(*(guess(gw, f"ghost-{n}") for n in range(20)))
    statuses = sorted(status for status, _, _ in answers)
    assert 401 in statuses
    assert 503 in statuses
    busy = next(answer for answer in answers if answer[0] == 503)
    assert_oauth_error(busy[0], busy[1], 503, "temporarily_unavailable")
    assert busy[2]["Retry-After"] == "1"
