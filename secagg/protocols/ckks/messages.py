"""Message bodies of the CKKS protocol and their canonical encodings (inside the secagg envelope).

Every message is ``Header || body`` (:mod:`secagg.wire`, protocol id 3). Bodies are frozen
dataclasses with ``write(Writer)`` and a ``read`` classmethod; :func:`decode` dispatches on the
header's kind, applies the session's size limits and rejects trailing bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ...errors import MalformedMessage
from ...hazmat.keys import PUBLIC_KEY_BYTES
from ...wire import Header, Reader, Writer
from ..channel import TagKey, finish, open_message

__all__ = [
    "Kind",
    "AUTHENTICATED_KINDS",
    "Limits",
    "Advertise",
    "KeyList",
    "KeyPackage",
    "ContextBroadcast",
    "Upload",
    "DecryptRequest",
    "DecryptResponse",
    "Body",
    "encode",
    "decode",
]

_SEAL_OVERHEAD = 28  # AES-GCM nonce and tag


class Kind(enum.IntEnum):
    ADVERTISE = 1
    KEY_LIST = 2
    KEY_PACKAGE = 3
    CONTEXT = 4
    UPLOAD = 5
    DECRYPT_REQUEST = 6
    DECRYPT_RESPONSE = 7


# Every message after the one that carries the server's channel key has a Poly1305 tag
# (secagg.protocols.channel); the advertisement, key list and context broadcast precede the channel.
AUTHENTICATED_KINDS = frozenset({Kind.KEY_PACKAGE, Kind.UPLOAD, Kind.DECRYPT_REQUEST, Kind.DECRYPT_RESPONSE})


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits a decoder enforces, from the session config.

    Args:
        max_parties: client count; bounds every id list.
        chunks: exact number of chunk ciphertexts in an upload or decryption request.
        max_ciphertext: largest accepted serialized chunk ciphertext.
        max_context: largest accepted serialized (public or secret) context.
        dim: exact number of words in a decryption response.
    """

    max_parties: int
    chunks: int
    max_ciphertext: int
    max_context: int
    dim: int


@dataclass(frozen=True, slots=True)
class Advertise:
    """Client -> server: a fresh X25519 key. It keys the client's authenticated channel with the
    server; a committee member also receives the secret context on it."""

    public_key: bytes
    KIND = Kind.ADVERTISE

    def write(self, w: Writer) -> None:
        w.fixed(self.public_key, PUBLIC_KEY_BYTES)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> Advertise:
        return cls(r.public_key())


