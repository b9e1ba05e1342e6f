"""Signing keys for gateway tokens: load, generate, serialize, and the key ring that rotates them.

Owns: the algorithms we sign with (EdDSA by default, RS256, ES256), the check that a PEM's key
type fits its algorithm, the ``KeyRing`` (one active signing key, several verification keys, so a
key can rotate without downtime) and the public JWK Set published at ``/.well-known/jwks.json``.

Must not: show key material in a ``repr``, an error message or a log line (errors name the
``kid``, never the PEM); let a private JWK member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``,
``k``) reach the JWK Set; accept a symmetric key or a weak one (RSA below 2048 bits, a curve
other than P-256).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey

MIN_RSA_BITS = 2048
GENERATED_RSA_BITS = 3072
_KID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
# The only members a public JWK may carry; everything else is dropped, whatever the serializer did.
PUBLIC_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e"})


class Algorithm(StrEnum):
    EDDSA = "EdDSA"
    RS256 = "RS256"
    ES256 = "ES256"


_NEEDS = {
    Algorithm.EDDSA: "an Ed25519 key",
    Algorithm.RS256: f"an RSA key of at least {MIN_RSA_BITS} bits",
    Algorithm.ES256: "an EC key on the P-256 curve",
}


class SigningKeyError(ValueError):
    """A key cannot be used; the message names the kid and the problem, never the material."""


@dataclass(frozen=True, slots=True, repr=False)
class VerificationKey:
    kid: str
    algorithm: Algorithm
    public_key: PublicKey = field(compare=False)

    def __repr__(self) -> str:
        return f"VerificationKey(kid={self.kid!r}, algorithm={self.algorithm.value})"

    def jwk(self) -> dict[str, str]:
        """The public JWK: key members from the allow-list, plus kid, alg and use."""
        return {
            **_public_jwk_members(self.public_key),
            "kid": self.kid,
            "alg": self.algorithm.value,
            "use": "sig",
        }


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    kid: str
    algorithm: Algorithm
    private_key: PrivateKey = field(compare=False)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm.value}, key=<hidden>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("signing keys are not pickled")

    def public(self) -> VerificationKey:
        return VerificationKey(self.kid, self.algorithm, self.private_key.public_key())


def load_private_key(kid: str, algorithm: Algorithm | str, pem: bytes) -> SigningKey:
    """A signing key from an unencrypted PEM private key (PKCS8 or traditional)."""
    kid, alg = _check_kid(kid), _check_algorithm(kid, algorithm)
    try:
        key = serialization.load_pem_private_key(_unescape(pem), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"key {kid!r}: not a readable unencrypted PEM private key") from exc
    if not isinstance(key, PrivateKey) or not _fits(alg, key):
        raise SigningKeyError(f"key {kid!r}: {alg.value} needs {_NEEDS[alg]}")
    return SigningKey(kid, alg, key)


def load_public_key(kid: str, algorithm: Algorithm | str, pem: bytes) -> VerificationKey:
    """A verification key from a PEM public key, or from a PEM private key (its public half)."""
    pem = _unescape(pem)
    if b"PRIVATE KEY-----" in pem:
        return load_private_key(kid, algorithm, pem).public()
    kid, alg = _check_kid(kid), _check_algorithm(kid, algorithm)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"key {kid!r}: not a readable PEM public key") from exc
    if not isinstance(key, PublicKey) or not _fits(alg, key):
        raise SigningKeyError(f"key {kid!r}: {alg.value} needs {_NEEDS[alg]}")
    return VerificationKey(kid, alg, key)


def generate_signing_key(kid: str, algorithm: Algorithm | str = Algorithm.EDDSA) -> SigningKey:
    """A fresh random signing key (RSA keys are 3072 bits)."""
    kid, alg = _check_kid(kid), _check_algorithm(kid, algorithm)
    key: PrivateKey
    if alg is Algorithm.EDDSA:
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg is Algorithm.RS256:
        key = rsa.generate_private_key(public_exponent=65537, key_size=GENERATED_RSA_BITS)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid, alg, key)


def private_pem(key: SigningKey) -> bytes:
    """The key as an unencrypted PKCS8 PEM, for ``keys generate``; handle it as a secret."""
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class KeyRing:
    """One signing key and every key a token may be verified with, by kid.

    The signing key's public half is always verifiable. Rotation: configure the new key as the
    signing key and keep the old one in ``verification`` until the tokens it signed have expired,
    then remove it. A kid appears once: the signing key is never listed again in ``verification``.
    """

    __slots__ = ("_by_kid", "_jwks", "signing")

    def __init__(self, signing: SigningKey, verification: Sequence[VerificationKey] = ()) -> None:
        self.signing = signing
        by_kid: dict[str, VerificationKey] = {signing.kid: signing.public()}
        for key in verification:
            if key.kid in by_kid:
                raise SigningKeyError(f"key {key.kid!r} is configured twice")
            by_kid[key.kid] = key
        self._by_kid: Mapping[str, VerificationKey] = by_kid
        self._jwks = tuple(key.jwk() for key in by_kid.values())

    def __repr__(self) -> str:
        return f"KeyRing(signing={self.signing.kid!r}, kids={list(self._by_kid)!r})"

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._by_kid)

    def verification_key(self, kid: str) -> VerificationKey | None:
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5): a fresh dict each call, safe to mutate."""
        return {"keys": [dict(jwk) for jwk in self._jwks]}


def _public_jwk_members(key: PublicKey) -> dict[str, str]:
    # PyJWT serializes the public key object (it never sees a private key here); the allow-list
    # is the second guard.
    if isinstance(key, ed25519.Ed25519PublicKey):
        members = OKPAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPublicKey):
        members = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        members = ECAlgorithm.to_jwk(key, as_dict=True)
    return {name: str(value) for name, value in members.items() if name in PUBLIC_JWK_MEMBERS}


def _check_kid(kid: str) -> str:
    if not _KID.fullmatch(kid):
        raise SigningKeyError(
            f"key id {kid[:64]!r} must be 1 to 64 characters of letters, digits, '.', '_', '-'")
    return kid


def _check_algorithm(kid: str, algorithm: Algorithm | str) -> Algorithm:
    try:
        return Algorithm(algorithm)
    except ValueError:
        allowed = ", ".join(Algorithm)
        raise SigningKeyError(
            f"key {kid[:64]!r}: algorithm {str(algorithm)[:16]!r} is not one of {allowed}"
        ) from None


def _fits(alg: Algorithm, key: PrivateKey | PublicKey) -> bool:
    if alg is Algorithm.EDDSA:
        return isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey)
    if alg is Algorithm.RS256:
        return isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and (
            key.key_size >= MIN_RSA_BITS)
    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and (
        isinstance(key.curve, ec.SECP256R1))


def _unescape(pem: bytes) -> bytes:
    # A PEM passed through an environment variable often arrives with literal "\n" sequences;
    # PEM text never contains a backslash, so turning them back into newlines is unambiguous.
    return pem.replace(b"\\n", b"\n").strip() + b"\n"
