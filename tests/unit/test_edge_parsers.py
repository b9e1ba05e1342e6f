"""Every parser at the edge, fed anything: it answers a value or the gateway's own error type.

Property-based (hypothesis). A foreign exception (``UnicodeError``, ``RecursionError``,
``ValueError`` from ``int``...) escaping one of these is a 500 on the wire.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.authenticator import bearer_token
from gateway.auth.grants import OAuthError, client_credentials
from gateway.core.forwarded import client_address
from gateway.core.jsonrpc import MalformedFrame, parse_request
from gateway.core.orders import MarketRules, parse_order_fields, validate_order
from gateway.core.rpc_params import METHODS, InvalidParams, parse_call
from gateway.core.wire import MAX_INT64, wire_integer
from gateway.errors import GatewayError
from gateway.services.order_views import Page
from gateway.web.exchange import PAGING, check_query
from tests.unit.test_orders import BTGBTC

CONTENT_TYPES = st.sampled_from([None, "", "application/json", "application/json; charset=x",
                                 "application/x-www-form-urlencoded", "text/plain"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
ORDER_FIELDS = st.dictionaries(
    st.sampled_from(["side", "amount", "price", "market", "x"]) | st.text(max_size=5),
    st.text(max_size=30) | st.sampled_from(["1", "2", "0.5", "1e3", "-1", "\u0661"]), max_size=5)


@given(st.text(max_size=40))
def test_a_wire_integer_is_ascii_digits_within_bounds(text: str) -> None:
    value = wire_integer(text)
    if value is not None:
        assert text.isascii()
        assert text.isdigit()
        assert 0 <= value <= MAX_INT64


@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
       CONTENT_TYPES)
def test_an_order_body_parses_or_is_an_invalid_order(body: bytes, content_type: str | None
                                                     ) -> None:
    try:
        fields = parse_order_fields(body, content_type)
    except GatewayError:
        return
    assert all(isinstance(name, str) and isinstance(value, str)
               for name, value in fields.items())


@given(ORDER_FIELDS, st.sampled_from([BTGBTC]))
def test_order_fields_validate_or_are_an_invalid_order(fields: dict[str, str],
                                                       rules: MarketRules) -> None:
    try:
        order = validate_order(rules.name, fields, rules)
    except GatewayError:
        return
    assert order.amount > 0


@given(st.dictionaries(st.sampled_from(["limit", "offset", "coin_code", "x", ""]),
                       st.text(max_size=30), max_size=4))
def test_a_query_is_accepted_or_a_bad_query(query: dict[str, str]) -> None:
    request = make_mocked_request("GET", "/v1/x", headers={})
    request = request.clone(rel_url=request.rel_url.with_query(query))
    try:
        check_query(request, PAGING)
        Page.parse(request.query.get("limit"), request.query.get("offset"))
    except GatewayError:
        return
    assert set(request.query) <= PAGING


@given(st.none() | st.text(max_size=100) | st.builds(lambda t: f"Bearer {t}", st.text()))
def test_an_authorization_header_is_a_token_or_a_refusal(header: str | None) -> None:
    try:
        token = bearer_token(header)
    except GatewayError:
        return
    assert token
    assert " " not in token


@given(st.none() | st.text(max_size=60) | st.builds(lambda t: f"Basic {t}", st.text()),
       st.dictionaries(st.sampled_from(["client_id", "client_secret", "scope", "grant_type"]),
                       st.text(max_size=20)))
def test_client_credentials_are_read_or_an_oauth_error(header: str | None,
                                                       form: dict[str, str]) -> None:
    try:
        credentials = client_credentials(header, form)
    except OAuthError:
        return
    assert credentials.client_id


@given(st.text(max_size=30) | st.none(), st.text(max_size=200) | st.none(),
       st.text(max_size=200) | st.none())
def test_a_forwarded_chain_gives_an_address_and_never_raises(
    peer: str | None, forwarded: str | None, forwarded_for: str | None
) -> None:
    trusted = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    address = client_address(peer, forwarded, forwarded_for, trusted)
    assert address is None or isinstance(address, str)


@given(st.text(max_size=300) | st.binary(max_size=300)
       | st.builds(json.dumps, JSON_VALUES)
       | st.builds(lambda m, p, i: json.dumps({"method": m, "params": p, "id": i}),
                   st.sampled_from(sorted(METHODS)) | st.text(max_size=10),
                   st.lists(JSON_VALUES, max_size=4), st.integers() | st.none()))
def test_a_json_rpc_frame_is_a_call_or_an_rpc_error(frame: str | bytes) -> None:
    try:
        request = parse_request(frame)
    except MalformedFrame:
        return
    if request.method not in METHODS:
        return
    with contextlib.suppress(InvalidParams):
        parse_call(request.method, request.params)


@pytest.mark.parametrize("depth", [10_000])
def test_a_deeply_nested_order_body_is_an_invalid_order(depth: int) -> None:
    with pytest.raises(GatewayError):
        parse_order_fields(b"[" * depth, "application/json")
