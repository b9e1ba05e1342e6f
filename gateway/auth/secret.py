"""``Secret``: a string that never shows itself in a ``repr``, a log line or an f-string.

Upstream tokens, signing keys and client secrets travel as ``Secret``; only ``reveal()`` gives the
value, and only the code that must put it on the wire or into a KDF calls it.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    """A secret could not be read; the message names where it was looked for, never the value."""


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secrets are not pickled")


def read_secret(*, env: str | None = None, file: Path | None = None) -> Secret:
    """The secret in environment variable ``env`` or in ``file`` (a mounted Kubernetes Secret)."""
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise SecretError(f"environment variable {env} is not set")
        return Secret(value.strip())
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {file}: {exc.strerror}") from exc
        if not value:
            raise SecretError(f"secret file {file} is empty")
        return Secret(value)
    raise SecretError("a secret needs an environment variable or a file")
