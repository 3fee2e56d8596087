"""A CKKS client's round state between two messages, as canonical versioned bytes (no pickle).

SEAL draws its own randomness (key generation, encryption), so a CKKS client cannot be rebuilt by
replaying its messages the way a masking client can: a process that must hand the round over to
another one (Flower starts one process per message) exports the state and the next one imports it
(:meth:`CkksClient.export_state`, :meth:`CkksClient.import_state`).

Layout (integers little-endian, ``blob`` = u32 length then bytes, :mod:`secagg.wire`)::

    magic "SACS" | version u8 | config digest 32B | client id u32 | round u64 | setup id 32B
    | stage u8 | session blob | server key blob | X25519 private key blob
    | generated secret context blob | generated public context blob | secret context blob | sent bytes u64

Each short field is empty or exactly 32 bytes; which are present is fixed by the stage and checked
on import (the channel key is derived again from the private and the server key). The state holds
the round's secrets in the clear (the X25519 private key, a key holder's CKKS secret context): it is
**not encrypted**. Keep it where only this party
can read it (a private file on a tmpfs, say), never in a message or a shared record. The update
being aggregated is never part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import MalformedMessage, ParameterError
from ...wire import Reader, Writer
from .common import Stage

__all__ = ["CkksClientState", "Snapshot", "encode", "decode", "STATE_VERSION"]

STATE_VERSION = 1
_MAGIC = b"SACS"
_KEY = 32
_CODES: dict[Stage, int] = {Stage.ADVERTISE: 1, Stage.GENERATE: 2, Stage.CONTEXT: 3, Stage.DECRYPT: 4}
_STAGES = {code: stage for stage, code in _CODES.items()}


@dataclass(frozen=True, slots=True, repr=False)
class CkksClientState:
    """The exported state of one CKKS client: canonical bytes holding its secrets, unencrypted.

    Refuses pickling and never shows its bytes in ``repr``; ``data`` is what to store.
    """

    data: bytes

    def __repr__(self) -> str:
        return f"CkksClientState({len(self.data)} bytes)"

    def __getstate__(self) -> None:
        raise TypeError("a CKKS client state holds secret keys and cannot be pickled")


@dataclass(frozen=True, slots=True, repr=False)
class Snapshot:
    """The decoded fields (empty bytes: absent). Checked against a config by the client, not here."""

    config_digest: bytes
    client_id: int
    round_number: int
    setup: bytes
    stage: Stage
    session: bytes
    server_key: bytes
    private_key: bytes
    generated_secret: bytes
    generated_public: bytes
    secret: bytes
    sent_bytes: int

    def __getstate__(self) -> None:
        raise TypeError("a CKKS client snapshot holds secret keys and cannot be pickled")


def encode(s: Snapshot) -> bytes:
    """The canonical bytes of ``s``.

    Raises:
        ParameterError: a stage that cannot be resumed (done, aborted) or a field of the wrong size.
    """
    if s.stage not in _CODES or any(len(f) not in (0, _KEY) for f in (s.session, s.server_key, s.private_key)):
        raise ParameterError(f"no resumable state: stage {s.stage.value} or a key field of the wrong size")
    w = Writer().fixed(_MAGIC, 4).u8(STATE_VERSION).fixed(s.config_digest, 32).u32(s.client_id)
    w.u64(s.round_number).fixed(s.setup, 32).u8(_CODES[s.stage])
    for short in (s.session, s.server_key, s.private_key):
        w.blob(short)
    w.blob(s.generated_secret).blob(s.generated_public).blob(s.secret).u64(s.sent_bytes)
    return w.body()


def decode(data: bytes, max_context: int) -> Snapshot:
    """Parse bytes made by :func:`encode`; contexts longer than ``max_context`` are refused.

    Guarantees the layout only (version, lengths, a resumable stage, no trailing bytes); the client's
    import checks the fields against its config and stage.

    Raises:
        MalformedMessage: anything else.
    """
    r = Reader(memoryview(data))
    if r.fixed(4) != _MAGIC or r.u8() != STATE_VERSION:
        raise MalformedMessage("not a CKKS client state of this version")
    digest, client_id, round_number, setup, code = r.fixed(32), r.u32(), r.u64(), r.fixed(32), r.u8()
    stage = _STAGES.get(code)
    if stage is None:
        raise MalformedMessage("unknown stage in a CKKS client state")
    session, server_key, private_key = (r.blob(_KEY) for _ in range(3))
    if any(len(field) not in (0, _KEY) for field in (session, server_key, private_key)):
        raise MalformedMessage("a key field of a CKKS client state has the wrong length")
    generated_secret, generated_public, secret = (r.blob(max_context) for _ in range(3))
    sent_bytes = r.u64()
    r.done()
    return Snapshot(digest, client_id, round_number, setup, stage, session, server_key, private_key,
                    generated_secret, generated_public, secret, sent_bytes)
