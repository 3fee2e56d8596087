"""A Flower node's plain update between training and the protocol, and the models it released updates from.

:func:`~secagg.adapters.flower_node.secagg_mod` keeps two private files per run and node, next to
the :class:`~secagg.adapters.nodestate.NodeStore` records (directory mode 0700, files 0600, written
atomically, one process of the node at a time under a lock):

- ``run<id>-node<id>.update``: the latest round's :class:`StoredUpdate`: its round, the digests of
  the arrays and of the train message it trained from, the layout and encoding of the secure
  vector, the weight and the plain vector. :meth:`UpdateStore.take` hands the weight and vector to
  the protocol once and erases them from the file before returning them; round, digests, layout and
  encoding stay, so the round's remaining steps can be answered and a replay is recognised.
- ``run<id>-node<id>.models``: the SHA-256 digest of every model (ArrayRecord) from which this node
  handed an update to the protocol in this run. ``take`` records it before the update leaves the
  file, so a node releases at most one update trained from a given model per run
  (:meth:`UpdateStore.released`): a server resending the same arrays in a later round cannot sum the
  same (deterministic) update once with and once without a node and subtract.

Not guaranteed: the plain update is on disk (or wherever ``secagg-state-dir`` is) from training
until ``take``; nothing is zeroed (Python cannot), only unlinked by the atomic rewrite. The models
file outlives the update but holds digests of models the server sent, nothing of the node's data.
"""

from __future__ import annotations

import json
import math
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
_MAGIC, _MODELS_MAGIC = b"SAFU", b"SAFM"
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
    """The files holding one node's latest update and the models it released updates from, in one run.

    Args:
        directory: the node's state directory (created 0700 if missing, refused if not private).
        scope: ``run<id>-node<id>``.
    Raises:
        ParameterError: the directory is not private to this user.
    """

    def __init__(self, directory: Path, scope: str) -> None:
        directory = private_directory(directory)
        self._path = directory / f"{scope}.update"
        self._models = directory / f"{scope}.models"
        self._lock = directory / f"{scope}.update.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the node's update lock (every method below expects it, except :meth:`take`, which takes it)."""
        with private_lock(self._lock, 60.0):
            yield

    def load(self) -> StoredUpdate | None:
        return StoredUpdate.decode(self._path.read_bytes()) if self._path.exists() else None

    def save(self, stored: StoredUpdate) -> None:
        write_private(self._path, stored.encode())

    def released(self, model: bytes) -> bool:
        """Whether this node handed the protocol an update trained from ``model`` in this run."""
        return model in self._released()

    def _released(self) -> set[bytes]:
        if not self._models.exists():
            return set()
        data = self._models.read_bytes()
        if data[:4] != _MODELS_MAGIC or data[4:5] != bytes([_VERSION]) or (len(data) - 5) % DIGEST_BYTES:
            raise MalformedMessage("not a secagg released-models record of this version")
        return {data[i:i + DIGEST_BYTES] for i in range(5, len(data), DIGEST_BYTES)}

    def take(self, round_number: int) -> tuple[np.ndarray, int]:
        """The update of ``round_number``, its model recorded as released and the update erased from
        the file before it is returned (taken once).

        Raises:
            ProtocolAbort: no update of that round is stored, or it was taken already.
        """
        with self.locked():
            stored = self.load()
            if stored is None or stored.round_number != round_number or stored.status != PENDING:
                raise ProtocolAbort(f"this node holds no untaken update of round {round_number}")
            models = self._released() | {stored.model}
            write_private(self._models, _MODELS_MAGIC + bytes([_VERSION]) + b"".join(sorted(models)))
            self.save(replace(stored, status=TAKEN, weight=0, vector=np.zeros(0)))
        return stored.vector, stored.weight
