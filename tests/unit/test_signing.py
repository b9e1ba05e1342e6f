"""Signing keys: PEM loading checked against the algorithm, hidden material, the key ring, JWKS."""

from __future__ import annotations

import json
import pickle

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.signing import (
    Algorithm,
    KeyRing,
    SigningKey,
    SigningKeyError,
    generate_signing_key,
    load_private_key,
    load_public_key,
    private_pem,
)

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth", "r", "t"}
EXPECTED_MEMBERS = {
    Algorithm.EDDSA: {"kty", "crv", "x", "kid", "alg", "use"},
    Algorithm.RS256: {"kty", "n", "e", "kid", "alg", "use"},
    Algorithm.ES256: {"kty", "crv", "x", "y", "kid", "alg", "use"},
}


@pytest.fixture(scope="module")
def keys() -> dict[Algorithm, SigningKey]:
    return {alg: generate_signing_key(f"key-{alg.value.lower()}", alg) for alg in Algorithm}


def _public_pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_body(pem: bytes) -> list[str]:
    """The base64 lines of a PEM (the key material)."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def _private_jwk(key: SigningKey) -> dict[str, object]:
    private = key.private_key
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return dict(OKPAlgorithm.to_jwk(private, as_dict=True))
    if isinstance(private, rsa.RSAPrivateKey):
        return dict(RSAAlgorithm.to_jwk(private, as_dict=True))
    return dict(ECAlgorithm.to_jwk(private, as_dict=True))


@pytest.mark.parametrize("alg", list(Algorithm))
def test_a_generated_key_round_trips_through_pem(keys: dict[Algorithm, SigningKey],
                                                 alg: Algorithm) -> None:
    key = keys[alg]
    pem = private_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(key.kid, alg, pem)
    assert (loaded.kid, loaded.algorithm) == (key.kid, alg)
    assert _public_pem(loaded) == _public_pem(key)


@pytest.mark.parametrize("alg", list(Algorithm))
def test_a_public_key_loads_from_a_public_or_a_private_pem(
    keys: dict[Algorithm, SigningKey], alg: Algorithm
) -> None:
    key = keys[alg]
    from_public = load_public_key("v1", alg, _public_pem(key))
    from_private = load_public_key("v1", alg.value, private_pem(key))
    for loaded in (from_public, from_private):
        assert (loaded.kid, loaded.algorithm) == ("v1", alg)
        assert loaded.jwk() == key.public().jwk() | {"kid": "v1"}


def test_a_pem_from_an_environment_variable_with_escaped_newlines_loads(
    keys: dict[Algorithm, SigningKey],
) -> None:
    key = keys[Algorithm.EDDSA]
    escaped = private_pem(key).strip().replace(b"\n", b"\\n")
    assert b"\n" not in escaped
    assert _public_pem(load_private_key("k", "EdDSA", escaped)) == _public_pem(key)


@pytest.mark.parametrize(
    ("pem_of", "alg"),
    [
        pytest.param(Algorithm.EDDSA, Algorithm.RS256, id="ed25519-as-rs256"),
        pytest.param(Algorithm.EDDSA, Algorithm.ES256, id="ed25519-as-es256"),
        pytest.param(Algorithm.RS256, Algorithm.EDDSA, id="rsa-as-eddsa"),
        pytest.param(Algorithm.RS256, Algorithm.ES256, id="rsa-as-es256"),
        pytest.param(Algorithm.ES256, Algorithm.EDDSA, id="ec-as-eddsa"),
        pytest.param(Algorithm.ES256, Algorithm.RS256, id="ec-as-rs256"),
    ],
)
def test_a_key_of_the_wrong_type_for_its_algorithm_is_refused(
    keys: dict[Algorithm, SigningKey], pem_of: Algorithm, alg: Algorithm
) -> None:
    pem = private_pem(keys[pem_of])
    with pytest.raises(SigningKeyError, match=f"key 'wrong': {alg.value} needs") as private:
        load_private_key("wrong", alg, pem)
    with pytest.raises(SigningKeyError, match=f"key 'wrong': {alg.value} needs") as public:
        load_public_key("wrong", alg, _public_pem(keys[pem_of]))
    for error in (private, public):
        assert not any(line in str(error.value) for line in _pem_body(pem))


def test_a_short_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = weak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match="at least 2048 bits"):
        load_private_key("weak", Algorithm.RS256, pem)


def test_an_ec_key_on_another_curve_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match="P-256"):
        load_private_key("p384", Algorithm.ES256, pem)


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a pem", id="garbage"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                     id="broken-body"),
    ],
)
def test_an_unreadable_pem_is_refused_naming_the_kid(pem: bytes) -> None:
    with pytest.raises(SigningKeyError, match="key 'k7': not a readable"):
        load_private_key("k7", Algorithm.EDDSA, pem)


def test_an_unreadable_public_pem_is_refused_naming_the_kid() -> None:
    with pytest.raises(SigningKeyError, match="key 'k7': not a readable PEM public key"):
        load_public_key("k7", Algorithm.EDDSA, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END")


def test_an_encrypted_pem_is_refused(keys: dict[Algorithm, SigningKey]) -> None:
    encrypted = keys[Algorithm.EDDSA].private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"))
    with pytest.raises(SigningKeyError, match="unencrypted"):
        load_private_key("enc", Algorithm.EDDSA, encrypted)


@pytest.mark.parametrize("kid", ["", "has space", "x" * 65, "quote'", "new\nline", "é"])
def test_a_bad_kid_is_refused(kid: str) -> None:
    with pytest.raises(SigningKeyError, match="key id"):
        generate_signing_key(kid)


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512", "eddsa"])
def test_an_algorithm_outside_the_list_is_refused(alg: str) -> None:
    with pytest.raises(SigningKeyError, match="is not one of EdDSA, RS256, ES256"):
        generate_signing_key("k1", alg)


def test_eddsa_is_the_default_algorithm() -> None:
    key = generate_signing_key("k1")
    assert key.algorithm is Algorithm.EDDSA
    assert isinstance(key.private_key, ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize("alg", list(Algorithm))
def test_reprs_show_no_key_material(keys: dict[Algorithm, SigningKey], alg: Algorithm) -> None:
    key = keys[alg]
    shown = " ".join([repr(key), str(key), f"{key}", repr(key.public()),
                      repr(KeyRing(key))])
    assert repr(key) == f"SigningKey(kid={key.kid!r}, algorithm={alg.value}, key=<hidden>)"
    for line in _pem_body(private_pem(key)) + _pem_body(_public_pem(key)):
        assert line not in shown
    for name, value in _private_jwk(key).items():
        if name in PRIVATE_JWK_MEMBERS:
            assert str(value) not in shown


def test_a_signing_key_is_not_pickled(keys: dict[Algorithm, SigningKey]) -> None:
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(keys[Algorithm.EDDSA])


def test_the_signing_key_is_always_verifiable() -> None:
    signing = generate_signing_key("new")
    ring = KeyRing(signing)
    assert ring.signing is signing
    assert ring.kids == ("new",)
    assert ring.verification_key("new") == signing.public()
    assert ring.verification_key("other") is None


def test_old_keys_stay_verifiable_next_to_the_new_signing_key() -> None:
    old, new = generate_signing_key("old"), generate_signing_key("new", Algorithm.ES256)
    ring = KeyRing(new, [old.public()])
    assert ring.kids == ("new", "old")
    assert ring.verification_key("old") == old.public()


def test_a_kid_configured_twice_is_refused() -> None:
    first, second = generate_signing_key("same"), generate_signing_key("same")
    with pytest.raises(SigningKeyError, match="key 'same' is configured twice"):
        KeyRing(generate_signing_key("active"), [first.public(), second.public()])
    with pytest.raises(SigningKeyError, match="key 'same' is configured twice"):
        KeyRing(first, [first.public()])


@pytest.mark.parametrize("alg", list(Algorithm))
def test_the_jwks_has_exactly_the_public_members(
    keys: dict[Algorithm, SigningKey], alg: Algorithm
) -> None:
    key = keys[alg]
    (jwk,) = KeyRing(key).jwks()["keys"]
    assert set(jwk) == EXPECTED_MEMBERS[alg]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (key.kid, alg.value, "sig")
    assert all(isinstance(value, str) for value in jwk.values())


def test_no_private_member_ever_appears_in_the_jwks(keys: dict[Algorithm, SigningKey]) -> None:
    signing, *others = list(keys.values())
    ring = KeyRing(signing, [key.public() for key in others])
    document = ring.jwks()
    assert len(document["keys"]) == 3
    text = json.dumps(document)
    for member in document["keys"]:
        assert not PRIVATE_JWK_MEMBERS & set(member)
    for key in keys.values():
        private_values = {name: value for name, value in _private_jwk(key).items()
                          if name in PRIVATE_JWK_MEMBERS}
        assert private_values, "the private JWK has private members to look for"
        for value in private_values.values():
            assert str(value) not in text
    for line in _pem_body(private_pem(signing)):
        assert line not in text


def test_the_jwks_is_a_fresh_copy_each_time(keys: dict[Algorithm, SigningKey]) -> None:
    ring = KeyRing(keys[Algorithm.EDDSA])
    ring.jwks()["keys"][0]["d"] = "tampered"
    assert "d" not in ring.jwks()["keys"][0]
