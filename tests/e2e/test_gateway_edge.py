"""The edge against inputs a careless client or an attacker sends: a clear 4xx, never a 500.

A live gateway in front of the simulator. Requests a client library would refuse to send (non-
ASCII header bytes) go over a raw socket. Each test also checks that nothing reached the exchange
and that nothing was logged as an error (a traceback per request is a log flood on demand).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import quote

import jwt
import pytest

from tests.conftest import StartGateway
from tests.e2e.test_order_desk import audit_events
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
PATIENCE = 5.0  # bounds each wait for an answer; it measures nothing
DEADLINE = 0.5  # the head and body deadlines of the impatient gateway


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


# --- 3. JSON bodies: UTF-8, bounded nesting and digits ----------------------------------------


@pytest.mark.parametrize("body", [b'{"scope": "desk", "reason": "\xff\xfe"}', b"[" * 10_000,
                                  b'{"jti": ' + b"9" * 5000 + b"}", b'{"jti": "a"'],
                         ids=["not-utf8", "deep-nesting", "5000-digit-number", "truncated"])
@pytest.mark.parametrize("path", ["/admin/kill-switch", "/admin/tokens/revoke"])
async def test_an_admin_body_that_is_not_a_utf8_json_object_is_a_400(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture, body: bytes, path: str
) -> None:
    status, answer, _ = await gw.call(
        "POST", path, gw.token("desk-admin"), data=body,
        headers={"Content-Type": "application/json; charset=latin-1"})
    assert status == 400, answer
    assert "body" in answer["error"]["message"]
    assert errors_logged(caplog) == []


# --- 4. what aiohttp refuses answers in the gateway's shape ------------------------------------


def assert_gateway_error(status: int, headers: dict[str, str], body: bytes, expected: int,
                         code: str) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == code
    assert error["request_id"] == headers["x-request-id"]
    assert headers["server"] == "expie-gateway"
    return error


async def test_a_header_over_the_size_cap_is_a_431_that_does_not_echo_it(
    sim: RunningSimulator, gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    secret = b"Bearer eyJsecret" + b"A" * 9000
    status, headers, body = await raw_request(gw, get_with_authorization(TICKER, secret))
    assert_gateway_error(status, headers, body, 431, "headers_too_large")
    assert b"eyJsecret" not in body
    assert "eyJsecret" not in caplog.text
    assert upstream_calls(await sim.stats()) == {}
    assert errors_logged(caplog) == []


async def test_a_control_character_in_a_header_is_a_400_in_json(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    request = (b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Note: a\x01b\r\n"
               b"Connection: close\r\n\r\n")
    status, headers, body = await raw_request(gw, request)
    assert_gateway_error(status, headers, body, 400, "malformed_request")
    assert errors_logged(caplog) == []


async def test_a_request_line_over_the_cap_is_a_414_in_json(gw: RunningGateway) -> None:
    request = (f"GET /v1/markets?{'a' * 5000} HTTP/1.1\r\nHost: gateway\r\n"
               "Connection: close\r\n\r\n").encode()
    status, headers, body = await raw_request(gw, request)
    assert_gateway_error(status, headers, body, 414, "uri_too_long")


async def test_an_order_body_over_its_limit_is_a_413_audited_and_not_forwarded(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    body = "side=1&amount=1&price=0.2&" + "x" * 5000
    status, answer, headers = await gw.call(
        "POST", "/v1/markets/BCCBTC/orders", gw.token(), data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert headers["Server"] == "expie-gateway"
    refusals = await audit_events(gw, kind="refusal")
    assert [(event["action"], event["reason"]) for event in refusals] == [
        ("place", "payload_too_large")]
    assert upstream_calls(await sim.stats()) == {}


# --- 8. a head or a body that trickles in is cut off -------------------------------------------


@pytest.fixture
async def impatient(sim: RunningSimulator, start_gateway_for: StartGateway) -> RunningGateway:
    """A gateway whose head and body deadlines are short, so the test need not wait long."""
    settings = gateway_settings(sim)
    server = dataclasses.replace(settings.server, header_timeout=DEADLINE, body_timeout=DEADLINE)
    return await start_gateway_for(sim, settings=dataclasses.replace(settings, server=server))


async def test_a_head_that_trickles_in_gets_a_408_and_the_connection_closes(
    impatient: RunningGateway,
) -> None:
    reader, writer = await asyncio.open_connection(str(impatient.server.host),
                                                   impatient.server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gate")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)  # EOF: the gateway closed
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_an_order_body_that_trickles_in_gets_a_408_and_is_audited(
    sim: RunningSimulator, impatient: RunningGateway
) -> None:
    reader, writer = await asyncio.open_connection(str(impatient.server.host),
                                                   impatient.server.port)
    try:
        writer.write(f"POST /v1/markets/BCCBTC/orders HTTP/1.1\r\nHost: gateway\r\n"
                     f"Authorization: Bearer {impatient.token()}\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: 100\r\nConnection: close\r\n\r\nside=1".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"]["code"] == "request_timeout"
    refusals = await audit_events(impatient, kind="refusal")
    assert [event["reason"] for event in refusals] == ["request_timeout"]
    assert upstream_calls(await sim.stats()) == {}


# --- 9. no software version in Server -----------------------------------------------------------


async def test_no_response_names_the_software_version(gw: RunningGateway) -> None:
    for path, token in ((TICKER, gw.token()), (TICKER, None), ("/nowhere", None),
                        ("/healthz", None)):
        _, _, headers = await gw.call("GET", path, token)
        assert headers["Server"] == "expie-gateway", path


# --- 6. WebSocket subscriptions name markets the exchange lists ---------------------------------


@pytest.mark.parametrize(("method", "params"), [
    ("depth.subscribe", ["NOPEBTC", 10, "0"]),
    ("price.subscribe", ["BCCBTC", "NOPEBTC"]),
    ("deals.subscribe", ["NOPEBTC"]),
    ("depth.query", ["NOPEBTC", 10, "0"]),
    ("price.query", ["NOPEBTC"]),
])
async def test_a_websocket_call_on_an_unknown_market_is_refused_before_the_exchange(
    sim: RunningSimulator, gw: RunningGateway, method: str, params: list[Any]
) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}"}
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws:
        await ws.send_json({"method": method, "params": params, "id": 3})
        reply = json.loads(await asyncio.wait_for(ws.receive_str(), PATIENCE))
    assert reply["id"] == 3
    # The gateway's own words: the exchange says only "invalid argument", or "success".
    assert reply["error"] == {"code": 1, "message": "invalid argument: unknown market NOPEBTC"}
    stats = await sim.stats()
    assert all(not subscribed for subscribed in stats["subscriptions"].values()), stats


async def test_basic_credentials_with_a_non_ascii_byte_are_an_oauth_invalid_request(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"grant_type=client_credentials"
    request = (b"POST /auth/token HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
               b"Authorization: Basic \xc3\xa9\xc3\xa9\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    status, _, answer = await raw_request(gw, request)
    assert status == 400
    assert json.loads(answer)["error"] == "invalid_request"
    assert errors_logged(caplog) == []
