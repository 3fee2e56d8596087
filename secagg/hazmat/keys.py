"""Key agreement, key derivation, AEAD and signatures, each with one safe calling convention.

Security assumptions: X25519 is a secure Diffie-Hellman group (gap-DH); HKDF-SHA256 is a KDF whose
outputs under distinct ``info`` labels are independent; AES-256-GCM with random 96-bit nonces is an
AEAD for fewer than 2^32 messages per key (each derived key here seals one message); Ed25519 is
EUF-CMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import IntegrityError, ParameterError
from .random import RandomSource, system_random

__all__ = [
    "canonical_public_keys",
    "LABEL_PREFIX",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "AgreementKeyPair",
    "SigningKey",
    "derive_key",
    "is_canonical_public_key",
    "seal",
    "open_sealed",
    "verify_signature",
]

LABEL_PREFIX = b"secagg/v1/"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


_FIELD_PRIME_25519 = 2**255 - 19


def is_canonical_public_key(data: bytes) -> bool:
    """True iff ``data`` is the one canonical encoding of an X25519 u-coordinate (RFC 7748).

    RFC 7748 decoders mask bit 255 and reduce modulo 2^255 - 19, so several byte strings decode to
    one point; only the encoding with u < 2^255 - 19 (which has bit 255 clear) is canonical. Keys
    compared as bytes are compared as points only after this check.
    """
    return len(data) == PUBLIC_KEY_BYTES and int.from_bytes(data, "little") < _FIELD_PRIME_25519


def canonical_public_keys(keys: np.ndarray) -> np.ndarray:
    """:func:`is_canonical_public_key` of each row of a ``(m, 32)`` uint8 array, vectorised.

    u >= 2^255 - 19 exactly when bit 255 is set, or the key is 2^255 - 19 .. 2^255 - 1 (top byte
    0x7f, bytes 1..30 all 0xff, low byte >= 0xed).
    """
    rows = np.asarray(keys, dtype=np.uint8).reshape(-1, PUBLIC_KEY_BYTES)
    ok: np.ndarray = rows[:, 31] < 0x80
    edge = np.flatnonzero(rows[:, 31] == 0x7F)  # only these can be 2^255 - 19 or above
    if edge.size:
        near = rows[edge]
        ok[edge] = ~((near[:, 1:31] == 0xFF).all(axis=1) & (near[:, 0] >= 0xED))
    return ok


def derive_key(secret: bytes, label: bytes, context: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` with ``info = b"secagg/v1/" + label + b"\\x00" + context``.

    ``label`` names the purpose (e.g. ``b"pairwise-mask"``) and must not contain a zero byte, so no
    two (label, context) pairs share an ``info`` string. Guarantees a ``length``-byte key that is
    independent of keys derived under any other label or context.
    """
    if not label or b"\x00" in label:
        raise ParameterError("a KDF label must be non-empty and contain no zero byte")
    if len(secret) < 16:
        raise ParameterError("KDF input keying material must be at least 16 bytes")
    info = LABEL_PREFIX + label + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


@dataclass(frozen=True, slots=True, repr=False)
class AgreementKeyPair:
    """A fresh X25519 key pair. The private half never appears in repr and refuses pickling."""

    _private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, random: RandomSource = system_random) -> AgreementKeyPair:
        """Generate a key pair from 32 bytes of ``random`` (X25519 clamps them)."""
        return cls(X25519PrivateKey.from_private_bytes(random(32)))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> AgreementKeyPair:
        """Rebuild a key pair from a reconstructed 32-byte private key."""
        if len(data) != 32:
            raise ParameterError("X25519 private keys are 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(data))

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(_RAW, _RAW_PUB)

    def private_bytes(self) -> bytes:
        """The raw private key: only for Shamir-sharing it inside the protocol."""
        return self._private.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def agree(self, peer_public: bytes, label: bytes, context: bytes) -> bytes:
        """Derive a 32-byte key shared with ``peer_public`` for one purpose.

        Raises:
            IntegrityError: the peer key is malformed or of low order (all-zero shared secret).
        """
        if not is_canonical_public_key(peer_public):
            raise IntegrityError("invalid peer key (wrong length or not canonically encoded)")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise IntegrityError("invalid peer key") from None
        return derive_key(shared, label, context)

    def __getstate__(self) -> None:
        raise TypeError("key pairs cannot be pickled")

    def __repr__(self) -> str:
        return f"AgreementKeyPair(public={self.public_bytes.hex()[:16]}...)"


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A long-term Ed25519 identity key."""

    _private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, random: RandomSource = system_random) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(random(32)))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        """Rebuild an identity key from its 32-byte raw Ed25519 private key (the RFC 8032 seed).

        Security assumption: ``data`` came from a uniform 32-byte source and stayed secret.
        """
        if len(data) != 32:
            raise ParameterError("Ed25519 private keys are 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(_RAW, _RAW_PUB)

    def sign(self, label: bytes, message: bytes) -> bytes:
        """Sign ``LABEL_PREFIX + label + 0x00 + message`` (domain-separated)."""
        return self._private.sign(LABEL_PREFIX + label + b"\x00" + message)

    def __getstate__(self) -> None:
        raise TypeError("signing keys cannot be pickled")

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_bytes.hex()[:16]}...)"


def verify_signature(public: bytes, signature: bytes, label: bytes, message: bytes) -> None:
    """Check an Ed25519 signature made by :meth:`SigningKey.sign`.

    Raises:
        IntegrityError: the key or signature is malformed or the signature does not verify.
    """
    if len(public) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise IntegrityError("signature verification failed")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, LABEL_PREFIX + label + b"\x00" + message
        )
    except (InvalidSignature, ValueError):
        raise IntegrityError("signature verification failed") from None


def seal(key: bytes, plaintext: bytes, associated_data: bytes, random: RandomSource = system_random) -> bytes:
    """AES-256-GCM encrypt; returns ``nonce || ciphertext || tag``."""
    nonce = random(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`.

    Raises:
        IntegrityError: the ciphertext, tag or associated data was altered, or the key is wrong.
    """
    if len(sealed) < NONCE_BYTES + 16:
        raise IntegrityError("decryption failed")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise IntegrityError("decryption failed") from None
