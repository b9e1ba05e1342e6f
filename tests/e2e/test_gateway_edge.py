"""The edge against inputs a careless client or an attacker sends: a clear 4xx, never a 500.

A live gateway in front of the simulator. Requests a client library would refuse to send (non-
ASCII header bytes) go over a raw socket. Each test also checks that nothing reached the exchange
and that nothing was logged as an error (a traceback per request is a log flood on demand).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import jwt
import pytest

from tests.gateway_harness import RunningGateway
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
PATIENCE = 5.0  # bounds each wait for an answer; it measures nothing


async def raw_request(gw: RunningGateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is; the status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection(str(gw.server.host), gw.server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get_with_authorization(path: str, authorization: bytes) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n".encode()
            + b"Authorization: " + authorization + b"\r\n\r\n")


def upstream_calls(stats: dict[str, Any]) -> dict[str, int]:
    """Calls that reached the exchange, leaving out the markets list names are checked against."""
    return {route: count for route, count in stats["rest_requests"].items()
            if route != "GET /v1/markets"}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# --- 1. a token with a byte that is not ASCII ---------------------------------------------------


@pytest.mark.parametrize("tail", [b"\xc3\xa9", b"\xff", b"\xef\xbc\x91"],
                         ids=["e-acute", "invalid-utf8", "fullwidth-digit"])
@pytest.mark.parametrize("path", [TICKER, "/v1/balance/summary", "/admin/audit", "/ws"])
async def test_a_token_with_a_non_ascii_byte_is_a_401_on_every_protected_route(
    sim: RunningSimulator, gw: RunningGateway, caplog: pytest.LogCaptureFixture, tail: bytes,
    path: str,
) -> None:
    token = gw.token().encode() + tail
    status, headers, body = await raw_request(
        gw, get_with_authorization(path, b"Bearer " + token))
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_token"
    assert 'error_description="malformed token"' in headers["www-authenticate"]
    assert upstream_calls(await sim.stats()) == {}
    assert errors_logged(caplog) == []


async def test_server_auth_with_a_non_ascii_token_answers_an_error_and_keeps_the_socket(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        await ws.send_json({"method": "server.auth", "params": [gw.token() + "\u00e9"], "id": 7})
        reply = json.loads(await asyncio.wait_for(ws.receive_str(), PATIENCE))
        assert reply["id"] == 7
        assert reply["error"]["code"] != 0
        assert "malformed token" in reply["error"]["message"]
        await ws.send_json({"method": "server.ping", "params": [], "id": 8})
        pong = json.loads(await asyncio.wait_for(ws.receive_str(), PATIENCE))
        assert pong["result"] == "pong"
    assert errors_logged(caplog) == []


# --- 2. integers: ASCII digits, a bounded number of them --------------------------------------


@pytest.mark.parametrize("order_id", ["\u00b9\u00b2\u00b3", "\uff11\uff12", "9" * 3000,
                                      "92233720368547758070", "-1", "1e3"],
                         ids=["superscript", "fullwidth", "3000-digits", "over-int64",
                              "negative", "exponent"])
async def test_an_order_id_that_is_not_ascii_digits_is_a_400_and_goes_nowhere(
    sim: RunningSimulator, gw: RunningGateway, caplog: pytest.LogCaptureFixture, order_id: str
) -> None:
    token = gw.token()
    base = "/v1/markets/BCCBTC/orders"
    for method, path in (("GET", f"{base}/{quote(order_id)}"),
                         ("POST", f"{base}/{quote(order_id)}/_cancel")):
        status, body, _ = await gw.call(method, path, token)
        assert (status, body["error"]["code"]) == (400, "bad_order_id"), (method, body)
    assert upstream_calls(await sim.stats()) == {}
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("value", ["\u00b2", "\uff15", "1" * 3000, "-5", " 5"],
                         ids=["superscript", "fullwidth", "3000-digits", "negative", "space"])
@pytest.mark.parametrize("path", ["/v1/markets/BCCBTC/orders/_pending", "/v1/balance/history",
                                  "/admin/audit"])
async def test_a_paging_value_that_is_not_a_bounded_integer_is_a_400_and_goes_nowhere(
    sim: RunningSimulator, gw: RunningGateway, caplog: pytest.LogCaptureFixture, value: str,
    path: str,
) -> None:
    status, body, _ = await gw.call("GET", path, gw.token("desk-admin"), params={"limit": value})
    assert (status, body["error"]["code"]) == (400, "bad_query"), body
    assert "limit" in body["error"]["message"]
    assert upstream_calls(await sim.stats()) == {}
    assert errors_logged(caplog) == []


# --- 7. a token's lifetime is bounded when it is verified, not only when it is issued -----------


async def test_a_token_signed_by_our_key_for_decades_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    now = int(gw.clock())
    forever = jwt.encode(
        {"iss": gw.settings.auth.issuer, "aud": gw.settings.auth.audience, "sub": "demo-trader",
         "iat": now, "nbf": now, "exp": now + 40 * 365 * 86400, "jti": "forever",
         "scope": "market:read"},
        gw.keyring.signing.private_key, algorithm=gw.keyring.signing.algorithm.value,
        headers={"kid": gw.keyring.signing.kid})
    status, body, headers = await gw.call("GET", TICKER, forever)
    assert status == 401
    assert body["error"]["message"] == "token lifetime exceeds the maximum"
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream_calls(await sim.stats()) == {}
