"""Message bodies of SecAgg / SecAgg+ and their canonical encodings.

Each message is a frozen dataclass with ``encode(header) -> bytes`` and a ``decode(reader)``
classmethod; :func:`decode` dispatches on the header's kind and checks the body is consumed exactly.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union, overload

import numpy as np

from ...errors import MalformedMessage
from ...hazmat.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, canonical_public_keys
from ...wire import Header, Reader, Writer
from ..channel import TagKey, finish, open_message

__all__ = [
    "Kind",
    "ShareKind",
    "Advertise",
    "KeyEntry",
    "KeyList",
    "KeyTable",
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


_ENTRY_BYTES = 2 * PUBLIC_KEY_BYTES + 4  # two keys and the signature's length


class KeyTable(Sequence[KeyEntry]):
    """The entries of a decoded key list, held as arrays: n clients' ids, keys and signatures
    without n Python objects, so a client reads a key list of any size in a few numpy operations.

    A read-only sequence of :class:`KeyEntry` (built on access) that compares equal to the tuple of
    the same entries. Only :meth:`KeyList.read` makes one, from bytes it checked: ids strictly
    increasing, every key canonical, every signature of one length (0 or 64 bytes).
    """

    __slots__ = ("ids", "keys", "signatures", "_raw")

    def __init__(self, ids: np.ndarray, keys: np.ndarray, signatures: np.ndarray | tuple[bytes, ...], raw: bytes) -> None:
        self.ids = ids
        """uint32 client ids, strictly increasing."""
        self.keys = keys
        """uint8 array (n, 2, 32): each client's encryption key and mask key."""
        self.signatures = signatures
        """uint8 array (n, 0 or 64), or one bytes object per entry when their lengths differ."""
        self._raw = raw

    @classmethod
    def read(cls, r: Reader, ids: np.ndarray) -> KeyTable | None:
        """The entries after ``ids``, if they all carry signatures of one length; None (nothing
        read) otherwise, for the entry-by-entry reader to parse or refuse.

        Raises:
            MalformedMessage: a key is not canonically encoded.
        """
        n = len(ids)
        if n == 0 or r.remaining() < _ENTRY_BYTES:
            return None
        sig_len = int.from_bytes(r.peek(_ENTRY_BYTES)[2 * PUBLIC_KEY_BYTES:], "little")
        stride = _ENTRY_BYTES + sig_len
        if sig_len not in (0, SIGNATURE_BYTES) or r.remaining() < n * stride:
            return None
        block = np.frombuffer(r.peek(n * stride), dtype=np.uint8).reshape(n, stride)
        lengths = np.ascontiguousarray(block[:, 2 * PUBLIC_KEY_BYTES : _ENTRY_BYTES]).view("<u4").ravel()
        if (lengths != sig_len).any():
            return None
        keys = block[:, : 2 * PUBLIC_KEY_BYTES].reshape(n, 2, PUBLIC_KEY_BYTES)
        if not canonical_public_keys(keys.reshape(-1, PUBLIC_KEY_BYTES)).all():
            raise MalformedMessage("an X25519 public key is not canonically encoded")
        raw = struct.pack("<I", n) + ids.astype("<u4").tobytes() + r.fixed(n * stride)
        return cls(np.array(ids, dtype=np.uint32), np.array(keys), np.array(block[:, _ENTRY_BYTES:]), raw)

    @classmethod
    def of(cls, entries: Sequence[KeyEntry], raw: bytes) -> KeyTable:
        """A table of entries already read one by one (``raw``: their canonical bytes)."""
        ids = np.array([e.client for e in entries], dtype=np.uint32)
        keys = np.frombuffer(b"".join(e.encryption_key + e.mask_key for e in entries), dtype=np.uint8)
        return cls(ids, keys.reshape(len(entries), 2, PUBLIC_KEY_BYTES), tuple(e.signature for e in entries), raw)

    def position(self, client: int) -> int:
        """The index of ``client``'s entry, or -1 if it is not listed."""
        i = int(np.searchsorted(self.ids, client))
        return i if i < len(self.ids) and int(self.ids[i]) == client else -1

    def entry(self, client: int) -> KeyEntry | None:
        """``client``'s entry, or None if it is not listed."""
        i = self.position(client)
        return self[i] if i >= 0 else None

    def entries_of(self, clients: Sequence[int]) -> dict[int, KeyEntry]:
        """The entries of those of ``clients`` that are listed, by client (one binary search for all)."""
        if not len(clients) or not len(self.ids):
            return {}
        wanted = np.asarray(clients, dtype=np.int64)
        found = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        hit = self.ids[found] == wanted
        return {int(c): self[int(i)] for c, i in zip(wanted[hit], found[hit])}

    def encoded(self) -> bytes:
        """The canonical bytes of the ids and entries, as read."""
        return self._raw

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> KeyEntry: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[KeyEntry, ...]: ...

    def __getitem__(self, index: int | slice) -> KeyEntry | tuple[KeyEntry, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        keys, sig = self.keys[index], self.signatures[index]
        return KeyEntry(int(self.ids[index]), keys[0].tobytes(), keys[1].tobytes(),
                        sig if isinstance(sig, bytes) else sig.tobytes())

    def __iter__(self) -> Iterator[KeyEntry]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyTable):
            return self._raw == other._raw
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Sequence[KeyEntry]) -> tuple[KeyEntry, ...]:
        return tuple(self) + tuple(other)

    def __radd__(self, other: Sequence[KeyEntry]) -> tuple[KeyEntry, ...]:
        return tuple(other) + tuple(self)

    def __repr__(self) -> str:
        return f"KeyTable({len(self)} entries)"


