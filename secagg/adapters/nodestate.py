"""A SecAgg client that outlives its process: a node-local write-ahead transcript and exact replay.

Some stacks run the client's code in a fresh process for every message (Flower 1.42 starts one
``flwr-clientapp`` process per message), so a :class:`~secagg.SecAggClient` cannot simply stay in
memory between stages. Its state holds secrets (two X25519 private keys, the self-mask seed, the
neighbours' shares), and :class:`~secagg.SecAggClient` refuses pickling on purpose. Instead:

- At ``advertise`` the node draws one fresh 32-byte *replay key*. Every random byte the client ever
  uses in this round comes from an AES-256-CTR stream keyed by HKDF(replay key, round binding), so
  the client is a deterministic function of (replay key, public parameters, server messages).
- After each stage the node appends the server's message (public: the server wrote it) and its own
  reply to a transcript. To answer the next message it rebuilds the client by replaying the
  transcript, then handles the new message live. The masked input of a replayed mask step was
  already sent; the replay feeds a zero input there, which changes only that discarded output. Every
  other replayed output must equal the recorded reply, or the replay is refused as diverged.
- The record (replay key, transcript) is written and fsync'ed *before* the reply is returned, under
  an exclusive lock. This is what makes replay safe: a client must never answer one stage twice with
  different content (a fork). Answering two different unmask requests from one state would reveal
  both the self-mask seed share and the mask-key share of a neighbour, the exact leak SecAgg exists
  to prevent.
- Networks retry and duplicate. A message byte-identical to one already answered (a retry of the
  current stage, or a stale copy of an earlier one, including a repeated ``advertise``) gets the
  recorded reply, the same bytes as the first time, and changes nothing. A *different* message of
  a kind already answered is refused with :class:`~secagg.ProtocolAbort`, again without touching
  the record. The masked input is never recomputed: a second input under the same masks would hand
  the server the difference of the two.
- Any other failure while handling a message closes the round on this node: the replay key and the
  transcript are dropped from the record, which stays as a tombstone so the round can never be
  restarted with old secrets. A round that completes drops its replay key at once but keeps its
  transcript, so a retried last request is still answered, until this node starts a newer round.

The record lives in a private directory (mode 0700, files 0600) owned by the node's user; it never
travels through the FL stack. Erasure on close is a file replacement: put the directory on a tmpfs
(e.g. ``$XDG_RUNTIME_DIR``) if secrets must never reach a disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import MalformedMessage, ParameterError, ProtocolAbort
from ..hazmat.keys import SigningKey, derive_key
from ..hazmat.prg import MaskStream
from ..hazmat.random import system_random
from ..params import SecAggConfig
from ..protocols.secagg import SecAggClient, Stage
from ..protocols.secagg.messages import Kind
from ..wire import Header, Reader, Writer

__all__ = ["NodeStore", "RoundSpec"]

_MAGIC = b"SAFN"
_VERSION = 2
_ACTIVE, _CLOSED, _COMPLETE = 1, 2, 3  # complete: the key is erased, the answers are kept for retries
_KEY_BYTES = 32
_MAX_BLOB = 1 << 31
_LABEL_REPLAY = b"node-replay-random"
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class RoundSpec:
    """The parameters of this node's part in one round (identical on every replay).

    ``identity`` and ``registry`` are the malicious variant's identity key and registry; Ed25519
    signatures are deterministic, so a replayed signed reply equals the recorded one.
    """

    config: SecAggConfig
    client_id: int
    round_number: int
    context: bytes
    identity: SigningKey | None = field(default=None, repr=False)
    registry: Mapping[int, bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, repr=False)
class _Record:
    status: int
    round_number: int
    client_id: int
    num_clients: int
    config_digest: bytes
    context: bytes
    key: bytes
    advertisement: bytes
    steps: tuple[tuple[bytes, bytes], ...]  # (server message, this node's reply), in order

    def encode(self) -> bytes:
        w = Writer().fixed(_MAGIC, 4).u8(_VERSION).u8(self.status).u64(self.round_number)
        w.u32(self.client_id).u32(self.num_clients).fixed(self.config_digest, 32).blob(self.context)
        w.fixed(self.key, _KEY_BYTES).blob(self.advertisement).u32(len(self.steps))
        for message, reply in self.steps:
            w.blob(message).blob(reply)
        return w.body()

    @classmethod
    def decode(cls, data: bytes) -> _Record:
        r = Reader(memoryview(data))
        if r.fixed(4) != _MAGIC or r.u8() != _VERSION:
            raise MalformedMessage("not a secagg node-state record of this version")
        status, round_number, client_id, num_clients = r.u8(), r.u64(), r.u32(), r.u32()
        digest, context, key = r.fixed(32), r.blob(_MAX_BLOB), r.fixed(_KEY_BYTES)
        advertisement = r.blob(_MAX_BLOB)
        steps = tuple((r.blob(_MAX_BLOB), r.blob(_MAX_BLOB)) for _ in range(r.u32()))
        r.done()
        if status not in (_ACTIVE, _CLOSED, _COMPLETE):
            raise MalformedMessage("unknown node-state status")
        return cls(status, round_number, client_id, num_clients, digest, context, key, advertisement, steps)

    def answered(self, message: bytes) -> bytes | None:
        """The reply recorded for a byte-identical earlier ``message``, if there is one."""
        for sent, reply in self.steps:
            if sent == message:
                return reply
        return None

    def closed(self) -> _Record:
        return replace(self, status=_CLOSED, key=bytes(_KEY_BYTES), advertisement=b"", steps=())

    def completed(self) -> _Record:
        return replace(self, status=_COMPLETE, key=bytes(_KEY_BYTES))

    def __getstate__(self) -> None:
        raise TypeError("node-state records hold the replay key and cannot be pickled")


class _ReplayRandom:
    """The round's only randomness source: AES-256-CTR keyed by HKDF(replay key, round binding).

    Security assumption: the replay key is uniformly random, used for one round of one node, and
    never leaves the node; the stream is then indistinguishable from ``os.urandom`` output.
    """

    __slots__ = ("_stream",)

    def __init__(self, key: bytes, binding: bytes) -> None:
        self._stream = MaskStream(derive_key(key, _LABEL_REPLAY, binding))

    def __call__(self, n: int) -> bytes:
        out = np.empty(n, dtype=np.uint8)
        self._stream.fill(out)
        return out.tobytes()

    def __getstate__(self) -> None:
        raise TypeError("a replay random source holds key material and cannot be pickled")


def _private_directory(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ParameterError(
            f"state directory {path} must be a real directory owned by this user with mode 0700"
        )
    return path


def _kind(message: bytes) -> int | None:
    """The wire kind of a server message, or None if its header does not decode."""
    try:
        return Header.decode(message)[0].kind
    except MalformedMessage:
        return None


class NodeStore:
    """The write-ahead record of one node's SecAgg client, one file per round.

    Args:
        directory: a private directory for this node's records (created with mode 0700).
        scope: a file-name-safe label for the node and run, e.g. ``"run42-node7"``.
        lock_timeout: seconds to wait for another process of the same node to finish its step.
    Raises:
        ParameterError: the directory is not private to this user or the scope is not file-name safe.
    """

    def __init__(self, directory: str | Path, scope: str, lock_timeout: float = 60.0) -> None:
        if not _SCOPE.fullmatch(scope):
            raise ParameterError(f"scope must match {_SCOPE.pattern}, got {scope!r}")
        self.directory = _private_directory(Path(directory))
        self.scope = scope
        self.lock_timeout = lock_timeout

    # -- the two steps a node performs ---------------------------------------------------------------
    def advertise(self, spec: RoundSpec) -> bytes:
        """Start this node's round: draw the replay key, commit the record, return the advertisement.

        A repeated request for a round already started here gets the recorded advertisement again.
        Raises:
            ProtocolAbort: the round is closed on this node, or was started with other parameters;
                the record is left as it was.
        """
        with self._locked():
            path = self._path(spec.round_number)
            if path.exists():
                record = _Record.decode(path.read_bytes())
                if record.status == _CLOSED or not self._matches(record, spec):
                    raise ProtocolAbort(f"round {spec.round_number} was already started on this node")
                return record.advertisement
            self._close_stale()
            config = spec.config
            record = _Record(
                _ACTIVE, spec.round_number, spec.client_id, config.num_clients, config.digest(),
                spec.context, system_random(_KEY_BYTES), b"", (),
            )
            _, advertisement = self._rebuild(spec, record)
            record = replace(record, advertisement=advertisement)
            self._commit(record)
            return advertisement

    def respond(self, spec: RoundSpec, message: bytes, get_input: Callable[[], tuple[Any, int]]) -> bytes:
        """Answer one server message; ``get_input`` is called once, at the mask step.

        ``get_input`` returns (update, integer weight) in the shape of ``spec.config.schema``. A
        message identical to one already answered gets the recorded reply and changes nothing.
        Raises:
            ProtocolAbort: no active round here, the parameters differ from those advertised, or a
                different message arrived for a stage already answered (the record is unchanged).
            SecAggError: the client rejected the message; the round is closed on this node.
        """
        with self._locked():
            record = self._load(spec)
            recorded = record.answered(message)
            if recorded is not None:
                return recorded  # a retry or a stale duplicate: the first answer, never a second one
            if record.status != _ACTIVE:
                raise ProtocolAbort(f"round {spec.round_number} is closed on this node")
            if _kind(message) in {_kind(sent) for sent, _ in record.steps}:
                raise ProtocolAbort("a different message for a stage this node already answered")
            try:
                reply, done = self._handle(spec, record, message, get_input)
            except BaseException:
                self._commit(record.closed())
                raise
            record = replace(record, steps=record.steps + ((message, reply),))
            self._commit(record.completed() if done else record)
            return reply

    def _handle(
        self, spec: RoundSpec, record: _Record, message: bytes, get_input: Callable[[], tuple[Any, int]]
    ) -> tuple[bytes, bool]:
        client, _ = self._rebuild(spec, record)
        if client.stage is Stage.MASK:
            if _kind(message) != Kind.DELIVERY:  # ask for no input in vain
                raise ProtocolAbort("expected the share delivery")
            update, weight = get_input()
            client.set_input(update, weight)
        reply = client.handle(message)
        if reply is None:  # every SecAgg stage a client handles has a reply
            raise ProtocolAbort("the client produced no reply")
        return reply, client.stage is Stage.DONE

    def status(self, round_number: int) -> str:
        """``"absent"``, ``"active"`` or ``"closed"`` for this node's record of a round."""
        path = self._path(round_number)
        if not path.exists():
            return "absent"
        return "active" if _Record.decode(path.read_bytes()).status == _ACTIVE else "closed"

    # -- replay ----------------------------------------------------------------------------------------
    def _rebuild(self, spec: RoundSpec, record: _Record) -> tuple[SecAggClient, bytes]:
        binding = self.scope.encode() + b"\x00" + struct.pack("<QII", record.round_number, record.client_id,
                                                             record.num_clients) + record.config_digest
        client = SecAggClient(
            spec.config, spec.client_id, round_number=spec.round_number, context=spec.context,
            random=_ReplayRandom(record.key, binding), identity=spec.identity, registry=spec.registry,
        )
        advertisement = client.advertise()
        if record.advertisement and advertisement != record.advertisement:
            raise ProtocolAbort("replay of the advertisement diverged")
        zero = np.zeros(spec.config.dim, dtype=spec.config.encoding.dtype)
        zero[-1] = 1  # a valid encoding (all values 0, weight 1): a placeholder, never sent again
        for step, (message, recorded) in enumerate(record.steps):
            masking = client.stage is Stage.MASK
            if masking:
                # This masked input was sent in an earlier process and is discarded now; the input
                # only enters that output, never later state or randomness.
                client.set_encoded_input(zero)
            try:
                reply = client.handle(message)
            except Exception as exc:
                raise ProtocolAbort(f"replay of step {step} diverged: {type(exc).__name__}") from None
            if not masking and reply != recorded:
                raise ProtocolAbort(f"replay of step {step} diverged from the recorded reply")
        return client, advertisement

    # -- storage ---------------------------------------------------------------------------------------
    def _path(self, round_number: int) -> Path:
        return self.directory / f"{self.scope}-round{round_number}.state"

    def _close_stale(self) -> None:
        """Erase rounds left open (a crashed step) and completed rounds' answers: a newer round ends them."""
        for path in self.directory.glob(f"{self.scope}-round*.state"):
            record = _Record.decode(path.read_bytes())
            if record.status != _CLOSED:
                self._commit(record.closed())

    def _matches(self, record: _Record, spec: RoundSpec) -> bool:
        expected = (spec.client_id, spec.config.num_clients, spec.config.digest(), spec.context)
        return (record.client_id, record.num_clients, record.config_digest, record.context) == expected

    def _load(self, spec: RoundSpec) -> _Record:
        path = self._path(spec.round_number)
        if not path.exists():
            raise ProtocolAbort(f"round {spec.round_number} was never started on this node")
        record = _Record.decode(path.read_bytes())
        if record.status == _CLOSED:
            raise ProtocolAbort(f"round {spec.round_number} is closed on this node")
        if not self._matches(record, spec):
            if record.status == _ACTIVE:
                self._commit(record.closed())
            raise ProtocolAbort("round parameters differ from those this node advertised under")
        return record

    def _commit(self, record: _Record) -> None:
        """Replace the round's record atomically and durably (write, fsync, rename, fsync dir)."""
        path = self._path(record.round_number)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(record.encode())
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / f"{self.scope}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise ProtocolAbort("another process of this node holds its round state") from exc
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
