"""A Flower node's plain update between training and the protocol, and what it released.

:func:`~secagg.adapters.flower_node.secagg_mod` keeps private files in the node's state directory,
next to the :class:`~secagg.adapters.nodestate.NodeStore` records (directory mode 0700, files 0600,
written atomically, one process of the node at a time under the directory's ``updates.lock``):

- ``run<id>-node<id>.update``: the latest round's :class:`StoredUpdate` of one run: its round, the
  digests of the arrays and of the train message it trained from, the layout and encoding of the
  secure vector, the weight and the plain vector. :meth:`UpdateStore.take` hands the weight and
  vector to the protocol once and erases them from the file before returning them; round, digests,
  layout and encoding stay, so the round's remaining steps can be answered and a replay is
  recognised. Storing a new update erases the plain update of every other run's pending file in
  the directory (an abandoned run's update does not stay on disk).
- ``released``: for the whole state directory (every run and node id: the SuperLink operator starts
  runs and may hand out node ids at will), the SHA-256 digest of every model (ArrayRecord) an update
  handed to the protocol was trained from, and an HMAC-SHA256 tag of every update vector handed to
  the protocol (the exact float64 vector). ``take`` records both before the update leaves the file,
  so a node releases at most one update trained from a given model, and never the same update
  vector twice, whatever the model's dtype or the run (:meth:`UpdateStore.released`): a server
  cannot sum the same (deterministic) update once with and once without a node and subtract.
- ``update-tag.key``: the HMAC key, 32 bytes from ``os.urandom``, created on first use; it never
  leaves the file (no log, error or repr), so the tags say nothing about an update to whoever reads
  the ``released`` file without it.

Not guaranteed: the plain update is on disk (or wherever ``secagg-state-dir`` is) from training
until ``take`` (or until another run stores one); nothing is zeroed (Python cannot), only unlinked by
the atomic rewrite. A state directory shared by several nodes (the default one, when the node config
sets none) shares the released set too: a model one of them released from is refused by all.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import MalformedMessage, ProtocolAbort
from ..wire import Reader, Writer
from .roundstore import private_directory, private_lock, write_private

Layout = tuple[tuple[str, str, tuple[int, ...]], ...]
"""(kind, key, shape) per entry of the secure vector: every array (sorted by key), then each metric."""

PENDING, TAKEN = 1, 2
DIGEST_BYTES = 32
_VERSION = 2
_MAGIC, _MODELS_MAGIC, _RELEASED_MAGIC = b"SAFU", b"SAFM", b"SAFR"
_MODEL, _UPDATE = 1, 2  # the kinds of a released entry: a model digest, an update tag
_KEY_BYTES = 32
_SCOPE = re.compile(r"run(\d+)-node(\d+)")
_MAX_FIELD = 1 << 31


@dataclass(frozen=True, repr=False)
class StoredUpdate:
    """One node's update for one round: the plain vector until the protocol takes it.

    ``model`` is the digest of the ArrayRecord it trained from, ``session`` that of the whole train
    message (bound into the round's session); ``encoding`` holds the node's clip bound, fractional
    bits and max weight for the round.
    """

    status: int
    round_number: int
    model: bytes
    session: bytes
    layout: Layout
    encoding: Mapping[str, Any]
    weight: int
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def encode(self) -> bytes:
        public = json.dumps({"layout": [[k, n, list(s)] for k, n, s in self.layout], "encoding": dict(self.encoding)})
        w = Writer().fixed(_MAGIC, 4).u8(_VERSION).u8(self.status).u64(self.round_number)
        w.fixed(self.model, DIGEST_BYTES).fixed(self.session, DIGEST_BYTES).blob(public.encode()).u64(self.weight)
        return w.array(np.ascontiguousarray(self.vector, dtype="<f8").view("<u8")).body()

    @classmethod
    def decode(cls, data: bytes) -> StoredUpdate:
        """Raises: MalformedMessage: not a record :meth:`encode` writes."""
        r = Reader(memoryview(data))
        if r.fixed(4) != _MAGIC or r.u8() != _VERSION:
            raise MalformedMessage("not a secagg update record of this version")
        status, round_number = r.u8(), r.u64()
        model, session = r.fixed(DIGEST_BYTES), r.fixed(DIGEST_BYTES)
        try:
            public = json.loads(r.blob(_MAX_FIELD))
            layout = tuple((str(k), str(n), tuple(int(x) for x in s)) for k, n, s in public["layout"])
            encoding = dict(public["encoding"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedMessage(f"the update record's parameters do not parse ({type(exc).__name__})") from None
        weight = r.u64()
        count = sum(math.prod(s) for _, _, s in layout) if status == PENDING else 0
        vector = r.array(8, count).view("<f8").astype(np.float64)
        r.done()
        if status not in (PENDING, TAKEN):
            raise MalformedMessage("unknown update record status")
        return cls(status, round_number, model, session, layout, encoding, weight, vector)

    def __repr__(self) -> str:
        return f"StoredUpdate(round={self.round_number}, status={self.status})"  # never the values

    def __getstate__(self) -> None:
        raise TypeError("a stored update holds a node's plain update and cannot be pickled")


class UpdateStore:
    """One node's latest update in one run, and what the node's state directory released in any run.

    Args:
        directory: the node's state directory (created 0700 if missing, refused if not private).
        scope: ``run<id>-node<id>``.
    Raises:
        ParameterError: the directory is not private to this user.
    """

    def __init__(self, directory: Path, scope: str) -> None:
        directory = private_directory(directory)
        self._directory, self._scope = directory, scope
        self._path = directory / f"{scope}.update"
        self._released_path = directory / "released"
        self._key_path = directory / "update-tag.key"
        self._lock = directory / "updates.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's update lock (every method below expects it, except :meth:`take`, which takes it)."""
        with private_lock(self._lock, 60.0):
            yield

    def load(self) -> StoredUpdate | None:
        return StoredUpdate.decode(self._path.read_bytes()) if self._path.exists() else None

    def save(self, stored: StoredUpdate) -> None:
        """Write ``stored``; a pending one (a new round) first erases other runs' pending plain updates."""
        if stored.status == PENDING:
            self._erase_other_runs()
        write_private(self._path, stored.encode())

    def _erase_other_runs(self) -> None:
        own = _SCOPE.fullmatch(self._scope)
        for path in self._directory.glob("run*-node*.update"):
            scope = _SCOPE.fullmatch(path.name[:-len(".update")])
            if path == self._path or scope is None or (own is not None and scope[1] == own[1]):
                continue  # this run's files (other nodes sharing the directory) are left alone
            other = StoredUpdate.decode(path.read_bytes())
            if other.status == PENDING:
                write_private(path, replace(other, status=TAKEN, weight=0, vector=np.zeros(0)).encode())

    def released(self, model: bytes, vector: np.ndarray | None = None) -> bool:
        """Whether this state directory handed the protocol an update trained from ``model``, or
        (given) this very update ``vector``, in any run."""
        entries = self._released()
        return (_MODEL, model) in entries or (vector is not None and (_UPDATE, self._tag(vector)) in entries)

    def _tag(self, vector: np.ndarray) -> bytes:
        """HMAC-SHA256 of the exact float64 vector under the directory's secret key (created if missing)."""
        if self._key_path.exists():
            key = self._key_path.read_bytes()
            if len(key) != _KEY_BYTES:
                raise MalformedMessage("the update tag key file is malformed")
        else:
            key = os.urandom(_KEY_BYTES)
            write_private(self._key_path, key)
        data = np.ascontiguousarray(vector, dtype="<f8").view(np.uint8).data
        return hmac.new(key, b"secagg/v1/flower-update\x00" + bytes(data), hashlib.sha256).digest()

    def _released(self) -> set[tuple[int, bytes]]:
        entries: set[tuple[int, bytes]] = set()
        for legacy in self._directory.glob("run*-node*.models"):  # version 2 kept one file per run
            data = legacy.read_bytes()
            if data[:4] != _MODELS_MAGIC or data[4:5] != bytes([_VERSION]) or (len(data) - 5) % DIGEST_BYTES:
                raise MalformedMessage("not a secagg released-models record of this version")
            entries |= {(_MODEL, data[i:i + DIGEST_BYTES]) for i in range(5, len(data), DIGEST_BYTES)}
        if self._released_path.exists():
            data, size = self._released_path.read_bytes(), 1 + DIGEST_BYTES
            if data[:4] != _RELEASED_MAGIC or data[4:5] != bytes([_VERSION]) or (len(data) - 5) % size or any(
                    data[i] not in (_MODEL, _UPDATE) for i in range(5, len(data), size)):
                raise MalformedMessage("not a secagg released record of this version")
            entries |= {(data[i], data[i + 1:i + size]) for i in range(5, len(data), size)}
        return entries

    def take(self, round_number: int) -> tuple[np.ndarray, int]:
        """The update of ``round_number``, its model and vector recorded as released and the update
        erased from the file before it is returned (taken once).

        Raises:
            ProtocolAbort: no update of that round is stored, it was taken already, or this state
                directory released the same update vector before.
        """
        with self.locked():
            stored = self.load()
            if stored is None or stored.round_number != round_number or stored.status != PENDING:
                raise ProtocolAbort(f"this node holds no untaken update of round {round_number}")
            tag = self._tag(stored.vector)
            entries = self._released()
            if (_UPDATE, tag) in entries:
                self.save(replace(stored, status=TAKEN, weight=0, vector=np.zeros(0)))
                raise ProtocolAbort("this node released this update already; it releases each update once")
            entries |= {(_MODEL, stored.model), (_UPDATE, tag)}
            record = b"".join(bytes([kind]) + value for kind, value in sorted(entries))
            write_private(self._released_path, _RELEASED_MAGIC + bytes([_VERSION]) + record)
            self.save(replace(stored, status=TAKEN, weight=0, vector=np.zeros(0)))
        return stored.vector, stored.weight