@dataclass(frozen=True, slots=True)
class KeyList:
    """Server -> designated generator (and, inside the context broadcast, every client): the
    server's channel key and the committee members that advertised, with their keys."""

    server_key: bytes
    generator: int
    members: tuple[int, ...]
    keys: tuple[bytes, ...]
    KIND = Kind.KEY_LIST

    def write(self, w: Writer) -> None:
        w.fixed(self.server_key, PUBLIC_KEY_BYTES).u32(self.generator).ids(self.members)
        for key in self.keys:
            w.fixed(key, PUBLIC_KEY_BYTES)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> KeyList:
        server_key, generator, members = r.public_key(), r.u32(), r.ids(limits.max_parties)
        if generator not in members:
            raise MalformedMessage("the generator is not among the committee keys")
        return cls(server_key, generator, members, tuple(r.public_key() for _ in members))

    def body_bytes(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.body()


@dataclass(frozen=True, slots=True)
class KeyPackage:
    """Generator -> server: the public context, and the secret context sealed to each other member."""

    public_context: bytes
    recipients: tuple[int, ...]
    sealed: tuple[bytes, ...]
    KIND = Kind.KEY_PACKAGE

    def write(self, w: Writer) -> None:
        w.blob(self.public_context).ids(self.recipients)
        for s in self.sealed:
            w.blob(s)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> KeyPackage:
        public = r.blob(limits.max_context)
        recipients = r.ids(limits.max_parties)
        return cls(public, recipients, tuple(r.blob(limits.max_context + _SEAL_OVERHEAD) for _ in recipients))


@dataclass(frozen=True, slots=True)
class ContextBroadcast:
    """Server -> every client that advertised, once per session: the key list, the public context,
    for a key holder other than the generator its sealed secret context (empty otherwise), and the key
    the server holds for the recipient's id (the recipient checks it is its own: an id taken over by
    someone who advertised first is detected by its owner)."""

    key_list: KeyList
    public_context: bytes
    sealed: bytes
    recipient_key: bytes
    KIND = Kind.CONTEXT

    def write(self, w: Writer) -> None:
        self.key_list.write(w)
        w.blob(self.public_context).blob(self.sealed).fixed(self.recipient_key, PUBLIC_KEY_BYTES)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> ContextBroadcast:
        key_list = KeyList.read(r, limits)
        public, sealed = r.blob(limits.max_context), r.blob(limits.max_context + _SEAL_OVERHEAD)
        return cls(key_list, public, sealed, r.public_key())


def _write_blobs(w: Writer, blobs: tuple[bytes, ...]) -> None:
    w.u32(len(blobs))
    for b in blobs:
        w.blob(b)


def _read_blobs(r: Reader, limits: Limits) -> tuple[bytes, ...]:
    count = r.u32()
    if count != limits.chunks:
        raise MalformedMessage(f"expected {limits.chunks} chunk ciphertexts, got {count}")
    return tuple(r.blob(limits.max_ciphertext) for _ in range(count))


@dataclass(frozen=True, slots=True)
class Upload:
    """Client -> server, its only message: one ciphertext per slot-sized chunk of the flat buffer
    (weighted values, weight in the last value slot)."""

    chunks: tuple[bytes, ...]
    KIND = Kind.UPLOAD

    def write(self, w: Writer) -> None:
        _write_blobs(w, self.chunks)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> Upload:
        return cls(_read_blobs(r, limits))


@dataclass(frozen=True, slots=True)
class DecryptRequest:
    """Server -> one key holder: the contributors and the chunk-wise sum of their ciphertexts."""

    contributors: tuple[int, ...]
    chunks: tuple[bytes, ...]
    KIND = Kind.DECRYPT_REQUEST

    def write(self, w: Writer) -> None:
        w.ids(self.contributors)
        _write_blobs(w, self.chunks)

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> DecryptRequest:
        return cls(r.ids(limits.max_parties), _read_blobs(r, limits))


@dataclass(frozen=True, slots=True)
class DecryptResponse:
    """Key holder -> server: the grid-rounded sum in grid units (int64), weight sum last."""

    contributors: tuple[int, ...]
    grid_sum: np.ndarray
    KIND = Kind.DECRYPT_RESPONSE

    def write(self, w: Writer) -> None:
        w.ids(self.contributors).array(np.ascontiguousarray(self.grid_sum, dtype="<i8").view("<u8"))

    @classmethod
    def read(cls, r: Reader, limits: Limits) -> DecryptResponse:
        contributors = r.ids(limits.max_parties)
        return cls(contributors, r.array(8, limits.dim).view("<i8"))


Body = Union[Advertise, KeyList, KeyPackage, ContextBroadcast, Upload, DecryptRequest, DecryptResponse]
_BY_KIND: dict[int, Any] = {
    cls.KIND: cls for cls in (Advertise, KeyList, KeyPackage, ContextBroadcast, Upload, DecryptRequest, DecryptResponse)
}


def encode(header: Header, body: Body, tag_key: bytes | None = None) -> bytes:
    """Canonical bytes of a message; authenticated kinds need the one-time ``tag_key``."""
    w = Writer()
    body.write(w)
    return finish(header, w, AUTHENTICATED_KINDS, tag_key)


def decode(data: bytes, limits: Limits, tag_key: TagKey | None = None) -> tuple[Header, Body]:
    """Parse a whole message, checking its tag first if its kind is authenticated.

    Raises:
        MalformedMessage: the bytes are not a canonical encoding of a known message.
        IntegrityError: the tag does not verify.
    """
    header, reader = open_message(data, AUTHENTICATED_KINDS, tag_key)
    cls = _BY_KIND.get(header.kind)
    if cls is None:
        raise MalformedMessage(f"unknown message kind {header.kind}")
    body: Body = cls.read(reader, limits)
    reader.done()
    return header, body
