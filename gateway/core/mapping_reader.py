"""Reading a configuration mapping (parsed YAML) key by key, so every error names its key.

``MappingReader`` wraps one mapping at a path such as ``auth.keys[0]``; typed accessors read and
check a key (``text``, ``integer``, ``number``, ``flag``, ``decimal``, ``section``, ``items``), and
``done()`` refuses keys nobody read. Pure: no files, no environment.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway.core.decimals import parse_decimal


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


class MappingReader:
    """A mapping read key by key, so that every error names its full path."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping")
        self._data: dict[str, Any] = data
        self._path = path
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def raw(self, name: str, default: object = ...) -> Any:
        self._read.add(name)
        if name in self._data:
            return self._data[name]
        if default is ...:
            raise ConfigError(f"{self.key(name)}: required key is missing")
        return default

    def text(self, name: str, default: object = ...) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(name)}: expected a non-empty string")
        return value

    def integer(self, name: str, default: object = ..., minimum: int = 0,
                maximum: int | None = None) -> int:
        value = self.raw(name, default)
        if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
                or (maximum is not None and value > maximum)):
            wanted = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise ConfigError(f"{self.key(name)}: expected an integer {wanted}")
        return value

    def number(self, name: str, default: object = ..., *, allow_zero: bool = False) -> float:
        value = self.raw(name, default)
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or value < 0 or (value == 0 and not allow_zero)):
            wanted = "a number >= 0" if allow_zero else "a positive number"
            raise ConfigError(f"{self.key(name)}: expected {wanted}")
        return float(value)

    def optional_text(self, name: str) -> str | None:
        return None if self.raw(name, None) is None else self.text(name)

    def text_list(self, name: str, default: object = ...) -> tuple[str, ...]:
        value = self.raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of non-empty strings")
        return tuple(value)

    def flag(self, name: str, default: object = ...) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false")
        return value

    def decimal(self, name: str, default: object = ...) -> Decimal:
        value = self.raw(name, default)
        parsed = parse_decimal(str(value)) if isinstance(value, str | int) else None
        if parsed is None or parsed < 0:
            raise ConfigError(f"{self.key(name)}: expected a non-negative decimal string")
        return parsed

    def names(self) -> list[str]:
        return list(self._data)

    def section(self, name: str, default: object = ...) -> MappingReader:
        return MappingReader(self.raw(name, default), self.key(name))

    def items(
        self, name: str, default: object = ..., *, allow_empty: bool = False
    ) -> list[tuple[str, MappingReader]]:
        value = self.raw(name, default)
        if not isinstance(value, list) or (not value and not allow_empty):
            raise ConfigError(f"{self.key(name)}: expected a non-empty list")
        return [(f"{self.key(name)}[{i}]", MappingReader(item, f"{self.key(name)}[{i}]"))
                for i, item in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")
