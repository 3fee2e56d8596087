"""The node-local write-ahead record of one client's round, shared by every protocol's node store.

Some stacks run the client's code in a fresh process for every message (Flower 1.42 starts one
``flwr-clientapp`` process per message), so a client party cannot stay in memory between stages.
A :class:`RoundStore` keeps one private file per round and answers each message under these rules,
whatever the protocol (the subclasses say how a client is rebuilt: :class:`~.nodestate.NodeStore`
replays a masking client, :class:`~.ckksstate.CkksNodeStore` imports a CKKS client's state):

- The record (the client's secret state, the server messages answered and the replies sent) is
  written and fsync'ed, and the directory fsync'ed, *before* the reply is returned, under an
  exclusive lock on the node: a client never answers one stage twice with different content (a
  fork). Answering two different SecAgg unmask requests from one state would reveal both kinds of
  share of a neighbour; a second CKKS upload or decryption is as bad.
- Networks retry and duplicate. A message byte-identical to one already answered (a retry of the
  current stage, or a stale copy of an earlier one, including a repeated ``advertise``) gets the
  recorded reply, the same bytes as the first time, and changes nothing. A *different* message of a
  kind already answered is refused with :class:`~secagg.ProtocolAbort`, again without touching the
  record. So the input is never masked or encrypted twice: a second one would hand the server the
  difference of two inputs, or a second ciphertext of the same data.
- Any other failure while handling a message closes the round on this node: the secret state and
  the transcript are dropped from the record, which stays as a *tombstone* so the round can never be
  restarted with old secrets. A round that completes drops its secret state at once but keeps its
  transcript, so a retried last request is still answered, until this node starts a newer round
  (which also closes any round left open). A record that does not decode (a corrupted or foreign
  file: each record ends with its SHA-256) is replaced by a tombstone and refused with
  :class:`~secagg.MalformedMessage`.

The records live in a private directory (mode 0700, files 0600) owned by the node's user; they
never travel through the FL stack (no Flower record, no ``Context.state``). They are **not
encrypted at rest**, and erasure on close is a file replacement: put the directory on a tmpfs (e.g.
``$XDG_RUNTIME_DIR``) if secrets must never reach a disk.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

from ..errors import MalformedMessage, ParameterError, ProtocolAbort
from ..hazmat.keys import SigningKey
from ..params import PROTOCOL_IDS, SecAggConfig
from ..protocols.ckks import CkksConfig
from ..wire import Header, Reader, Writer

__all__ = ["RoundSpec", "RoundStore", "SessionConfig", "GetInput", "message_kind"]

SessionConfig = Union[SecAggConfig, CkksConfig]
"""The config of any registered protocol's session."""
GetInput = Callable[[], "tuple[Any, int]"]
"""Returns (update, integer weight) in the shape of the session's schema; called at most once."""

_MAGIC = b"SAFN"
_VERSION = 3
_ACTIVE, _CLOSED, _COMPLETE = 1, 2, 3  # complete: the secret is erased, the answers are kept for retries
_MAX_BLOB = 1 << 31
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SIBLINGS = re.compile(r"[A-Za-z0-9_.*-]{1,128}")


@dataclass(frozen=True)
class RoundSpec:
    """The public parameters of this node's part in one round (identical for every message)."""

    config: SessionConfig
    client_id: int
    round_number: int
    context: bytes
    identity: SigningKey | None = field(default=None, repr=False)
    """The malicious variant's identity key of this node (never in a repr; never stored)."""
    registry: Mapping[int, bytes] | None = field(default=None, repr=False)
    """The malicious variant's registry: client id -> Ed25519 public key."""


@dataclass(frozen=True, slots=True, repr=False)
class _Record:
    status: int
    protocol: int
    round_number: int
    client_id: int
    num_clients: int
    config_digest: bytes
    context: bytes
    secret: bytes  # the subclass's secret state (empty once closed or complete)
    advertisement: bytes
    steps: tuple[tuple[bytes, bytes], ...]  # (server message, this node's reply), in order

    def encode(self) -> bytes:
        w = Writer().fixed(_MAGIC, 4).u8(_VERSION).u8(self.status).u8(self.protocol).u64(self.round_number)
        w.u32(self.client_id).u32(self.num_clients).fixed(self.config_digest, 32).blob(self.context)
        w.blob(self.secret).blob(self.advertisement).u32(len(self.steps))
        for message, reply in self.steps:
            w.blob(message).blob(reply)
        body = w.body()
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes) -> _Record:
        """Raises MalformedMessage for anything but a whole record of this version (checksum included)."""
        body, digest = data[:-32], data[-32:]
        if len(data) < 32 or hashlib.sha256(body).digest() != digest:
            raise MalformedMessage("the node-state record is corrupted (checksum mismatch)")
        r = Reader(memoryview(body))
        if r.fixed(4) != _MAGIC or r.u8() != _VERSION:
            raise MalformedMessage("not a secagg node-state record of this version")
        status, protocol, round_number, client_id, num_clients = r.u8(), r.u8(), r.u64(), r.u32(), r.u32()
        digest, context, secret = r.fixed(32), r.blob(_MAX_BLOB), r.blob(_MAX_BLOB)
        advertisement = r.blob(_MAX_BLOB)
        steps = tuple((r.blob(_MAX_BLOB), r.blob(_MAX_BLOB)) for _ in range(r.u32()))
        r.done()
        if status not in (_ACTIVE, _CLOSED, _COMPLETE):
            raise MalformedMessage("unknown node-state status")
        return cls(status, protocol, round_number, client_id, num_clients, digest, context, secret, advertisement,
                   steps)

    @classmethod
    def tombstone(cls, round_number: int) -> _Record:
        """A closed record that remembers only that the round existed."""
        return cls(_CLOSED, 0, round_number, 0, 0, bytes(32), b"", b"", b"", ())

    def answered(self, message: bytes) -> bytes | None:
        """The reply recorded for a byte-identical earlier ``message``, if there is one."""
        for sent, reply in self.steps:
            if sent == message:
                return reply
        return None

    def closed(self) -> _Record:
        return replace(self, status=_CLOSED, secret=b"", advertisement=b"", steps=())

    def completed(self) -> _Record:
        return replace(self, status=_COMPLETE, secret=b"")

    def __getstate__(self) -> None:
        raise TypeError("node-state records hold a client's secrets and cannot be pickled")


