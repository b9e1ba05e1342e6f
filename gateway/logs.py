"""The process's log lines: JSON objects (python-json-logger) or text, with the request they are in.

``configure_logging`` installs one handler on the root logger, to stderr. JSON lines carry
``time``, ``level``, ``logger`` and ``message``, the fields a line was logged with (``extra=``:
``status``, ``duration_ms``, ``user``, …), and, for a line logged while a request is handled,
that request's ``request_id`` and ``route`` (``bound_request``; a context variable, so every
task of the request sees it and nothing else does). A worker of ``serve --workers`` adds its
``worker`` pid. Text lines are for a terminal: the same fields after the message.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

from gateway.settings import LoggingSettings

_REQUEST: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "expie_gateway_request", default=None)
# What every LogRecord has: anything else on a record came from ``extra=`` and is shown.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


_LAYOUT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def bound_request(request_id: str, route: str) -> Iterator[None]:
    """Lines logged inside carry this request's id and route."""
    token = _REQUEST.set({"request_id": request_id, "route": route})
    try:
        yield
    finally:
        _REQUEST.reset(token)


class RequestFields(logging.Filter):
    """Adds the bound request's fields (and the worker's pid) to every record."""

    def __init__(self, worker: bool) -> None:
        super().__init__()
        self._worker = os.getpid() if worker else None

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _REQUEST.get()
        for name, value in (bound or {}).items():
            if name not in record.__dict__:
                setattr(record, name, value)
        if self._worker is not None:
            record.worker = self._worker
        return True


class _TextFormatter(logging.Formatter):
    """``time level logger message key=value …`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={value}" for name, value in record.__dict__.items()
                          if name not in _STANDARD)
        return f"{line} {fields}" if fields else line


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        json_formatter: logging.Formatter = JsonFormatter(
            _LAYOUT, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
        return json_formatter
    return _TextFormatter(_LAYOUT)


def configure_logging(settings: LoggingSettings, *, worker: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.format))
    handler.addFilter(RequestFields(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
