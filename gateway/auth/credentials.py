"""Reading the secrets the settings point at: upstream account tokens and signing keys.

Each value is read once at start from its environment variable or file (a mounted Kubernetes
Secret) and kept as a ``Secret`` or a key object. A failure names where it looked, never what
it found.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.secret import Secret, SecretError, read_secret
from gateway.auth.signing import (
    KeyRing,
    SigningKey,
    SigningKeyError,
    VerificationKey,
    load_private_key,
    load_public_key,
)
from gateway.core.mapping_reader import ConfigError
from gateway.settings import AccountSettings, AuthSettings, RedisSettings, SecretRef


def read_ref(ref: SecretRef) -> Secret:
    return read_secret(env=ref.env, file=ref.file)


def redis_password(redis: RedisSettings) -> Secret | None:
    """The password of ``redis.url`` when it is kept apart from the URL (a mounted Secret)."""
    if redis.password is None:
        return None
    try:
        return read_ref(redis.password)
    except SecretError as exc:
        raise ConfigError(f"redis.password: {exc}") from exc


def load_account_tokens(accounts: tuple[AccountSettings, ...]) -> Mapping[str, Secret]:
    tokens = {}
    for account in accounts:
        try:
            tokens[account.name] = read_ref(account.token)
        except SecretError as exc:
            raise ConfigError(f"accounts: token of {account.name!r}: {exc}") from exc
    return tokens


def load_keyring(auth: AuthSettings) -> KeyRing:
    """The configured keys; the one named by ``signing_key`` signs, every one verifies."""
    if auth.signing_key is None:
        raise ConfigError("auth.signing_key: no signing key configured")
    signing: SigningKey | None = None
    verification: list[VerificationKey] = []
    for key in auth.keys:
        try:
            if key.private_key is not None:
                pem = read_ref(key.private_key).reveal().encode()
                if key.kid == auth.signing_key:
                    signing = load_private_key(key.kid, key.algorithm, pem)
                    continue
                verification.append(load_public_key(key.kid, key.algorithm, pem))
            elif key.public_key is not None:
                pem = read_ref(key.public_key).reveal().encode()
                verification.append(load_public_key(key.kid, key.algorithm, pem))
        except (SecretError, SigningKeyError) as exc:
            raise ConfigError(f"auth.keys: key {key.kid!r}: {exc}") from exc
    if signing is None:
        raise ConfigError(f"auth.signing_key: key {auth.signing_key!r} has no private key")
    return KeyRing(signing, verification)
