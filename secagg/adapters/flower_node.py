"""The node side of :mod:`secagg.adapters.flower_strategy`: :func:`secagg_mod` and :func:`secagg_query`.

Also what both sides share: the mark a secure train message carries (:data:`TRAIN_RECORD`), the
acknowledgement a node answers with (:data:`ACK_RECORD`) and the layout of the secure vector, which
each side derives itself from the arrays of the train message and the announced metric names. The
module docstring of :mod:`~secagg.adapters.flower_strategy` gives the rules and a complete app.

A node's update lives in one private file per run and node (``run<id>-node<id>.update``, next to the
:class:`~secagg.adapters.nodestate.NodeStore` records: node config ``secagg-state-dir``, mode 0700,
files 0600, written atomically, one process at a time under a lock). It holds the plain update of
the latest round until the mask step takes it; then only the round, the layout and the encoding stay,
so a replayed round can neither store nor mask a second update.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from ..encoding import Schema
from ..errors import MalformedMessage, ParameterError, ProtocolAbort
from ..wire import Reader, Writer
from .flower import MESSAGE_TYPE, _state_directory, handle, unpack
from .roundstore import private_directory, private_lock, write_private

__all__ = ["ACK_RECORD", "TRAIN_RECORD", "secagg_mod", "secagg_query"]

TRAIN_RECORD = "secagg.train"
"""The ConfigRecord marking a train message as secure (round, weight key, secure metrics, encoding)."""
ACK_RECORD = "secagg.ack"
"""The one ConfigRecord of a node's train reply: round and the id of the arrays it trained from."""
_VERSION = 1
_ENCODING_KEYS = ("secagg-clip-bound", "secagg-fractional-bits", "secagg-max-weight")
_TRAIN_KEYS = {"version", "round", "weight-key", "metrics", *_ENCODING_KEYS}
_ACK_KEYS = {"version", "round", "arrays-id"}
_ARRAYS, _METRICS = "arrays", "metrics"
_LOG = logging.getLogger("flwr").getChild("secagg")  # the adapter's logger: Flower streams its records

Layout = tuple[tuple[str, str, tuple[int, ...]], ...]
"""(kind, key, shape) per entry of the secure vector: every array (sorted by key), then each metric."""