@dataclass(frozen=True, slots=True)
class KeyList:
    """Server -> every advertiser: the server's channel key and all advertised keys, by client id.

    Decoded, ``entries`` is a :class:`KeyTable` when every entry's signature has one length (always,
    from an honest server); built by a server, any sequence of :class:`KeyEntry`.
    """

    server_key: bytes
    entries: Sequence[KeyEntry]
    KIND = Kind.KEY_LIST

    def table(self) -> KeyTable:
        """``entries`` as a :class:`KeyTable` (built once more if they are objects)."""
        if isinstance(self.entries, KeyTable):
            return self.entries
        w = Writer()
        w.ids([e.client for e in self.entries])
        for e in self.entries:
            w.fixed(e.encryption_key, PUBLIC_KEY_BYTES).fixed(e.mask_key, PUBLIC_KEY_BYTES).blob(e.signature)
        return KeyTable.of(self.entries, w.body())

    def write(self, w: Writer) -> None:
        w.fixed(self.server_key, PUBLIC_KEY_BYTES)
        if isinstance(self.entries, KeyTable):
            w.raw(self.entries.encoded())  # canonical: read and checked, or written below
            return
        w.ids([e.client for e in self.entries])
        for e in self.entries:
            w.fixed(e.encryption_key, PUBLIC_KEY_BYTES).fixed(e.mask_key, PUBLIC_KEY_BYTES).blob(e.signature)

    @classmethod
    def read(cls, r: Reader, max_parties: int) -> KeyList:
        server_key = r.public_key()
        ids = r.id_array(max_parties)
        table = KeyTable.read(r, ids)
        if table is not None:
            return cls(server_key, table)
        return cls(server_key, tuple(KeyEntry(int(i), r.public_key(), r.public_key(), _signature(r)) for i in ids))

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
        return cls(peers, r.blobs(len(peers), MAX_CIPHERTEXT)[1])


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
        prefixes, shares = r.blobs(len(owners), MAX_CIPHERTEXT, prefix=1)
        kinds = prefixes[:, 0].tolist()
        for kind in kinds:
            if kind not in (ShareKind.SELF_MASK_SEED, ShareKind.MASK_KEY):
                raise MalformedMessage(f"unknown share kind {kind}")
        return cls(owners, tuple(kinds), shares)


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