def private_directory(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and check it is a real directory private to this user.

    Raises:
        ParameterError: it is a link, another user's, or readable by group or others.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ParameterError(
            f"state directory {path} must be a real directory owned by this user with mode 0700"
        )
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (write, fsync, rename, fsync the directory).

    The file is created with mode 0600 and never through a symbolic link; a reader sees the old or
    the new content, never a mix. It does not check that the directory is private: that is
    :func:`private_directory`'s job.
    """
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def private_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) for the block: one process of a node at a time.

    Raises:
        ProtocolAbort: another process held the lock for ``timeout`` seconds.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
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


def message_kind(message: bytes) -> int | None:
    """The wire kind of a server message, or None if its header does not decode."""
    try:
        return Header.decode(message)[0].kind
    except MalformedMessage:
        return None


class RoundStore:
    """The write-ahead record of one node's client, one file per round (the rules: module docstring).

    Subclasses name the ``protocols`` they serve and implement :meth:`_start` and :meth:`_step`.

    Args:
        directory: a private directory for this node's records (created with mode 0700).
        scope: a file-name-safe label for the node and run, e.g. ``"run42-node7"``.
        lock_timeout: seconds to wait for another process of the same node to finish its step.
    Raises:
        ParameterError: the directory is not private to this user or the scope is not file-name safe.
    """

    protocols: tuple[str, ...] = ()
    """The protocols whose clients this store keeps; a spec of another one is refused."""

    def __init__(self, directory: str | Path, scope: str, lock_timeout: float = 60.0,
                 siblings: str | None = None) -> None:
        if not _SCOPE.fullmatch(scope):
            raise ParameterError(f"scope must match {_SCOPE.pattern}, got {scope!r}")
        if siblings is not None and not _SIBLINGS.fullmatch(siblings):
            raise ParameterError(f"siblings must match {_SIBLINGS.pattern}, got {siblings!r}")
        self.directory = private_directory(Path(directory))
        self.scope = scope
        self.lock_timeout = lock_timeout
        self.siblings = siblings
        """A glob of other scopes of this node (e.g. its other runs): starting a round here closes
        their open rounds too, so a run that ended mid-round does not keep its secret on disk."""

    # -- what a subclass supplies ---------------------------------------------------------------------
    def _start(self, spec: RoundSpec, record: _Record) -> tuple[bytes, bytes]:
        """A new client for ``spec`` (``record`` holds its public fields): (secret state, advertisement)."""
        raise NotImplementedError

    def _step(self, spec: RoundSpec, record: _Record, message: bytes, get_input: GetInput) -> tuple[bytes, bytes, bool]:
        """Rebuild the client from ``record`` and answer ``message``: (reply, new secret state, done)."""
        raise NotImplementedError

    # -- the two steps a node performs ---------------------------------------------------------------
    def advertise(self, spec: RoundSpec) -> bytes:
        """Start this node's round: make the client, commit the record, return the advertisement.

        A repeated request for a round already started here gets the recorded advertisement again.
        Raises:
            ProtocolAbort: the round is closed on this node, or was started with other parameters;
                the record is left as it was.
            MalformedMessage: the round's record is corrupted (it is closed).
            ParameterError: ``spec`` is for a protocol this store does not keep.
        """
        self._check_protocol(spec)
        with self._locked():
            path = self._path(spec.round_number)
            if path.exists():
                record = self._read(path, spec.round_number)
                if record.status == _CLOSED or not self._matches(record, spec):
                    raise ProtocolAbort(f"round {spec.round_number} was already started on this node")
                return record.advertisement
            self._close_stale()
            self._close_siblings()
            config = spec.config
            record = _Record(
                _ACTIVE, PROTOCOL_IDS[config.protocol], spec.round_number, spec.client_id, config.num_clients,
                config.digest(), spec.context, b"", b"", (),
            )
            secret, advertisement = self._start(spec, record)
            self._commit(replace(record, secret=secret, advertisement=advertisement))
            return advertisement

    def respond(self, spec: RoundSpec, message: bytes, get_input: GetInput) -> bytes:
        """Answer one server message; ``get_input`` is called once, for the message that takes the input.

        A message identical to one already answered gets the recorded reply and changes nothing.
        Raises:
            ProtocolAbort: no active round here, the parameters differ from those advertised, or a
                different message arrived for a stage already answered (the record is unchanged).
            MalformedMessage: the round's record is corrupted (it is closed).
            SecAggError: the client rejected the message; the round is closed on this node.
            ParameterError: ``spec`` is for a protocol this store does not keep.
        """
        self._check_protocol(spec)
        with self._locked():
            record = self._load(spec)
            recorded = record.answered(message)
            if recorded is not None:
                return recorded  # a retry or a stale duplicate: the first answer, never a second one
            if record.status != _ACTIVE:
                raise ProtocolAbort(f"round {spec.round_number} is closed on this node")
            if message_kind(message) in {message_kind(sent) for sent, _ in record.steps}:
                raise ProtocolAbort("a different message for a stage this node already answered")
            try:
                reply, secret, done = self._step(spec, record, message, get_input)
            except BaseException:
                self._commit(record.closed())
                raise
            record = replace(record, secret=secret, steps=record.steps + ((message, reply),))
            self._commit(record.completed() if done else record)
            return reply

    def status(self, round_number: int) -> str:
        """``"absent"``, ``"active"`` or ``"closed"`` (also: complete, or unreadable) for a round."""
        path = self._path(round_number)
        if not path.exists():
            return "absent"
        try:
            return "active" if _Record.decode(path.read_bytes()).status == _ACTIVE else "closed"
        except MalformedMessage:
            return "closed"

    def _check_protocol(self, spec: RoundSpec) -> None:
        if spec.config.protocol not in self.protocols:
            raise ParameterError(f"{type(self).__name__} keeps {'/'.join(self.protocols)} clients, "
                                 f"not {spec.config.protocol}")

    # -- storage ---------------------------------------------------------------------------------------
    def _path(self, round_number: int) -> Path:
        return self.directory / f"{self.scope}-round{round_number}.state"

    def _read(self, path: Path, round_number: int) -> _Record:
        """The record at ``path``; a corrupted one is replaced by a tombstone and refused."""
        try:
            return _Record.decode(path.read_bytes())
        except MalformedMessage:
            self._commit(_Record.tombstone(round_number))
            raise

    def _close_stale(self) -> None:
        """Erase rounds left open (a crashed step) and completed rounds' answers: a newer round ends them."""
        prefix = f"{self.scope}-round"
        for path in self.directory.glob(f"{prefix}*.state"):
            number = path.name[len(prefix) : -len(".state")]
            if not number.isdigit():
                continue
            try:
                record = self._read(path, int(number))
            except MalformedMessage:
                continue  # now a tombstone
            if record.status != _CLOSED:
                self._commit(record.closed())

    def _close_siblings(self) -> None:
        """Close every open round of the sibling scopes (under each one's lock; a sibling busy for a
        second is left alone). One run at a time per node: a concurrent run's open round is closed too,
        so that run loses this node (availability, never privacy)."""
        if self.siblings is None:
            return
        for lock in sorted(self.directory.glob(f"{self.siblings}.lock")):
            scope = lock.name[: -len(".lock")]
            if scope == self.scope or not _SCOPE.fullmatch(scope):
                continue
            try:
                with private_lock(lock, 1.0):
                    for path in self.directory.glob(f"{scope}-round*.state"):
                        try:
                            record = _Record.decode(path.read_bytes())
                        except MalformedMessage:
                            continue  # its own store tombstones it when it reads it
                        if record.status != _CLOSED:
                            write_private(path, record.closed().encode())
            except ProtocolAbort:
                continue

    def _matches(self, record: _Record, spec: RoundSpec) -> bool:
        config = spec.config
        expected = (PROTOCOL_IDS[config.protocol], spec.client_id, config.num_clients, config.digest(), spec.context)
        return (record.protocol, record.client_id, record.num_clients, record.config_digest, record.context) == expected

    def _load(self, spec: RoundSpec) -> _Record:
        path = self._path(spec.round_number)
        if not path.exists():
            raise ProtocolAbort(f"round {spec.round_number} was never started on this node")
        record = self._read(path, spec.round_number)
        if record.status == _CLOSED:
            raise ProtocolAbort(f"round {spec.round_number} is closed on this node")
        if not self._matches(record, spec):
            if record.status == _ACTIVE:
                self._commit(record.closed())
            raise ProtocolAbort("round parameters differ from those this node advertised under")
        return record

    def _commit(self, record: _Record) -> None:
        """Replace the round's record atomically and durably."""
        write_private(self._path(record.round_number), record.encode())

    def _locked(self) -> AbstractContextManager[None]:
        return private_lock(self.directory / f"{self.scope}.lock", self.lock_timeout)