# -- shared by both sides: what a train message announces and the layout of the vector ----------------------
def _integer(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        raise MalformedMessage(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _metric_names(names: Iterable[Any], weight_key: str) -> tuple[str, ...]:
    out = tuple(names)
    if any(not isinstance(n, str) or not n for n in out) or len(set(out)) != len(out) or weight_key in out:
        raise ParameterError(f"secure metrics must be distinct non-empty names other than {weight_key!r}, got {out}")
    return out


def _merged_config(own: Mapping[str, Any], encoding: Mapping[str, Any]) -> dict[str, Any]:
    """This node's run config with the server's encoding filled in where it sets none.

    Raises:
        ParameterError: the node's run config sets an encoding key to another value.
    """
    for key, value in encoding.items():
        if key in own and own[key] != value:
            raise ParameterError(f"the server announces {key}={value!r}; this node's run config says {own[key]!r}")
    return dict(own) | dict(encoding)


@dataclass(frozen=True)
class _Mark:
    """The content of :data:`TRAIN_RECORD`: public parameters every node of the round needs."""

    round_number: int
    weight_key: str
    metrics: tuple[str, ...]
    encoding: Mapping[str, Any]

    def record(self) -> ConfigRecord:
        return ConfigRecord({"version": _VERSION, "round": self.round_number, "weight-key": self.weight_key,
                             "metrics": list(self.metrics), **self.encoding})

    @property
    def max_weight(self) -> int:
        return int(self.encoding["secagg-max-weight"])

    @property
    def clip_bound(self) -> float:
        return float(self.encoding["secagg-clip-bound"])

    @classmethod
    def parse(cls, record: Any) -> _Mark:
        """Raises: MalformedMessage: not exactly the layout :meth:`record` writes."""
        if not isinstance(record, ConfigRecord) or set(record.keys()) != _TRAIN_KEYS:
            raise MalformedMessage(f"the {TRAIN_RECORD} record is malformed")
        if record["version"] != _VERSION:
            raise MalformedMessage(f"unsupported {TRAIN_RECORD} version {record['version']!r}")
        weight_key, metrics = record["weight-key"], record["metrics"]
        if not isinstance(weight_key, str) or not weight_key or not isinstance(metrics, list):
            raise MalformedMessage(f"the {TRAIN_RECORD} weight key or metric list is malformed")
        clip = record["secagg-clip-bound"]
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip > 0):
            raise MalformedMessage("the announced clip bound must be a positive number")
        encoding = {"secagg-clip-bound": float(clip),
                    "secagg-fractional-bits": _integer(record["secagg-fractional-bits"], "fractional bits"),
                    "secagg-max-weight": _integer(record["secagg-max-weight"], "max weight", 1)}
        try:
            names = _metric_names(metrics, weight_key)
        except ParameterError as exc:
            raise MalformedMessage(str(exc)) from None
        return cls(_integer(record["round"], "the round"), weight_key, names, encoding)


def _layout(arrays: ArrayRecord, metrics: Sequence[str]) -> Layout:
    entries = [(_ARRAYS, key, tuple(int(s) for s in arrays[key].shape)) for key in sorted(arrays.keys())]
    return tuple(entries + [(_METRICS, name, (1,)) for name in metrics])


def _template(layout: Layout) -> dict[str, np.ndarray]:
    """Zero-stride float64 arrays in the layout's shapes: the session schema, without the memory."""
    zero = np.zeros((), dtype=np.float64)
    return {f"{kind}/{key}": np.broadcast_to(zero, shape) for kind, key, shape in layout}


def _only(records: Mapping[str, Any], kind: str, where: str) -> Any:
    if len(records) != 1:
        raise ParameterError(f"{where} must hold exactly one {kind}, found {len(records)}")
    return next(iter(records.values()))


# -- client side ----------------------------------------------------------------------------------------
_PENDING, _TAKEN = 1, 2
_MAGIC = b"SAFU"
_MAX_FIELD = 1 << 31


@dataclass(frozen=True, repr=False)
class _Stored:
    """One node's update for one round: the plain vector until the mask step takes it."""

    status: int
    round_number: int
    arrays_id: str
    layout: Layout
    encoding: Mapping[str, Any]
    weight: int
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def encode(self) -> bytes:
        public = json.dumps({"layout": [[k, n, list(s)] for k, n, s in self.layout], "encoding": dict(self.encoding)})
        w = Writer().fixed(_MAGIC, 4).u8(_VERSION).u8(self.status).u64(self.round_number)
        w.blob(self.arrays_id.encode()).blob(public.encode()).u64(self.weight)
        return w.array(np.ascontiguousarray(self.vector, dtype="<f8").view("<u8")).body()

    @classmethod
    def decode(cls, data: bytes) -> _Stored:
        r = Reader(memoryview(data))
        if r.fixed(4) != _MAGIC or r.u8() != _VERSION:
            raise MalformedMessage("not a secagg update record of this version")
        status, round_number = r.u8(), r.u64()
        try:
            arrays_id, public = r.blob(_MAX_FIELD).decode(), json.loads(r.blob(_MAX_FIELD))
            layout = tuple((str(k), str(n), tuple(int(x) for x in s)) for k, n, s in public["layout"])
            encoding = dict(public["encoding"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedMessage(f"the update record's parameters do not parse ({type(exc).__name__})") from None
        weight = r.u64()
        count = sum(math.prod(s) for _, _, s in layout) if status == _PENDING else 0
        vector = r.array(8, count).view("<f8").astype(np.float64)
        r.done()
        if status not in (_PENDING, _TAKEN):
            raise MalformedMessage("unknown update record status")
        return cls(status, round_number, arrays_id, layout, encoding, weight, vector)

    def __repr__(self) -> str:
        return f"_Stored(round={self.round_number}, status={self.status})"  # never the values

    def __getstate__(self) -> None:
        raise TypeError("a stored update holds a node's plain update and cannot be pickled")


class _UpdateStore:
    """The file holding this node's latest update, next to its NodeStore records."""

    def __init__(self, context: Context) -> None:
        directory = private_directory(_state_directory(context))
        name = f"run{context.run_id}-node{context.node_id}"
        self._path = directory / f"{name}.update"
        self._lock = directory / f"{name}.update.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        with private_lock(self._lock, 60.0):
            yield

    def load(self) -> _Stored | None:
        return _Stored.decode(self._path.read_bytes()) if self._path.exists() else None

    def save(self, stored: _Stored) -> None:
        write_private(self._path, stored.encode())

    def take(self, round_number: int) -> tuple[np.ndarray, int]:
        """The update of ``round_number``, erased from the file before it is returned (taken once).

        Raises:
            ProtocolAbort: no update of that round is stored, or it was taken already.
        """
        with self.locked():
            stored = self.load()
            if stored is None or stored.round_number != round_number or stored.status != _PENDING:
                raise ProtocolAbort(f"this node holds no untaken update of round {round_number}")
            self.save(replace(stored, status=_TAKEN, weight=0, vector=np.zeros(0)))
        return stored.vector, stored.weight


def _weight(value: Any, key: str, max_weight: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ParameterError(f"the weight {key!r} must be an integer, got {value!r}")
    if not 1 <= value <= max_weight:
        raise ParameterError(f"the weight {key!r} = {value} is outside [1, {max_weight}] (secagg-max-weight)")
    return int(value)


def _update_of(reply: Message, received: ArrayRecord, layout: Layout, mark: _Mark) -> tuple[np.ndarray, int]:
    """The flat secure vector (trained - received arrays, then the secure metrics) and the weight."""
    trained = _only(reply.content.array_records, "ArrayRecord", "the train reply")
    metrics = _only(reply.content.metric_records, "MetricRecord", "the train reply")
    if sorted(trained.keys()) != sorted(received.keys()):
        raise ParameterError("the trained ArrayRecord has other keys than the one received")
    weight = _weight(metrics.get(mark.weight_key), mark.weight_key, mark.max_weight)
    parts = []
    for kind, key, shape in layout:
        if kind == _ARRAYS:
            new, old = trained[key].numpy(), received[key].numpy()
            if new.shape != shape:
                raise ParameterError(f"the trained array {key!r} has shape {new.shape}, expected {shape}")
            parts.append((new.astype(np.float64) - old.astype(np.float64)).reshape(-1))
        else:
            value = metrics.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"the secure metric {key!r} must be a number, got {value!r}")
            parts.append(np.array([value], dtype=np.float64))
    vector = np.concatenate(parts)
    if not np.isfinite(vector).all():
        raise ParameterError("the update holds NaN or infinity")
    if (np.abs(vector) > mark.clip_bound).any():  # no count or value: the log may leave the node
        _LOG.warning("secagg_mod: update values beyond the clip bound %g are clipped", mark.clip_bound)
    return vector, weight


def _acknowledge(message: Message, round_number: int, arrays_id: str) -> Message:
    ack = ConfigRecord({"version": _VERSION, "round": round_number, "arrays-id": arrays_id})
    return Message(RecordDict({ACK_RECORD: ack}), reply_to=message)


def _acknowledgement_problem(content: RecordDict, round_number: int, arrays_id: str) -> str | None:
    """Why ``content`` is not exactly the acknowledgement of ``round_number`` / ``arrays_id``, or None."""
    if set(content.keys()) != {ACK_RECORD}:
        return f"the reply holds {sorted(content.keys())}, not only {ACK_RECORD!r} (is secagg_mod installed?)"
    record = content[ACK_RECORD]
    if not isinstance(record, ConfigRecord) or set(record.keys()) != _ACK_KEYS or record["version"] != _VERSION:
        return "the acknowledgement is malformed"
    if record["round"] != round_number or record["arrays-id"] != arrays_id:
        return "the acknowledgement is for another round or other arrays"
    return None


def _train(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    content = message.content
    if TRAIN_RECORD not in content:
        raise ProtocolAbort("this node trains only for secure aggregation and the train message does not ask "
                            "for it (wrap the server's strategy in SecAggStrategy)")
    mark = _Mark.parse(content[TRAIN_RECORD])
    _merged_config(context.run_config, mark.encoding)  # refuse a contradicting announcement before training
    received = _only(content.array_records, "ArrayRecord", "the train message")
    arrays_id, store = received.object_id, _UpdateStore(context)
    with store.locked():
        previous = store.load()
    if previous is not None and previous.round_number >= mark.round_number:
        if (previous.round_number, previous.arrays_id) == (mark.round_number, arrays_id):
            return _acknowledge(message, mark.round_number, arrays_id)  # a retry: trains and stores nothing
        raise ProtocolAbort(f"a train message for round {mark.round_number}; this node stored round "
                            f"{previous.round_number} already")
    layout = _layout(received, mark.metrics)
    message.content = RecordDict({k: v for k, v in content.items() if k != TRAIN_RECORD})
    try:  # the train function sees the message its strategy built; the shared content is not mutated
        reply = call_next(message, context)
    finally:
        message.content = content
    if reply.has_error():
        return reply
    vector, weight = _update_of(reply, received, layout, mark)
    with store.locked():
        previous = store.load()
        if previous is not None and previous.round_number >= mark.round_number:
            raise ProtocolAbort(f"round {mark.round_number} was stored by another process meanwhile")
        store.save(_Stored(_PENDING, mark.round_number, arrays_id, layout, dict(mark.encoding), weight, vector))
    return _acknowledge(message, mark.round_number, arrays_id)


def secagg_query(message: Message, context: Context) -> Message:
    """Answer one ``query.secagg`` message of a round started by :class:`SecAggStrategy`.

    The session is rebuilt from this node's run config, the encoding announced with the round's
    train message and the layout of the arrays received then. The stored update is taken at the
    mask step, once.
    Raises:
        SecAggError: the message is malformed, this node stored no update of that round, or the
            client refused the message (Flower sends an error reply: the node drops out).
    """
    envelope = unpack(message.content)
    store = _UpdateStore(context)
    stored = store.load()
    if stored is None or stored.round_number != envelope.round_number:
        raise ProtocolAbort(f"this node trained nothing for secure round {envelope.round_number}")
    run_config = _merged_config(context.run_config, stored.encoding)
    node = Context(context.run_id, context.node_id, context.node_config, context.state, run_config)
    template = _template(stored.layout)

    def take(_: Context, round_number: int) -> tuple[Any, int]:
        vector, weight = store.take(round_number)
        return Schema.of(template).unflatten(vector), weight

    return handle(message, node, template, take)


def secagg_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: train messages from :class:`SecAggStrategy` are answered with an acknowledgement.

    A ``train`` message runs ``call_next`` (the app's train function), keeps (trained - received
    arrays, weight, secure metrics) in the node-local file and replies with an acknowledgement only;
    a ``query.secagg`` message is answered by :func:`secagg_query`; every other message passes
    through ``call_next`` untouched.
    Raises:
        SecAggError: a train message without the secure mark, a malformed mark, a reply that breaks
            the rules in flower_strategy's module docstring, or a replayed round (Flower sends an error reply).
    """
    message_type = message.metadata.message_type
    if message_type == MESSAGE_TYPE:
        return secagg_query(message, context)
    if message_type.split(".")[0] == MessageType.TRAIN:
        return _train(message, context, call_next)
    return call_next(message, context)
