"""Canonical, versioned, length-checked binary encoding of protocol messages (no pickle).

Every message is ``header || body``. The header is fixed-size::

    magic "SAGG" | version u16 | kind u8 | protocol u8 | round u64 | session 32B | sender u32 | recipient u32

All integers are little-endian. Decoders reject truncation, trailing bytes, unknown versions or kinds,
and length claims beyond the bytes present or beyond a caller-given maximum, each with
:class:`~secagg.errors.MalformedMessage`. Encoding is canonical: one message has exactly one
encoding, so ``encode(decode(b)) == b`` for every accepted ``b``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import IntegrityError, MalformedMessage, ParameterError
from .hazmat.keys import PUBLIC_KEY_BYTES, is_canonical_public_key

__all__ = [
    "MAGIC", "WIRE_VERSION", "SERVER_ID", "Header", "Writer", "Reader", "HEADER_BYTES", "TAG_BYTES",
    "strip_tag",
]

MAGIC = b"SAGG"
WIRE_VERSION = 1
SERVER_ID = 0xFFFFFFFF
SESSION_BYTES = 32
_HEADER = struct.Struct("<4sHBBQ32sII")
HEADER_BYTES = _HEADER.size
TAG_BYTES = 16
_ARRAY_CODES: dict[int, np.dtype[Any]] = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


@dataclass(frozen=True, slots=True)
class Header:
    """Routing and binding fields common to every message."""

    kind: int
    protocol: int
    round: int
    session: bytes
    sender: int
    recipient: int
    version: int = WIRE_VERSION

    def encode(self) -> bytes:
        if len(self.session) != SESSION_BYTES:
            raise ParameterError("session ids are 32 bytes")
        return _HEADER.pack(
            MAGIC, self.version, self.kind, self.protocol, self.round, self.session, self.sender, self.recipient
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> tuple[Header, Reader]:
        """Parse the header; returns it and a reader positioned at the body."""
        if len(data) < HEADER_BYTES:
            raise MalformedMessage("message shorter than its header")
        magic, version, kind, protocol, rnd, session, sender, recipient = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise MalformedMessage("not a secagg message (bad magic)")
        if version != WIRE_VERSION:
            raise MalformedMessage(f"unsupported wire version {version}")
        header = cls(kind, protocol, rnd, session, sender, recipient, version)
        return header, Reader(memoryview(data)[HEADER_BYTES:])


class Writer:
    """Appends canonical fields to a growing list of byte strings."""

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack("<B", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack("<I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack("<Q", value))
        return self

    def fixed(self, data: bytes, length: int) -> Writer:
        if len(data) != length:
            raise ParameterError(f"field must be {length} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        return self

    def blob(self, data: bytes) -> Writer:
        """A u32 length followed by the bytes."""
        self.u32(len(data))
        self._parts.append(bytes(data))
        return self

    def ids(self, values: list[int] | tuple[int, ...]) -> Writer:
        """A strictly increasing list of u32 identifiers (canonical set encoding)."""
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ParameterError("id lists must be strictly increasing")
        self.u32(len(values))
        self._parts.append(np.asarray(values, dtype="<u4").tobytes())
        return self

    def array(self, values: np.ndarray) -> Writer:
        """Word size u8 (1, 2, 4 or 8), count u64, then little-endian words."""
        dtype = values.dtype.newbyteorder("<")
        if values.dtype.kind != "u" or dtype.itemsize not in _ARRAY_CODES:
            raise ParameterError("only unsigned word arrays travel on the wire")
        self.u8(dtype.itemsize).u64(values.shape[0])
        self._parts.append(np.ascontiguousarray(values, dtype=dtype).data.cast("B"))
        return self

    def raw(self, data: bytes) -> Writer:
        """Append bytes that are already a canonical encoding (e.g. a body encoded once for many)."""
        self._parts.append(data)
        return self

    def body(self) -> bytes:
        """The fields written so far, without a header."""
        return b"".join(self._parts)

    def finish(self, header: Header, tag_key: bytes | None = None) -> bytes:
        """Header, fields and, with ``tag_key``, a Poly1305 tag over both, in one copy.

        Security assumption: ``tag_key`` (32 bytes) authenticates this one message only; the
        protocols derive it per session, party, direction and message kind.
        """
        parts: list[bytes | memoryview] = [header.encode(), *self._parts]
        if tag_key is not None:
            mac = Poly1305(tag_key)
            for part in parts:
                mac.update(part)
            parts.append(mac.finalize())
        return b"".join(parts)


class Reader:
    """Consumes fields from a buffer; every read checks the bytes are there."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._data):
            raise MalformedMessage("message truncated or length claim too large")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self._take(8))[0])

    def fixed(self, length: int) -> bytes:
        return bytes(self._take(length))

    def public_key(self) -> bytes:
        """An X25519 public key in its one canonical encoding (u < 2^255 - 19, so bit 255 is clear).

        X25519 ignores bit 255, so without this check two byte strings name one point and a key
        could be re-advertised under a different encoding that compares unequal.
        """
        key = self.fixed(PUBLIC_KEY_BYTES)
        if not is_canonical_public_key(key):
            raise MalformedMessage("an X25519 public key is not canonically encoded")
        return key

    def blob(self, max_length: int) -> bytes:
        length = self.u32()
        if length > max_length:
            raise MalformedMessage(f"field of {length} bytes exceeds the limit of {max_length}")
        return bytes(self._take(length))

    def ids(self, max_count: int) -> tuple[int, ...]:
        count = self.u32()
        if count > max_count:
            raise MalformedMessage(f"list of {count} ids exceeds the limit of {max_count}")
        values = np.frombuffer(self._take(4 * count), dtype="<u4")
        if count > 1 and not (np.diff(values.astype(np.int64)) > 0).all():
            raise MalformedMessage("id list is not strictly increasing")
        return tuple(int(v) for v in values)

    def array(self, itemsize: int, count: int) -> np.ndarray:
        """Read a word array that must have exactly this word size and count (zero-copy)."""
        size, n = self.u8(), self.u64()
        if size != itemsize or n != count:
            raise MalformedMessage(f"expected {count} words of {itemsize} bytes, got {n} of {size}")
        return np.frombuffer(self._take(itemsize * count), dtype=_ARRAY_CODES[itemsize])

    def done(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage(f"{len(self._data) - self._pos} trailing bytes")


def strip_tag(message: bytes | memoryview, one_time_key: bytes) -> memoryview:
    """Check and remove the tag added by :meth:`Writer.finish` (zero-copy).

    Raises:
        IntegrityError: the message or its tag was altered (or the key is wrong).
    """
    view = memoryview(message)
    if len(view) < HEADER_BYTES + TAG_BYTES:
        raise IntegrityError("message authentication failed")
    try:
        Poly1305.verify_tag(one_time_key, view[:-TAG_BYTES], bytes(view[-TAG_BYTES:]))
    except InvalidSignature:
        raise IntegrityError("message authentication failed") from None
    return view[:-TAG_BYTES]
