"""A Redis that comes back without its data stops the desk until an admin acknowledges the loss;
a Redis that keeps nothing on disk is refused at start.

Real processes: ``expie-gateway serve`` replicas (``tests.desk_processes``) on a ``redis-server``
of the test's own, started with an append-only file (``redis.require_persistence`` holds), then
killed and started again on the same port with its append-only directory deleted: Redis is back,
empty. The in-process tests of the admin endpoint delete every key under the test's prefix of the
shared Redis (the same loss, for that installation) or put back an older copy of them (a stale
replica). The start-up check runs against ``redis-server``s of the tests' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from gateway.errors import PersistenceRequired
from gateway.settings import RedisSettings
from tests.component.conftest import delete_prefixed
from tests.conftest import StartGateway
from tests.desk_processes import BUY, Desk, DeskFactory, orders_placed
from tests.gateway_harness import RunningGateway, gateway_settings, start_gateway
from tests.process_harness import RUN_TIMEOUT, cli, free_port, logged, process_config, serving
from tests.redis_server import own_redis
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

PATIENCE = 10.0  # seconds the replicas may take to notice (they check every 0.5 s)
PREFIX = "desk:"
REASON = "redis restarted without its append-only file; checked by ops"


async def readiness(desk: Desk, port: int) -> dict[str, Any]:
    async with desk.http.get(f"http://127.0.0.1:{port}/readyz") as response:
        assert response.status == 200  # a lost state leaves the replica in the Service
        body: dict[str, Any] = await response.json()
        return body


async def shared_state_everywhere(desk: Desk, ports: list[int], wanted: str) -> bool:
    return all([(await readiness(desk, port))["dependencies"]["shared_state"] == wanted
                for port in ports])


async def spools_empty(desk: Desk, ports: list[int]) -> bool:
    return all([(await readiness(desk, port))["audit_spool"]["pending"] == 0 for port in ports])


async def state_lost_gauge(desk: Desk, port: int) -> str:
    async with desk.http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return next(line for line in text.splitlines()
                if line.startswith("expie_gateway_state_lost "))


async def redis_point(url: str, key: str, *fields: str) -> list[str]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        return [value or "" for value in await client.hmget(key, list(fields))]
    finally:
        await client.aclose()


async def chain_in_redis(url: str) -> tuple[int, str]:
    """How many audit records Redis holds, and its epoch ('' for none)."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        return (await client.llen(f"{PREFIX}audit:records"),
                await client.hget(f"{PREFIX}cluster:epoch", "id") or "")
    finally:
        await client.aclose()


def audit_cli(*args: str | Path) -> tuple[int, str, str]:
    done = cli("audit", *args)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.timeout(120)
