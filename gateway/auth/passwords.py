"""Client secrets: generate one, hash it for the user directory, verify a presented secret.

Owns the hash format ``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`` (standard base64, padded): a
self-describing string, so the cost can be raised later while old hashes keep verifying.

Must not: log, return or put in an exception a secret or a hash; raise on a malformed hash
(``verify_secret`` answers False); accept a hash whose parameters would make verification burn
unbounded memory or time (a hostile or corrupted user file must not take the gateway down).

scrypt at the default cost takes tens of milliseconds of CPU: callers on the event loop run
``verify_secret`` in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SCHEME = "scrypt"
COST_N = 2**14
BLOCK_SIZE_R = 8
PARALLELISM_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

# Bounds for hashes we accept: room for a 4x cost increase, but a hostile hash cannot ask for
# gigabytes (scrypt needs about 128 * n * r bytes) or seconds of CPU (work grows with n * r * p).
_MIN_N = 2**10
_MAX_WORK = 4 * COST_N * BLOCK_SIZE_R * PARALLELISM_P
_MAX_MEMORY = 128 * _MAX_WORK + 2**20  # 64 MiB of blocks, plus slack for scrypt's own buffers
_SALT_RANGE = range(8, 65)
_KEY_RANGE = range(16, 65)


@dataclass(frozen=True, slots=True)
class _Params:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def generate_client_secret() -> str:
    """A new random client secret: 32 bytes from ``secrets``, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The encoded scrypt hash of ``secret`` with a fresh random salt."""
    if not secret:
        raise ValueError("an empty secret cannot be hashed")
    salt = secrets.token_bytes(SALT_BYTES)
    params = _Params(COST_N, BLOCK_SIZE_R, PARALLELISM_P, salt, b"")
    key = _derive(secret, params, KEY_BYTES)
    return "$".join(
        (SCHEME, str(COST_N), str(BLOCK_SIZE_R), str(PARALLELISM_P), _b64(salt), _b64(key))
    )


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches ``encoded``; False (never an exception) for a malformed hash."""
    params = _parse(encoded)
    if params is None:
        return False
    candidate = _derive(secret, params, len(params.key))
    return hmac.compare_digest(candidate, params.key)


def is_valid_hash(encoded: str) -> bool:
    """Whether ``encoded`` is a hash ``verify_secret`` would accept (for config validation)."""
    return _parse(encoded) is not None


def _derive(secret: str, params: _Params, length: int) -> bytes:
    return hashlib.scrypt(
        # "surrogatepass": a string with a lone surrogate still hashes instead of raising.
        secret.encode("utf-8", "surrogatepass"),
        salt=params.salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=_MAX_MEMORY,
        dklen=length,
    )


def _parse(encoded: str) -> _Params | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    n, r, p = (_small_int(part) for part in parts[1:4])
    salt, key = _unb64(parts[4]), _unb64(parts[5])
    if n is None or r is None or p is None or salt is None or key is None:
        return None
    params = _Params(n, r, p, salt, key)
    return params if _within_bounds(params) else None


def _within_bounds(params: _Params) -> bool:
    n, r, p = params.n, params.r, params.p
    return (
        n >= _MIN_N
        and n & (n - 1) == 0
        and r >= 1
        and p >= 1
        and n * r * p <= _MAX_WORK
        and len(params.salt) in _SALT_RANGE
        and len(params.key) in _KEY_RANGE
    )


def _small_int(text: str) -> int | None:
    # Plain ASCII digits only ("+1", " 1", non-ASCII digits, "1_000" are refused), at most 7.
    if not (text.isascii() and text.isdigit()) or len(text) > 7:
        return None
    return int(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
