"""Canonical, versioned, length-checked binary encoding of protocol messages (no pickle).

Every message is ``header || body``. The header is fixed-size::

    magic "SAGG" | version u16 | kind u8 | protocol u8 | round u64 | session 32B | sender u32 | recipient u32

All integers are little-endian. Ring vectors travel bit-packed (:meth:`Writer.packed`): word i of a
b-bit vector occupies bits [i*b, (i+1)*b) of a little-endian bit stream (bit j of the stream is bit
j % 8 of byte j // 8), the last byte's unused high bits are zero, and nothing else is sent. Decoders reject truncation, trailing bytes, unknown versions or kinds,
and length claims beyond the bytes present or beyond a caller-given maximum, each with
:class:`~secagg.errors.MalformedMessage`. Encoding is canonical: one message has exactly one
encoding, so ``encode(decode(b)) == b`` for every accepted ``b``.
"""

from __future__ import annotations

import functools
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
_PACK_CHUNK = 1 << 14
"""Words packed or unpacked per step: bounds the temporaries (<= 128 KiB each) and keeps them in cache."""


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

    def packed(self, words: np.ndarray, bits: int) -> Writer:
        """Width u8 (``bits``, 1..64), count u64, then the words bit-packed: ceil(count * bits / 8) bytes.

        Raises:
            ParameterError: ``words`` is not a 1-D unsigned array, ``bits`` is outside 1..64, or a
                word does not fit in ``bits`` bits.
        """
        words = np.asarray(words)
        if words.ndim != 1 or words.dtype.kind != "u" or words.dtype.itemsize > 8:
            raise ParameterError("only 1-D unsigned word arrays are packed")
        self.u8(_check_bits(bits)).u64(words.shape[0])
        self._parts.append(_pack(words, bits).data.cast("B"))
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
        return tuple(self.id_array(max_count).tolist())

    def id_array(self, max_count: int) -> np.ndarray:
        """:meth:`ids` as a read-only little-endian uint32 array (no per-id Python object)."""
        count = self.u32()
        if count > max_count:
            raise MalformedMessage(f"list of {count} ids exceeds the limit of {max_count}")
        values = np.frombuffer(self._take(4 * count), dtype="<u4")
        if count > 1 and not (np.diff(values.astype(np.int64)) > 0).all():
            raise MalformedMessage("id list is not strictly increasing")
        return values

    def blobs(self, count: int, max_length: int, prefix: int = 0) -> tuple[np.ndarray, tuple[bytes, ...]]:
        """``count`` records of ``prefix`` bytes then a :meth:`blob`: the prefixes as a ``(count,
        prefix)`` uint8 array, and the blobs.

        One numpy pass when every blob has one length (an honest party's list of ciphertexts or
        shares), record by record otherwise: the same bytes are accepted or refused either way.
        """
        stride = prefix + 4
        if count and self.remaining() >= stride:
            length = int.from_bytes(self.peek(stride)[prefix:], "little")
            stride += length
            if length <= max_length and self.remaining() >= count * stride:
                block = np.frombuffer(self.peek(count * stride), dtype=np.uint8).reshape(count, stride)
                lengths = np.ascontiguousarray(block[:, prefix : prefix + 4]).view("<u4").ravel()
                if (lengths == length).all():
                    data = bytes(self._take(count * stride))
                    start = prefix + 4
                    blobs = tuple(data[i + start : i + stride] for i in range(0, count * stride, stride))
                    return np.array(block[:, :prefix]), blobs
        prefixes = np.empty((count, prefix), dtype=np.uint8)
        out = []
        for i in range(count):
            prefixes[i] = np.frombuffer(self._take(prefix), dtype=np.uint8)
            out.append(self.blob(max_length))
        return prefixes, tuple(out)

    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._data) - self._pos

    def peek(self, n: int) -> memoryview:
        """The next ``n`` bytes without consuming them (MalformedMessage if they are not there)."""
        if n < 0 or self._pos + n > len(self._data):
            raise MalformedMessage("message truncated or length claim too large")
        return self._data[self._pos : self._pos + n]

    def array(self, itemsize: int, count: int) -> np.ndarray:
        """Read a word array that must have exactly this word size and count (zero-copy)."""
        size, n = self.u8(), self.u64()
        if size != itemsize or n != count:
            raise MalformedMessage(f"expected {count} words of {itemsize} bytes, got {n} of {size}")
        return np.frombuffer(self._take(itemsize * count), dtype=_ARRAY_CODES[itemsize])

    def packed(self, count: int, bits: int, dtype: np.dtype[Any] | type, out: np.ndarray | None = None) -> np.ndarray:
        """Read a bit-packed vector that must have exactly this width and count (see :meth:`Writer.packed`).

        Every decoded word is below 2^bits by construction. When ``bits`` is the width of ``dtype``
        (8, 16, 32, 64) the bytes are the words: a read-only view of them is returned (zero-copy).
        Otherwise, with ``out`` (a contiguous array of ``count`` words of ``dtype``) the words are
        unpacked into it, e.g. a buffer reused for every client, and ``out`` is returned; without,
        into a new array.

        Raises:
            MalformedMessage: wrong width or count, too few bytes, or non-zero padding bits.
            ParameterError: ``dtype`` is not an unsigned type holding ``bits`` bits, or ``out`` does
                not match.
        """
        dtype = np.dtype(dtype)
        if dtype.kind != "u" or 8 * dtype.itemsize < _check_bits(bits):
            raise ParameterError(f"{bits}-bit words do not fit {dtype}")
        if out is not None and (out.dtype != dtype or out.shape != (count,) or not out.flags.c_contiguous
                                or not out.flags.writeable):
            raise ParameterError(f"out must be a writable contiguous array of {count} {dtype} words")
        width, n = self.u8(), self.u64()
        if width != bits or n != count:
            raise MalformedMessage(f"expected {count} words of {bits} bits, got {n} of {width}")
        data = self._take((count * bits + 7) // 8)  # before allocating: the bytes must be there
        if bits == 8 * dtype.itemsize:
            return np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        if out is None:
            out = np.empty(count, dtype)
        _unpack(data, bits, out)
        return out

    def done(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage(f"{len(self._data) - self._pos} trailing bytes")


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 64:
        raise ParameterError(f"packed words are 1 to 64 bits wide, not {bits!r}")
    return int(bits)


@dataclass(frozen=True)
class _Layout:
    """Where each word of a group goes. A group is ``lane_bits`` words, which fill exactly ``bits``
    lanes (the smallest little-endian machine word holding ``bits`` bits); word k starts at bit
    ``offset[k]`` of lane ``lane_of[k]`` and, if it crosses the lane's end (``spill``), its high
    bits start lane ``lane_of[k] + 1``."""

    bits: int
    lane: np.dtype[Any]
    group: int
    first: np.ndarray  # first word starting in each lane (every lane has one, since bits <= lane bits)
    more: tuple[tuple[np.ndarray, np.ndarray], ...]  # (lanes, their next word), for the 2nd, 3rd... word
    lane_of: np.ndarray
    offset: np.ndarray
    spill: np.ndarray
    spill_into: np.ndarray
    spill_shift: np.ndarray
    next_lane: np.ndarray
    next_shift: np.ndarray  # lane bits - offset: numpy shifts a lane by its full width to 0
    mask: np.unsignedinteger[Any]


@functools.lru_cache(maxsize=None)
def _layout(bits: int) -> _Layout:
    lane = _ARRAY_CODES[next(size for size in (1, 2, 4, 8) if bits <= 8 * size)]
    group = 8 * lane.itemsize
    starts = np.arange(group) * bits
    lane_of, offset = starts // group, starts % group
    spill = np.flatnonzero(offset + bits > group)
    first = np.searchsorted(lane_of, np.arange(bits))
    starting = np.bincount(lane_of, minlength=bits)
    more = tuple((np.flatnonzero(starting > j), first[starting > j] + j) for j in range(1, int(starting.max())))
    return _Layout(
        bits, lane, group, first, more, lane_of, offset.astype(lane), spill,
        lane_of[spill] + 1, (group - offset[spill]).astype(lane), np.minimum(lane_of + 1, bits - 1),
        (group - offset).astype(lane), lane.type((1 << bits) - 1),
    )


def _pack(words: np.ndarray, bits: int) -> np.ndarray:
    """The packed bytes of ``words`` as a uint8 array (the words themselves when ``bits`` is a lane)."""
    layout = _layout(bits)
    wide = words.dtype.itemsize > layout.lane.itemsize  # check before casting down, not per block
    if wide and (words > layout.mask).any():
        raise ParameterError(f"a word does not fit in {bits} bits")
    if bits == layout.group:  # whole machine words: already packed
        return np.ascontiguousarray(words, dtype=layout.lane).view(np.uint8)
    count = words.shape[0]
    out = np.empty((count * bits + 7) // 8, dtype=np.uint8)
    full = count - count % layout.group
    lanes = out[: full * bits // 8].view(layout.lane).reshape(-1, bits)
    for start in range(0, full, _PACK_CHUNK):
        block = np.ascontiguousarray(words[start : min(start + _PACK_CHUNK, full)], dtype=layout.lane)
        if not wide and (block > layout.mask).any():
            raise ParameterError(f"a word does not fit in {bits} bits")
        rows = start // layout.group
        _pack_groups(block.reshape(-1, layout.group), layout, lanes[rows : rows + block.shape[0] // layout.group])
    if full < count:  # the last, partial group: pad it with zero words, keep the bytes that hold data
        block = np.zeros(layout.group, dtype=layout.lane)
        block[: count - full] = words[full:]
        if (block > layout.mask).any():
            raise ParameterError(f"a word does not fit in {bits} bits")
        tail = np.empty((1, bits), dtype=layout.lane)
        _pack_groups(block.reshape(1, -1), layout, tail)
        out[full * bits // 8 :] = tail.view(np.uint8).reshape(-1)[: out.shape[0] - full * bits // 8]
    return out


def _pack_groups(words: np.ndarray, layout: _Layout, out: np.ndarray) -> None:
    """(groups, group) words -> (groups, bits) lanes. The shifted words of a lane hold disjoint bits."""
    shifted = np.left_shift(words, layout.offset)
    np.take(shifted, layout.first, axis=1, out=out)
    for lanes, word in layout.more:  # (np.bitwise_or.reduceat does this, but 2-3x slower)
        out[:, lanes] |= shifted[:, word]
    if layout.spill.size:
        out[:, layout.spill_into] |= words[:, layout.spill] >> layout.spill_shift


def _unpack(data: memoryview, bits: int, out: np.ndarray) -> None:
    """Unpack ``out.shape[0]`` words from exactly their packed bytes into ``out``.

    Raises:
        MalformedMessage: the last byte has a non-zero padding bit.
    """
    layout = _layout(bits)
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == layout.group:
        out[:] = raw.view(layout.lane)
        return
    count = out.shape[0]
    full = count - count % layout.group
    lanes = raw[: full * bits // 8].view(layout.lane).reshape(-1, bits)
    direct = out.dtype == layout.lane
    scratch = None if direct else np.empty(min(full, _PACK_CHUNK), dtype=layout.lane)
    for start in range(0, full, _PACK_CHUNK):
        stop = min(start + _PACK_CHUNK, full)
        target = out[start:stop] if scratch is None else scratch[: stop - start]
        rows = start // layout.group
        _unpack_groups(lanes[rows : stop // layout.group], layout, target.reshape(-1, layout.group))
        if scratch is not None:
            out[start:stop] = target
    if full < count:  # the last, partial group, zero-padded: the words past the count are padding
        padded = np.zeros(bits * layout.lane.itemsize, dtype=np.uint8)
        padded[: raw.shape[0] - full * bits // 8] = raw[full * bits // 8 :]
        tail = np.empty((1, layout.group), dtype=layout.lane)
        _unpack_groups(padded.view(layout.lane).reshape(1, bits), layout, tail)
        if tail[0, count - full :].any():
            raise MalformedMessage("packed vector has non-zero padding bits")
        out[full:] = tail[0, : count - full]


def _unpack_groups(lanes: np.ndarray, layout: _Layout, out: np.ndarray) -> None:
    """(groups, bits) lanes -> (groups, group) words, each masked to ``bits`` bits.

    Every word takes its low bits from its lane and high bits from the next one; for a word that
    does not cross into it, those land at bit ``bits`` or above (or are shifted out) and the mask
    drops them, so no word needs a gather of its own.
    """
    np.take(lanes, layout.lane_of, axis=1, out=out)
    out >>= layout.offset
    out |= np.take(lanes, layout.next_lane, axis=1) << layout.next_shift
    out &= layout.mask


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