async def test_a_redis_back_without_its_data_stops_every_replica_until_acknowledged(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    checkpoint_file = tmp_path / "audit-checkpoint.json"
    with own_redis(redis_dir) as server, contextlib.ExitStack() as stack:
        async with aiohttp.ClientSession() as http:
            desk = await DeskFactory(sim, tmp_path, server.url, PREFIX, http, stack,
                                     require_persistence=True)()
            ports = [await desk.start(), await desk.start()]
            for number in range(3):
                await desk.placed_id(ports[number % 2], "trader-a")
            status, _, err = await asyncio.to_thread(
                audit_cli, "export", "--since", "1h", "--output", tmp_path / "day-1.jsonl",
                "--mark-exported", "--config", desk.config)
            assert status == 0, err
            checkpoint = json.loads(checkpoint_file.read_text(encoding="utf-8"))
            assert checkpoint["seq"] == 6  # three orders: an intent and an outcome each
            for number in range(2):
                await desk.placed_id(ports[number], "trader-b")  # records 7 to 10: never exported
            last_seq, last_hash = await redis_point(server.url, f"{PREFIX}audit:head",
                                                    "seq", "hash")
            (lost_epoch,) = await redis_point(server.url, f"{PREFIX}cluster:epoch", "id")
            assert (last_seq, checkpoint["epoch"]) == ("10", lost_epoch)
            assert await orders_placed(sim) == 5

            server.kill()
            server.wipe()
            server.start()

            assert await eventually(lambda: shared_state_everywhere(desk, ports, "lost"),
                                    PATIENCE)
            for port in ports:
                refused = await desk.place(port, "trader-a")
                assert (refused.status, refused.code) == (503, "state_lost")
                assert "acknowledge" in refused.body["error"]["message"]
                assert await state_lost_gauge(desk, port) == "expie_gateway_state_lost 1"
            assert await orders_placed(sim) == 5
            assert await chain_in_redis(server.url) == (0, "")  # no new chain, no new epoch

            status, out, _ = await asyncio.to_thread(audit_cli, "verify", "--config",
                                                     desk.config)
            verdict = json.loads(out)
            assert status == 1
            assert verdict["problem"].startswith(
                "the audit trail ends at seq 0, before the last exported checkpoint (seq 6, ")
            assert "a state loss is reported and not acknowledged" in verdict["problem"]
            assert verdict["state_loss"]["last_seq"] == 10
            assert verdict["state_loss"]["last_hash"] == last_hash
            assert verdict["state_loss"]["epoch"] == lost_epoch

            status, out, err = await asyncio.to_thread(
                audit_cli, "acknowledge-loss", "--reason", REASON, "--config", desk.config)
            assert status == 0, err
            segment = json.loads(out)
            assert (segment["seq"], segment["prev"]) == (11, last_hash)
            assert (segment["event"]["kind"], segment["event"]["action"]) == (
                "admin", "state_loss.acknowledge")
            params = segment["event"]["params"]
            assert (params["last_seq"], params["last_hash"], params["lost_epoch"],
                    params["in_place"], params["reason"]) == (
                "10", last_hash, lost_epoch, "false", REASON)

            assert await eventually(lambda: shared_state_everywhere(desk, ports, "ok"),
                                    PATIENCE)
            for port in ports:
                assert await state_lost_gauge(desk, port) == "expie_gateway_state_lost 0"
                assert (await desk.place(port, "trader-a", order=BUY)).status == 200
            assert await orders_placed(sim) == 7
            assert await eventually(lambda: spools_empty(desk, ports), PATIENCE)

            records = await desk.audit(ports[0])
            assert records[0]["seq"] == 11
            assert records[0]["event"]["params"] == params
            assert sorted((r["event"]["kind"], r["event"]["reason"] or r["event"]["outcome"]
                           or "") for r in records[1:]) == [
                ("intent", ""), ("intent", ""), ("outcome", "accepted"),
                ("outcome", "accepted"), ("refusal", "state_lost"), ("refusal", "state_lost")]

            status, out, err = await asyncio.to_thread(audit_cli, "verify", "--config",
                                                       desk.config)
            verdict = json.loads(out)
            assert status == 0, out + err
            (new_epoch,) = await redis_point(server.url, f"{PREFIX}cluster:epoch", "id")
            assert verdict == {
                "ok": True, "checked": 7, "problem": None, "seq": None,
                "checkpoint": {"seq": 6, "hash": checkpoint["hash"], "epoch": lost_epoch},
                "segments": [{"seq": 11, "follows_seq": 10, "follows_hash": last_hash,
                              "in_place": False, "lost_epoch": lost_epoch,
                              "epoch": new_epoch, "reason": REASON, "acknowledged": True,
                              "lost_after_checkpoint": [7, 10]}],
                "state_loss": None}

            desk.kill_all()
            for port in desk.processes:
                log = desk.log(port)
                assert logged(log, "state lost: ", level="ERROR",
                              logger="gateway.services.state_watch")
                assert "joined the acknowledged cluster epoch" in log


# --- in process, on the shared Redis under the test's prefix ------------------------------------

ORDERS = "/v1/markets/BCCBTC/orders"
ACKNOWLEDGE = "/admin/state-loss/acknowledge"


async def place(gateway: RunningGateway) -> tuple[int, Any]:
    status, body, _ = await gateway.call("POST", ORDERS, gateway.token(), data=dict(BUY))
    return status, body


async def acknowledge(gateway: RunningGateway, user: str = "desk-admin",
                      scopes: tuple[str, ...] = ("admin",)) -> tuple[int, Any]:
    status, body, _ = await gateway.call("POST", ACKNOWLEDGE, gateway.token(user, list(scopes)),
                                         json={"reason": REASON})
    return status, body


async def refusal_of(gateway: RunningGateway) -> tuple[int, str]:
    status, body = await acknowledge(gateway)
    return status, body["error"]["code"]


async def shared_state(gateway: RunningGateway) -> str:
    status, body, _ = await gateway.call("GET", "/readyz")
    assert status == 200
    state: str = body["dependencies"]["shared_state"]
    return state


async def every(gateways: list[RunningGateway], wanted: str) -> bool:
    return all([await shared_state(gateway) == wanted for gateway in gateways])


@pytest.mark.redis
async def test_the_admin_endpoint_acknowledges_a_loss_and_both_replicas_trade_again(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_client: redis.asyncio.Redis,
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix)
    replicas = [await start_gateway_for(sim, redis=shared) for _ in range(2)]
    assert (await place(replicas[0]))[0] == 200
    head = await redis_client.hmget(f"{key_prefix}audit:head", ["seq", "hash"])
    assert await refusal_of(replicas[0]) == (409, "state_not_lost")

    caplog.set_level(logging.ERROR, logger="gateway.services.state_watch")
    await delete_prefixed(redis_client, key_prefix)  # this installation's Redis, emptied
    assert await eventually(lambda: every(replicas, "lost"), PATIENCE)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith("state lost: the cluster epoch ")
    status, body = await place(replicas[1])
    assert (status, body["error"]["code"]) == (503, "state_lost")
    status, body = await acknowledge(replicas[1], "demo-trader", ("orders:write",))
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")

    status, body = await acknowledge(replicas[1])
    assert status == 200, body
    record = body["acknowledged"]
    assert (record["seq"], record["prev"], record["event"]["user"]) == (
        3, head[1].decode(), "desk-admin")
    assert record["event"]["params"]["last_seq"] == "2"
    assert await every(replicas[1:], "ok")  # the replica that acknowledged, at once
    assert await eventually(lambda: every(replicas, "ok"), PATIENCE)
    assert [(await place(gateway))[0] for gateway in replicas] == [200, 200]
    assert await redis_client.hmget(f"{key_prefix}audit:anchor", ["seq", "hash"]) == head
    assert await refusal_of(replicas[0]) == (409, "state_not_lost")


@pytest.mark.redis
async def test_a_stale_copy_of_redis_is_a_loss_and_its_records_are_exported_before_acknowledging(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_client: redis.asyncio.Redis,
    redis_url: str, key_prefix: str, tmp_path: Path,
) -> None:
    gateway = await start_gateway_for(sim, redis=RedisSettings(url=redis_url,
                                                               key_prefix=key_prefix))
    assert (await place(gateway))[0] == 200
    keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
    copy = {key: await redis_client.dump(key) for key in keys}  # what a lagging replica holds
    assert (await place(gateway))[0] == 200
    head = await redis_client.hmget(f"{key_prefix}audit:head", ["seq", "hash"])
    for key, value in copy.items():
        await redis_client.restore(key, 0, value, replace=True)  # failed over to the copy
    assert await eventually(lambda: every([gateway], "lost"), PATIENCE)

    status, body = await acknowledge(gateway)
    assert (status, body["error"]["code"]) == (409, "records_not_exported")
    assert body["error"]["message"].startswith("Redis still holds records 1 to 2 that no "
                                               "export wrote out")
    config = tmp_path / "audit.yaml"
    config.write_text(json.dumps({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "audit": {"checkpoint_file": str(tmp_path / "checkpoint.json")}}), encoding="utf-8")
    status, _, err = await asyncio.to_thread(audit_cli, "export", "--since", "1h", "--output",
                                             tmp_path / "saved.jsonl", "--mark-exported",
                                             "--config", config)
    assert (status, "marked exported through seq 2" in err) == (0, True)

    status, body = await acknowledge(gateway)
    assert status == 200, body
    assert (body["acknowledged"]["seq"], body["acknowledged"]["prev"]) == (5, head[1].decode())
    assert (await place(gateway))[0] == 200
    status, out, _ = await asyncio.to_thread(audit_cli, "verify", "--config", config)
    verdict = json.loads(out)
    assert (status, verdict["checked"]) == (0, 3)
    assert verdict["segments"][0]["lost_after_checkpoint"] == [3, 4]


@pytest.mark.redis
async def test_busy_replicas_never_take_their_own_appends_for_a_loss(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_url: str, key_prefix: str,
) -> None:
    """Each checks Redis as often as it may while both append as fast as they can: a view that
    left before an append's reply came back shows an older head, and that is no loss."""
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix, state_check_interval=0.01)
    replicas = [await start_gateway_for(sim, redis=shared) for _ in range(2)]
    answers = await asyncio.gather(*(place(replicas[n % 2]) for n in range(120)))
    codes = {body["error"]["code"] for status, body in answers if status != 200}
    assert codes <= {"rate_limited"}
    assert await every(replicas, "ok")


