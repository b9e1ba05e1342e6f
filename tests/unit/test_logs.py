"""Log lines as a log collector reads them: one JSON object each, with the request they are in.

What an operator notices: a line Loki cannot parse, a line without the request id that ties it
to a call, or a field logged with the line that does not show.
"""

from __future__ import annotations

import json
import logging

import pytest

from gateway.logs import RequestFields, bound_request, formatter


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, message, None, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_json_line_has_time_level_logger_message_and_its_fields() -> None:
    line = json.loads(formatter("json").format(record("POST /v1/x 200", status=200,
                                                      duration_ms=1.5, user="trader-a")))
    assert {"time", "level", "logger", "message"} <= set(line)
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO", "gateway.access", "POST /v1/x 200")
    assert (line["status"], line["duration_ms"], line["user"]) == (200, 1.5, "trader-a")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_line_logged_while_a_request_is_handled_names_it(log_format: str) -> None:
    fields = RequestFields(worker=False)
    with bound_request("rid-1", "/v1/markets/{market}/orders"):
        inside = record("placing")
        fields.filter(inside)
    outside = record("idle")
    fields.filter(outside)
    text = formatter(log_format).format(inside)
    assert "rid-1" in text
    assert "/v1/markets/{market}/orders" in text
    assert "rid-1" not in formatter(log_format).format(outside)


def test_a_workers_lines_carry_its_pid() -> None:
    line = record("listening")
    RequestFields(worker=True).filter(line)
    assert isinstance(json.loads(formatter("json").format(line))["worker"], int)


def test_a_text_line_shows_its_fields_after_the_message() -> None:
    text = formatter("text").format(record("POST /v1/x 409", status=409, user="trader-b"))
    assert text.endswith("POST /v1/x 409 status=409 user=trader-b")
