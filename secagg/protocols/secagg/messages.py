"""Message bodies of SecAgg / SecAgg+ and their canonical encodings.

Each message is a frozen dataclass with ``encode(header) -> bytes`` and a ``decode(reader)``
classmethod; :func:`decode` dispatches on the header's kind and checks the body is consumed exactly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from ...errors import MalformedMessage, ParameterError
from ...hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from ...wire import Header, Reader, Writer
from ..channel import TagKey, finish, open_message

__all__ = [
    "Kind",
    "ShareKind",
    "Advertise",
    "KeyEntry",
    "KeyList",
    "ShareBundle",
    "ShareDelivery",
    "MaskedInput",
    "VectorFormat",
    "SurvivorList",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "Body",
    "decode",
    "read_body",
    "encode",
    "AUTHENTICATED_KINDS",
    "MAX_CIPHERTEXT",
    "MAX_PARTIES",
]

MAX_CIPHERTEXT = 1024
MAX_PARTIES = 1 << 20


class Kind(enum.IntEnum):
    ADVERTISE = 1
    KEY_LIST = 2
    SHARES = 3
    DELIVERY = 4
    MASKED_INPUT = 5
    SURVIVORS = 6
    SURVIVOR_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9


# Messages sent after the key list carry a Poly1305 tag keyed from the client-server channel secret.
AUTHENTICATED_KINDS = frozenset(
    {Kind.SHARES, Kind.DELIVERY, Kind.MASKED_INPUT, Kind.SURVIVORS, Kind.SURVIVOR_SIGNATURE,
     Kind.UNMASK_REQUEST, Kind.UNMASK_RESPONSE}
)


class ShareKind(enum.IntEnum):
    SELF_MASK_SEED = 1
    MASK_KEY = 2



def _signature(reader: Reader) -> bytes:
    sig = reader.blob(SIGNATURE_BYTES)
    if len(sig) not in (0, SIGNATURE_BYTES):
        raise MalformedMessage("a signature is empty or 64 bytes")
    return sig


@dataclass(frozen=True, slots=True)
class Advertise:
    """Client -> server: the two fresh public keys (and a signature in the malicious variant)."""

    encryption_key: bytes
    mask_key: bytes
    signature: bytes = b""
    KIND = Kind.ADVERTISE

    def write(self, w: Writer) -> None:
        w.fixed(self.encryption_key, PUBLIC_KEY_BYTES).fixed(self.mask_key, PUBLIC_KEY_BYTES).blob(self.signature)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> Advertise:
        return cls(r.public_key(), r.public_key(), _signature(r))


@dataclass(frozen=True, slots=True)
class KeyEntry:
    client: int
    encryption_key: bytes
    mask_key: bytes
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class KeyList:
    """Server -> every advertiser: the server's channel key and all advertised keys, by client id."""

    server_key: bytes
    entries: tuple[KeyEntry, ...]
    KIND = Kind.KEY_LIST

    def write(self, w: Writer) -> None:
        w.fixed(self.server_key, PUBLIC_KEY_BYTES)
        w.ids([e.client for e in self.entries])
        for e in self.entries:
            w.fixed(e.encryption_key, PUBLIC_KEY_BYTES).fixed(e.mask_key, PUBLIC_KEY_BYTES).blob(e.signature)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> KeyList:
        server_key = r.public_key()
        ids = r.ids(max_parties)
        return cls(server_key, tuple(KeyEntry(i, r.public_key(), r.public_key(), _signature(r)) for i in ids))

    def body_bytes(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.body()


@dataclass(frozen=True, slots=True)
class _Addressed:
    """A list of (peer id, ciphertext) pairs sorted by peer id."""

    peers: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]

    def write(self, w: Writer) -> None:
        w.ids(self.peers)
        for c in self.ciphertexts:
            w.blob(c)

    @classmethod
    def read(cls, r: Reader, max_parties: int):  # type: ignore[no-untyped-def]
        peers = r.ids(max_parties)
        return cls(peers, tuple(r.blob(MAX_CIPHERTEXT) for _ in peers))


@dataclass(frozen=True, slots=True)
class ShareBundle:
    """Client -> server: one AEAD ciphertext of shares per neighbour (``peers`` = recipients) and a
    hash commitment to the self-mask seed, so the server can verify the seed it reconstructs."""

    peers: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    seed_commitment: bytes
    KIND = Kind.SHARES

    def write(self, w: Writer) -> None:
        w.fixed(self.seed_commitment, 32)
        _Addressed(self.peers, self.ciphertexts).write(w)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> ShareBundle:
        commitment = r.fixed(32)
        inner = _Addressed.read(r, max_parties)
        return cls(inner.peers, inner.ciphertexts, commitment)


@dataclass(frozen=True, slots=True)
class ShareDelivery(_Addressed):
    """Server -> client: the ciphertexts addressed to it (``peers`` = senders)."""

    KIND = Kind.DELIVERY


