"""Transcripts: every message one party sent and received, in our wire format, in order.

File layout (little-endian, no pickle)::

    magic "SATX" | version u16 | role u8 (0 server, 1 client) | party u32 | meta length u32 | meta
    then records: direction u8 (0 received, 1 sent) | peer u32 | length u32 | message bytes

``meta`` is UTF-8 JSON with the public parameters a checker needs (protocol, n, t, modulus bits,
and the identity registry the party used, if any): nothing secret is ever written. Messages are
stored exactly as they crossed the wire, tags included. The metadata is whatever the recorder
wrote: a checker treats it as hostile input, and a registry in it is only the server's claim (an
auditor checks signatures against a registry of their own).

Record with :class:`TranscriptRecorder`: call :meth:`~TranscriptRecorder.sent` and
:meth:`~TranscriptRecorder.received` from your transport, or pass the recorder as ``tap`` to
:func:`secagg.router.run_round` (it keeps only its own party's messages; :func:`tee` combines several).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Callable, Mapping

from ..encoding import word_dtype
from ..errors import MalformedMessage
from ..params import SecAggConfig
from ..protocols.secagg import messages as m
from ..wire import HEADER_BYTES, SERVER_ID, TAG_BYTES, Header, Reader

__all__ = [
    "TRANSCRIPT_MAGIC", "TRANSCRIPT_VERSION", "RECEIVED", "SENT", "Record", "Transcript",
    "TranscriptRecorder", "read_transcript", "decode_untagged", "config_meta", "tee",
]

TRANSCRIPT_MAGIC = b"SATX"
TRANSCRIPT_VERSION = 1
RECEIVED, SENT = 0, 1
_HEAD = struct.Struct("<4sHBII")
_RECORD = struct.Struct("<BII")
MAX_MESSAGE = 1 << 31
MAX_META = 1 << 24


def config_meta(config: SecAggConfig, round_number: int = 0, registry: Mapping[int, bytes] | None = None) -> dict[str, Any]:
    """The public parameters of a session, as stored in a transcript header."""
    meta: dict[str, Any] = {
        "protocol": config.protocol,
        "num_clients": config.num_clients,
        "threshold": config.threshold,
        "quorum": config.quorum,
        "degree": config.degree,
        "adversary": config.threat.adversary.value,
        "modulus_bits": config.encoding.modulus_bits,
        "word_bytes": config.encoding.dtype.itemsize,
        "dim": config.dim,
        "round": round_number,
    }
    if registry is not None:
        meta["registry"] = {str(k): v.hex() for k, v in sorted(registry.items())}
    return meta


@dataclass(frozen=True)
class Record:
    """One message: received from or sent to ``peer``."""

    direction: int
    peer: int
    data: bytes


@dataclass(frozen=True)
class Transcript:
    """A parsed transcript file."""

    role: str
    party: int
    meta: dict[str, Any]
    records: tuple[Record, ...]


class TranscriptRecorder:
    """Appends one party's messages to a transcript file.

    Args:
        stream: a binary stream opened for writing (see :meth:`open` for a path).
        party: this party's id (``secagg.wire.SERVER_ID`` for the server).
        meta: public session parameters, e.g. from :func:`config_meta`.
    """

    def __init__(self, stream: BinaryIO, party: int, meta: Mapping[str, Any]) -> None:
        self._stream, self.party = stream, party
        blob = json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode()
        role = 0 if party == SERVER_ID else 1
        stream.write(_HEAD.pack(TRANSCRIPT_MAGIC, TRANSCRIPT_VERSION, role, party, len(blob)) + blob)
        self.count = 0

    @classmethod
    def open(cls, path: str | Path, party: int, meta: Mapping[str, Any]) -> TranscriptRecorder:
        return cls(open(path, "wb"), party, meta)

    def _write(self, direction: int, peer: int, data: bytes) -> None:
        self._stream.write(_RECORD.pack(direction, peer, len(data)) + bytes(data))
        self.count += 1

    def sent(self, peer: int, data: bytes) -> None:
        self._write(SENT, peer, data)

    def received(self, peer: int, data: bytes) -> None:
        self._write(RECEIVED, peer, data)

    def __call__(self, sender: int, recipient: int, data: bytes) -> None:
        """The router's tap: keep the message if this party sent or received it."""
        if sender == self.party:
            self.sent(recipient, data)
        elif recipient == self.party:
            self.received(sender, data)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> TranscriptRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def tee(*taps: Callable[[int, int, bytes], None]) -> Callable[[int, int, bytes], None]:
    """One tap that feeds several recorders."""
    def both(sender: int, recipient: int, data: bytes) -> None:
        for tap in taps:
            tap(sender, recipient, data)

    return both


def read_transcript(path: str | Path) -> Transcript:
    """Parse a transcript file.

    Raises:
        MalformedMessage: wrong magic or version, a truncated record, or a bad header.
    """
    data = Path(path).read_bytes()
    if len(data) < _HEAD.size:
        raise MalformedMessage("not a secagg transcript (too short)")
    magic, version, role, party, meta_len = _HEAD.unpack_from(data)
    if magic != TRANSCRIPT_MAGIC or version != TRANSCRIPT_VERSION or role not in (0, 1):
        raise MalformedMessage("not a secagg transcript (bad magic, version or role)")
    pos = _HEAD.size + meta_len
    if meta_len > MAX_META or pos > len(data):
        raise MalformedMessage("transcript metadata truncated")
    try:
        meta = json.loads(data[_HEAD.size:pos].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise MalformedMessage("transcript metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise MalformedMessage("transcript metadata is not a JSON object")
    records: list[Record] = []
    while pos < len(data):
        if pos + _RECORD.size > len(data):
            raise MalformedMessage(f"record {len(records)} truncated")
        direction, peer, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if direction not in (RECEIVED, SENT) or length > MAX_MESSAGE or pos + length > len(data):
            raise MalformedMessage(f"record {len(records)} is malformed or truncated")
        records.append(Record(direction, peer, data[pos : pos + length]))
        pos += length
    return Transcript("server" if role == 0 else "client", party, meta, tuple(records))


def decode_untagged(data: bytes, max_parties: int = m.MAX_PARTIES) -> tuple[Header, m.Body]:
    """Decode a message without checking its tag.

    A third party holds no channel key, so it cannot verify the Poly1305 tag on kinds in
    ``AUTHENTICATED_KINDS``: the last ``TAG_BYTES`` are skipped and the body is parsed with our
    canonical decoders. A transcript therefore proves what its recorder says it saw, not that each
    message was authentic.

    Raises:
        MalformedMessage: the bytes are not a canonical message of a known kind.
    """
    header, _ = Header.decode(data)
    if header.kind in m.AUTHENTICATED_KINDS:
        if len(data) < TAG_BYTES:
            raise MalformedMessage("message shorter than its tag")
        data = data[:-TAG_BYTES]
    header, reader = Header.decode(data)
    vector = None
    if header.kind == m.Kind.MASKED_INPUT:  # a transcript reader takes the width and count as sent
        peek = Reader(memoryview(data)[HEADER_BYTES:])
        bits, count = peek.u8(), peek.u64()
        if not 1 <= bits <= 64:
            raise MalformedMessage(f"masked input with {bits}-bit words")
        vector = m.VectorFormat(bits, count, word_dtype(bits))
    return header, m.read_body(header, reader, max_parties, vector)