async def test_the_acknowledgement_without_redis_says_there_is_nothing_to_lose(
    gw: RunningGateway,
) -> None:
    status, body = await acknowledge(gw)
    assert (status, body["error"]["code"]) == (409, "state_not_lost")
    assert await shared_state(gw) == "ok"


# --- start-up: the persistence check ------------------------------------------------------------


def test_serve_refuses_a_redis_that_keeps_nothing_on_disk(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    with own_redis(tmp_path, persistent=False) as server:
        config = process_config(tmp_path, sim, redis={"url": server.url})
        with serving(config, free_port()) as process:
            assert process.wait(timeout=RUN_TIMEOUT) == 1
            assert process.stderr is not None
            stderr = process.stderr.read().decode()
    assert ("expie-gateway: redis.require_persistence: Redis keeps no append-only file "
            "(appendonly no)") in stderr


async def test_a_redis_that_refuses_config_get_is_a_warning_and_the_gateway_starts(
    sim: RunningSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with own_redis(tmp_path, persistent=False) as server:
        admin = redis.asyncio.Redis.from_url(server.url)
        try:  # what a managed Redis grants: everything but CONFIG
            await admin.acl_setuser("gateway", enabled=True, passwords=["+gateway-pass"],
                                    keys=["*"], channels=["*"], commands=["+@all", "-config"])
        finally:
            await admin.aclose()
        redis_settings = RedisSettings(url=f"redis://gateway:gateway-pass@127.0.0.1:"
                                           f"{server.port}/0", require_persistence=True)
        settings = dataclasses.replace(gateway_settings(sim), redis=redis_settings)
        caplog.set_level(logging.WARNING, logger="gateway.stores.redis_persistence")
        gateway = await start_gateway(sim, settings=settings)
        try:
            assert (await place(gateway))[0] == 200
        finally:
            await gateway.http.close()
            await gateway.server.close()
    warning = next(r for r in caplog.records if r.name == "gateway.stores.redis_persistence")
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("redis.require_persistence: Redis refuses CONFIG GET")


async def test_a_gateway_on_redis_without_persistence_does_not_start(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    with own_redis(tmp_path, persistent=False) as server:
        settings = dataclasses.replace(gateway_settings(sim), redis=RedisSettings(
            url=server.url, require_persistence=True))
        with pytest.raises(PersistenceRequired) as caught:
            await start_gateway(sim, settings=settings)
    assert str(caught.value).startswith("redis.require_persistence: ")