@dataclass(frozen=True, slots=True)
class VectorFormat:
    """What a masked input must be: ``count`` words of the ring Z_{2^bits}, decoded as ``dtype``."""

    bits: int
    count: int
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Client -> server: the masked vector, ``bits`` bits per word on the wire (the ring's width)."""

    vector: np.ndarray
    bits: int
    KIND = Kind.MASKED_INPUT

    def write(self, w: Writer) -> None:
        w.packed(self.vector, self.bits)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> MaskedInput:
        raise NotImplementedError("use MaskedInput.read_vector with the expected format")

    @classmethod
    def read_vector(cls, r: Reader, fmt: VectorFormat, out: np.ndarray | None = None) -> MaskedInput:
        """Every word is in the ring by construction; ``out`` (``fmt.count`` words) receives them."""
        return cls(r.packed(fmt.count, fmt.bits, fmt.dtype, out), fmt.bits)


@dataclass(frozen=True, slots=True)
class SurvivorList:
    """Server -> survivors (malicious variant): the set U3 to sign."""

    survivors: tuple[int, ...]
    KIND = Kind.SURVIVORS

    def write(self, w: Writer) -> None:
        w.ids(self.survivors)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> SurvivorList:
        return cls(r.ids(max_parties))


@dataclass(frozen=True, slots=True)
class SurvivorSignature:
    """Client -> server (malicious variant): signature over (session, U3)."""

    signature: bytes
    KIND = Kind.SURVIVOR_SIGNATURE

    def write(self, w: Writer) -> None:
        w.fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> SurvivorSignature:
        return cls(r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> survivors: who is alive (U3), who dropped after sharing, and (malicious) the
    signatures of the survivors over U3."""

    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    signers: tuple[int, ...] = ()
    signatures: tuple[bytes, ...] = ()
    KIND = Kind.UNMASK_REQUEST

    def write(self, w: Writer) -> None:
        w.ids(self.alive).ids(self.dropped).ids(self.signers)
        for s in self.signatures:
            w.fixed(s, SIGNATURE_BYTES)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> UnmaskRequest:
        alive, dropped, signers = r.ids(max_parties), r.ids(max_parties), r.ids(max_parties)
        return cls(alive, dropped, signers, tuple(r.fixed(SIGNATURE_BYTES) for _ in signers))


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Client -> server: for each owner, one share of exactly one kind."""

    owners: tuple[int, ...]
    kinds: tuple[int, ...]
    shares: tuple[bytes, ...]
    KIND = Kind.UNMASK_RESPONSE

    def write(self, w: Writer) -> None:
        w.ids(self.owners)
        for kind, share in zip(self.kinds, self.shares):
            w.u8(kind).blob(share)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> UnmaskResponse:
        owners = r.ids(max_parties)
        kinds, shares = [], []
        for _ in owners:
            kind = r.u8()
            if kind not in (ShareKind.SELF_MASK_SEED, ShareKind.MASK_KEY):
                raise MalformedMessage(f"unknown share kind {kind}")
            kinds.append(kind)
            shares.append(r.blob(MAX_CIPHERTEXT))
        return cls(owners, tuple(kinds), tuple(shares))


Body = Union[
    Advertise, KeyList, ShareBundle, ShareDelivery, MaskedInput, SurvivorList, SurvivorSignature,
    UnmaskRequest, UnmaskResponse,
]
_BY_KIND: dict[int, Any] = {
    cls.KIND: cls
    for cls in (Advertise, KeyList, ShareBundle, ShareDelivery, SurvivorList, SurvivorSignature,
                UnmaskRequest, UnmaskResponse)
}


def encode(header: Header, body: Body, tag_key: bytes | None = None) -> bytes:
    """Canonical bytes of a message; authenticated kinds need the one-time ``tag_key``."""
    w = Writer()
    body.write(w)
    return finish(header, w, AUTHENTICATED_KINDS, tag_key)


def decode(
    data: bytes,
    *,
    max_parties: int,
    vector: VectorFormat | None = None,
    tag_key: TagKey | None = None,
    vector_out: np.ndarray | None = None,
) -> tuple[Header, Body]:
    """Parse a whole message, checking its tag first if its kind is authenticated.

    Args:
        max_parties: upper bound on any list length (the session's client count).
        vector: the format a masked input must have; None refuses masked inputs.
        tag_key: maps the (unauthenticated) header to the one-time MAC key (see
            :data:`secagg.protocols.channel.TagKey`).
        vector_out: a buffer of ``vector.count`` words to unpack a masked input into (reused
            across messages); None allocates one per message.
    Raises:
        MalformedMessage: the bytes are not a canonical encoding of a known message.
        IntegrityError: the tag does not verify.
    """
    header, reader = open_message(data, AUTHENTICATED_KINDS, tag_key)
    return header, read_body(header, reader, max_parties, vector, vector_out)


def read_body(
    header: Header, reader: Reader, max_parties: int, vector: VectorFormat | None, vector_out: np.ndarray | None = None,
) -> Body:
    """Parse the body that follows ``header`` (tag already checked or removed) to its last byte.

    Raises:
        MalformedMessage: the bytes are not a canonical body of the header's kind.
    """
    body: Body
    if header.kind == Kind.MASKED_INPUT:
        if vector is None:
            raise MalformedMessage("unexpected masked input")
        body = MaskedInput.read_vector(reader, vector, vector_out)
    elif header.kind in _BY_KIND:
        body = _BY_KIND[header.kind].read(reader, max_parties)
    else:
        raise MalformedMessage(f"unknown message kind {header.kind}")
    reader.done()
    return body
