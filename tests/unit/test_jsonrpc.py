"""Expie JSON-RPC frames: strict request parsing and the reply/push envelopes."""

from __future__ import annotations

import json

import pytest

from gateway.core.jsonrpc import (
    INVALID_ARGUMENT,
    METHOD_NOT_FOUND,
    MalformedFrame,
    Request,
    encode_error,
    encode_notification,
    encode_result,
    parse_request,
)


def test_a_well_formed_request_is_parsed() -> None:
    frame = '{"method": "depth.subscribe", "params": ["BCCBTC", 10, "0"], "id": 7}'
    assert parse_request(frame) == Request(7, "depth.subscribe", ["BCCBTC", 10, "0"])


def test_bytes_and_extra_keys_are_accepted() -> None:
    frame = b'{"method": "server.ping", "params": [], "id": 1, "extra": true}'
    assert parse_request(frame) == Request(1, "server.ping", [])


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("not json", id="invalid-json"),
        pytest.param("", id="empty"),
        pytest.param(b"\xff\xfe", id="invalid-utf8"),
        pytest.param('["server.ping", [], 1]', id="array"),
        pytest.param('"server.ping"', id="string"),
        pytest.param('{"method": "server.ping", "params": []}', id="missing-id"),
        pytest.param('{"method": "server.ping", "params": [], "id": "1"}', id="string-id"),
        pytest.param('{"method": "server.ping", "params": [], "id": 1.0}', id="float-id"),
        pytest.param('{"method": "server.ping", "params": [], "id": true}', id="bool-id"),
        pytest.param('{"method": "server.ping", "params": [], "id": null}', id="null-id"),
        pytest.param('{"method": 5, "params": [], "id": 1}', id="number-method"),
        pytest.param('{"params": [], "id": 1}', id="missing-method"),
        pytest.param('{"method": "server.ping", "params": {}, "id": 1}', id="object-params"),
        pytest.param('{"method": "server.ping", "id": 1}', id="missing-params"),
        pytest.param("[" * 100_000, id="deeply-nested"),
    ],
)
def test_a_malformed_frame_is_refused(frame: str | bytes) -> None:
    with pytest.raises(MalformedFrame):
        parse_request(frame)


def test_a_result_reply_carries_a_null_error() -> None:
    assert json.loads(encode_result(3, {"status": "success"})) == {
        "error": None, "result": {"status": "success"}, "id": 3}


def test_an_error_reply_uses_the_standard_message_unless_given_one() -> None:
    assert json.loads(encode_error(4, INVALID_ARGUMENT)) == {
        "error": {"code": 1, "message": "invalid argument"}, "result": None, "id": 4}
    assert json.loads(encode_error(5, METHOD_NOT_FOUND))["error"]["message"] == "method not found"
    assert json.loads(encode_error(6, 11, "balance not enough"))["error"] == {
        "code": 11, "message": "balance not enough"}


def test_a_push_has_a_null_id() -> None:
    assert json.loads(encode_notification("price.update", ["BCCBTC", "0.149"])) == {
        "method": "price.update", "params": ["BCCBTC", "0.149"], "id": None}


def test_encoding_is_compact() -> None:
    assert " " not in encode_result(1, ["a", "b"])
