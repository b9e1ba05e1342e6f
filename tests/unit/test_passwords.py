"""Client secrets: scrypt hashes that verify, and malformed or hostile hashes that never do."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.auth.passwords import (
    generate_client_secret,
    hash_secret,
    is_valid_hash,
    verify_secret,
)

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def encoded() -> str:
    return hash_secret(SECRET)


def _with_part(encoded: str, index: int, value: str) -> str:
    parts = encoded.split("$")
    parts[index] = value
    return "$".join(parts)


def test_the_hash_is_self_describing(encoded: str) -> None:
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32
    assert SECRET not in encoded


def test_the_right_secret_verifies(encoded: str) -> None:
    assert verify_secret(SECRET, encoded)


@pytest.mark.parametrize(
    "attempt", ["", "correct horse battery stapl", SECRET + " ", SECRET.upper()])
def test_a_wrong_secret_does_not_verify(encoded: str, attempt: str) -> None:
    assert not verify_secret(attempt, encoded)


def test_each_hash_has_its_own_salt(encoded: str) -> None:
    again = hash_secret(SECRET)
    assert again != encoded
    assert verify_secret(SECRET, again)


def test_a_non_ascii_secret_round_trips() -> None:
    assert verify_secret("pässwörd-🔑", hash_secret("pässwörd-🔑"))


def test_a_secret_with_a_lone_surrogate_does_not_raise(encoded: str) -> None:
    assert not verify_secret("\ud800", encoded)


def test_an_empty_secret_is_not_hashed() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_secret("")


def test_generated_client_secrets_are_long_random_and_url_safe() -> None:
    secrets = {generate_client_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert len(secret) >= 43
        assert set(secret) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    ("index", "value"),
    [
        pytest.param(0, "bcrypt", id="other-scheme"),
        pytest.param(1, "16385", id="n-not-power-of-two"),
        pytest.param(1, "0", id="n-zero"),
        pytest.param(1, "512", id="n-too-small"),
        pytest.param(1, str(2**20), id="n-too-large"),
        pytest.param(1, "1" + "0" * 40, id="n-huge"),
        pytest.param(1, "-16384", id="n-negative"),
        pytest.param(1, "+16384", id="n-signed"),
        pytest.param(1, "\uff11\uff16\uff13\uff18\uff14", id="n-fullwidth-digits"),
        pytest.param(1, "16_384", id="n-underscore"),
        pytest.param(1, "", id="n-empty"),
        pytest.param(2, "0", id="r-zero"),
        pytest.param(2, "1024", id="r-huge-memory"),
        pytest.param(3, "0", id="p-zero"),
        pytest.param(3, "64", id="p-huge-cpu"),
        pytest.param(4, "not base64!", id="salt-not-base64"),
        pytest.param(4, "", id="salt-empty"),
        pytest.param(4, "c2FsdA==", id="salt-too-short"),
        pytest.param(5, "a2V5", id="key-too-short"),
        pytest.param(5, "é", id="key-non-ascii"),
        pytest.param(5, base64.b64encode(b"k" * 65).decode(), id="key-too-long"),
    ],
)
def test_a_malformed_or_hostile_hash_is_refused_without_an_exception(
    encoded: str, index: int, value: str
) -> None:
    hostile = _with_part(encoded, index, value)
    assert not verify_secret(SECRET, hostile)
    assert not is_valid_hash(hostile)


@pytest.mark.parametrize(
    "hostile",
    ["", "scrypt", "$$$$$", "scrypt$16384$8$1$abc", "scrypt$16384$8$1$a$b$c", "plaintext-secret"],
)
def test_a_hash_of_the_wrong_shape_is_refused(hostile: str) -> None:
    assert not verify_secret(SECRET, hostile)
    assert not is_valid_hash(hostile)


def test_a_stronger_hash_within_the_bounds_still_verifies(encoded: str) -> None:
    # A future cost increase (n = 2**15) must keep verifying: build such a hash by hand.
    salt = b"s" * 16
    key = hashlib.scrypt(SECRET.encode(), salt=salt, n=2**15, r=8, p=1, maxmem=2**26, dklen=32)
    stronger = "$".join(
        ["scrypt", str(2**15), "8", "1", base64.b64encode(salt).decode(),
         base64.b64encode(key).decode()])
    assert is_valid_hash(stronger)
    assert verify_secret(SECRET, stronger)
    assert is_valid_hash(encoded)
