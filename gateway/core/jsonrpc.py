"""Expie's JSON-RPC dialect over WebSocket text frames: parse requests, build replies and pushes.

Requests are ``{"method": str, "params": [...], "id": int}``; replies are
``{"error": null | {"code", "message"}, "result": ..., "id": ...}``; pushes are
``{"method": "<channel>.update", "params": [...], "id": null}``.

Parsing is strict (Expie closes the connection on any violation); what to do about a bad frame is
the caller's decision. Encoding returns ``str`` so a push can be encoded once and sent many times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, TypeAlias

INVALID_ARGUMENT: Final = 1
INTERNAL_ERROR: Final = 2
SERVICE_UNAVAILABLE: Final = 3
METHOD_NOT_FOUND: Final = 4
SERVICE_TIMEOUT: Final = 5
REQUIRE_AUTHENTICATION: Final = 6

MESSAGES: Final = {
    INVALID_ARGUMENT: "invalid argument",
    INTERNAL_ERROR: "internal error",
    SERVICE_UNAVAILABLE: "service unavailable",
    METHOD_NOT_FOUND: "method not found",
    SERVICE_TIMEOUT: "service timeout",
    REQUIRE_AUTHENTICATION: "require authentication",
}

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"


class MalformedFrame(ValueError):
    """Not a JSON object with an integer ``id``, a string ``method`` and a list ``params``."""


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    method: str
    params: list[JsonValue]


def parse_request(frame: str | bytes) -> Request:
    try:
        body = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a frame of deeply nested arrays, which fits easily in 100 kB.
        raise MalformedFrame("frame is not valid JSON") from exc
    if not isinstance(body, dict):
        raise MalformedFrame("frame is not a JSON object")
    request_id, method, params = body.get("id"), body.get("method"), body.get("params")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise MalformedFrame("id must be an integer")
    if not isinstance(method, str):
        raise MalformedFrame("method must be a string")
    if not isinstance(params, list):
        raise MalformedFrame("params must be an array")
    return Request(request_id, method, params)


def encode_result(request_id: int | None, result: JsonValue) -> str:
    return json.dumps({"error": None, "result": result, "id": request_id}, separators=(",", ":"))


def encode_error(request_id: int | None, code: int, message: str | None = None) -> str:
    error = {"code": code, "message": message if message is not None else MESSAGES[code]}
    return json.dumps({"error": error, "result": None, "id": request_id}, separators=(",", ":"))


def encode_notification(method: str, params: list[JsonValue]) -> str:
    return json.dumps({"method": method, "params": params, "id": None}, separators=(",", ":"))
