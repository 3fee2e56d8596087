"""The authenticated client-server channel every protocol uses (one way to do it).

Each client advertises a fresh X25519 key and the server holds a fresh per-round X25519 key; the
first server message carries the server key. Both sides derive a channel secret with HKDF under
the label ``server-channel`` bound to a protocol-chosen ``binding`` (SecAgg: the session id, which
hashes the whole key list; CKKS: the setup id) and the client id. Every message of an
authenticated kind carries a Poly1305 tag under a one-time key derived from that secret, the
direction and the kind: each kind is sent at most once per direction per channel, so no one-time
key is ever used twice.

What it gives: no one but the server and that client can produce or alter an authenticated message
between them, and a message cannot move between clients, directions, kinds or sessions. What it
does not give: the first server message (it carries the server key) is not authenticated, so an
active network attacker who can impersonate the server must be stopped by the transport (TLS).
"""

from __future__ import annotations

import struct
from typing import Callable, Collection

from ..errors import MalformedMessage, ParameterError
from ..hazmat.keys import derive_key
from ..wire import Header, Reader, Writer, strip_tag

__all__ = [
    "LABEL_SERVER_CHANNEL",
    "TO_SERVER",
    "TO_CLIENT",
    "TagKey",
    "channel_context",
    "message_key",
    "finish",
    "open_message",
]

LABEL_SERVER_CHANNEL = b"server-channel"
LABEL_MESSAGE_MAC = b"message-mac"
TO_SERVER = 0
TO_CLIENT = 1

# Maps the (not yet authenticated) header of a message to its one-time MAC key; it may raise
# ProtocolAbort for a header that cannot be for this party.
TagKey = Callable[[Header], bytes]


def channel_context(binding: bytes, client: int) -> bytes:
    """KDF context of the secret ``client`` shares with the server."""
    return binding + struct.pack("<I", client)


def message_key(channel_secret: bytes, direction: int, kind: int) -> bytes:
    """One-time Poly1305 key for the single message of ``kind`` sent in ``direction``."""
    return derive_key(channel_secret, LABEL_MESSAGE_MAC, bytes([direction, kind]))


def finish(header: Header, writer: Writer, authenticated: Collection[int], tag_key: bytes | None) -> bytes:
    """The bytes of a message; a kind in ``authenticated`` needs its one-time ``tag_key``, others none."""
    if (header.kind in authenticated) != (tag_key is not None):
        raise ParameterError(f"message kind {header.kind} {'needs' if tag_key is None else 'takes no'} tag key")
    return writer.finish(header, tag_key)


def open_message(data: bytes, authenticated: Collection[int], tag_key: TagKey | None) -> tuple[Header, Reader]:
    """The header and a reader over the body, after checking the tag of an authenticated kind.

    Raises:
        MalformedMessage: bad header, or an authenticated kind where none is expected.
        IntegrityError: the tag does not verify.
    """
    header, reader = Header.decode(data)
    if header.kind in authenticated:
        if tag_key is None:
            raise MalformedMessage(f"message kind {header.kind} is not expected here")
        header, reader = Header.decode(strip_tag(data, tag_key(header)))
    return header, reader
