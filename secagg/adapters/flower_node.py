"""The node side of :mod:`secagg.adapters.flower_strategy`: :func:`make_secagg_mod` and :func:`secagg_query`.

Also what both sides share: the settings of a node's update (:class:`UpdateSettings`: weight key,
secure metrics, max weight), the mark a secure train message carries (:data:`TRAIN_RECORD`), the
acknowledgement a node answers with (:data:`ACK_RECORD`), the digests of what a node trained from
(:func:`train_digests`) and the layout of the secure vector. The module docstring of
:mod:`~secagg.adapters.flower_strategy` gives the rules and a complete app.

Which values the node reports, and how large its weight may be, are the node's own: the arguments
of :func:`make_secagg_mod` in its ClientApp. The server's mark repeats the server's settings only so
that a node with other settings refuses before it trains; that refusal depends on the two settings,
never on the node's data. A weight above the node's max weight is clipped to it (a node-local
warning), never refused: the node's participation does not depend on where its private values lie.

Errors and logs on the node never carry a node value (weight, metric, array content, its shape or
position, the train function's error text): Flower sends a ClientApp's exception text to the server
in the error reply. The update itself lives in :mod:`~secagg.adapters.updatestore`'s private files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from ..encoding import Schema
from ..errors import MalformedMessage, ParameterError, ProtocolAbort
from .flower import MESSAGE_TYPE, _state_directory, handle, unpack
from .updatestore import PENDING, Layout, StoredUpdate, UpdateStore

__all__ = ["ACK_RECORD", "TRAIN_RECORD", "UpdateSettings", "make_secagg_mod", "secagg_mod", "secagg_query",
           "train_digests"]

TRAIN_RECORD = "secagg.train"
"""The ConfigRecord marking a train message as secure: round, the server's settings, its encoding."""
ACK_RECORD = "secagg.ack"
"""The one ConfigRecord of a node's train reply: round and the digest of the train message it trained from."""
_VERSION = 2
_ENCODING_KEYS = ("secagg-clip-bound", "secagg-fractional-bits")
_TRAIN_KEYS = {"version", "round", "weight-key", "metrics", "secagg-max-weight", *_ENCODING_KEYS}
_ACK_KEYS = {"version", "round", "digest"}
_ARRAYS, _METRICS = "arrays", "metrics"
_LOG = logging.getLogger("flwr").getChild("secagg")  # the adapter's logger: Flower streams its records


# -- shared by both sides --------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateSettings:
    """What a node's secure update is made of; set by each node for itself (:func:`make_secagg_mod`).

    Args:
        weight_key: the train metric holding the node's integer weight (Flower's ``num-examples``).
        secure_metrics: the train metrics summed securely with the arrays (weighted like them); every
            other metric stays on the node.
        max_weight: the largest weight the encoding admits; a larger weight is clipped to it.
    Raises:
        ParameterError: an empty or repeated name, a secure metric named like the weight, or a
            max weight that is not an integer in [1, 2^63).
    """

    weight_key: str = "num-examples"
    secure_metrics: tuple[str, ...] = ()
    max_weight: int = 1

    @classmethod
    def of(cls, weight_key: str, secure_metrics: Iterable[str], max_weight: int) -> UpdateSettings:
        """The settings from any iterable of metric names (a bare string is refused, not split)."""
        if isinstance(secure_metrics, str):
            raise ParameterError("secure_metrics is a list of names, not one string")
        return cls(weight_key, tuple(secure_metrics), max_weight)

    def __post_init__(self) -> None:
        names = self.secure_metrics
        if not isinstance(self.weight_key, str) or not self.weight_key or not isinstance(names, tuple):
            raise ParameterError("the weight key must be a non-empty name and the secure metrics a tuple of names")
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names) or self.weight_key in names:
            raise ParameterError(f"secure metrics must be distinct non-empty names other than {self.weight_key!r}")
        weight = self.max_weight
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight < 2**63:
            raise ParameterError("max_weight must be an integer in [1, 2^63)")


def _integer(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        raise MalformedMessage(f"{what} must be an integer >= {low}, got {value!r}")  # a server-sent value
    return value


@dataclass(frozen=True)
class _Mark:
    """The content of :data:`TRAIN_RECORD`: the round, the server's settings and its encoding.

    The node refuses a mark whose settings differ from its own; ``encoding`` (clip bound, fractional
    bits) it adopts where its run config sets none.
    """

    round_number: int
    settings: UpdateSettings
    encoding: Mapping[str, Any]

    def record(self) -> ConfigRecord:
        s = self.settings
        return ConfigRecord({"version": _VERSION, "round": self.round_number, "weight-key": s.weight_key,
                             "metrics": list(s.secure_metrics), "secagg-max-weight": s.max_weight, **self.encoding})

    @classmethod
    def parse(cls, record: Any) -> _Mark:
        """Raises: MalformedMessage: not exactly the layout :meth:`record` writes."""
        if not isinstance(record, ConfigRecord) or set(record.keys()) != _TRAIN_KEYS:
            raise MalformedMessage(f"the {TRAIN_RECORD} record is malformed")
        if record["version"] != _VERSION:
            raise MalformedMessage(f"unsupported {TRAIN_RECORD} version {record['version']!r}")
        metrics, clip = record["metrics"], record["secagg-clip-bound"]
        if not isinstance(metrics, list):
            raise MalformedMessage(f"the {TRAIN_RECORD} metric list is malformed")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip > 0):
            raise MalformedMessage("the announced clip bound must be a positive number")
        encoding = {"secagg-clip-bound": float(clip),
                    "secagg-fractional-bits": _integer(record["secagg-fractional-bits"], "fractional bits")}
        try:
            settings = UpdateSettings(record["weight-key"], tuple(metrics),  # type: ignore[arg-type]
                                      _integer(record["secagg-max-weight"], "max weight", 1))
        except ParameterError as exc:
            raise MalformedMessage(str(exc)) from None
        return cls(_integer(record["round"], "the round"), settings, encoding)


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _value_bytes(value: Any) -> bytes:
    """Canonical, type-tagged bytes of one ConfigRecord / MetricRecord value."""
    if isinstance(value, bool):
        return b"b" + bytes([value])
    if isinstance(value, int):
        return b"i" + _length_prefixed(str(value).encode())
    if isinstance(value, float):
        return b"f" + struct.pack("<d", value)
    if isinstance(value, str):
        return b"s" + _length_prefixed(value.encode())
    if isinstance(value, bytes):
        return b"y" + _length_prefixed(value)
    if isinstance(value, list):
        return b"l" + struct.pack("<Q", len(value)) + b"".join(_value_bytes(v) for v in value)
    raise ParameterError(f"a train message record holds a {type(value).__name__}, which Flower records do not")


def _model_digest(arrays: ArrayRecord) -> bytes:
    """SHA-256 over each array's name, dtype, shape and little-endian C-order bytes, in the record's
    order (Flower's ``to_numpy_ndarrays()`` is positional, and the order survives the wire: server
    and node hash the same sequence, so a node sent the arrays in another order is in another session)."""
    h = hashlib.sha256(b"secagg/v1/flower-model\x00")
    for key in arrays.keys():
        try:
            value = arrays[key].numpy()
        except TypeError:
            raise ParameterError(f"array {key!r} is not a numpy array; the model digest needs its values") from None
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        h.update(_length_prefixed(key.encode()) + _length_prefixed(value.dtype.str.encode()))
        h.update(struct.pack(f"<Q{value.ndim}Q", value.ndim, *value.shape) + struct.pack("<Q", value.nbytes))
        h.update(value.reshape(-1).view(np.uint8).data)
    return h.digest()


def train_digests(content: RecordDict) -> tuple[bytes, bytes]:
    """(model, train message) digests of a train message's content, its :data:`TRAIN_RECORD` left out.

    The model digest covers the one ArrayRecord (:func:`_model_digest`); the message digest covers
    every record by name and kind: the model digest for the ArrayRecord, each config or metric
    entry's key and type-tagged value otherwise. Server and node compute both from the same content,
    so they agree exactly when the node received what the server meant to send everyone.
    Raises:
        ParameterError: not exactly one ArrayRecord, an array Flower cannot turn into numpy, or a
            record of an unknown kind.
    """
    model = _model_digest(_only(content.array_records, "ArrayRecord", "a train message"))
    h = hashlib.sha256(b"secagg/v1/flower-train\x00")
    for name in sorted(k for k in content.keys() if k != TRAIN_RECORD):
        record = content[name]
        if isinstance(record, ArrayRecord):
            h.update(b"A" + _length_prefixed(name.encode()) + model)
            continue
        if not isinstance(record, (ConfigRecord, MetricRecord)):
            raise ParameterError(f"record {name!r} of the train message is of an unknown kind")
        h.update((b"C" if isinstance(record, ConfigRecord) else b"M") + _length_prefixed(name.encode()))
        h.update(struct.pack("<Q", len(record)))
        for key in sorted(record.keys()):
            h.update(_length_prefixed(key.encode()) + _value_bytes(record[key]))
    return model, h.digest()


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


def _acknowledge(message: Message, round_number: int, digest: bytes) -> Message:
    ack = ConfigRecord({"version": _VERSION, "round": round_number, "digest": digest.hex()})
    return Message(RecordDict({ACK_RECORD: ack}), reply_to=message)


def _acknowledgement_problem(content: RecordDict, round_number: int, digest: bytes) -> str | None:
    """Why ``content`` is not exactly the acknowledgement of ``round_number`` / ``digest``, or None."""
    if set(content.keys()) != {ACK_RECORD}:
        return f"the reply holds {sorted(content.keys())}, not only {ACK_RECORD!r} (is secagg_mod installed?)"
    record = content[ACK_RECORD]
    if not isinstance(record, ConfigRecord) or set(record.keys()) != _ACK_KEYS or record["version"] != _VERSION:
        return "the acknowledgement is malformed (an older secagg_mod?)"
    if record["round"] != round_number or record["digest"] != digest.hex():
        return "the acknowledgement is for another round or another train message"
    return None


# -- node side -------------------------------------------------------------------------------------------
def _store(context: Context) -> UpdateStore:
    return UpdateStore(_state_directory(context), f"run{context.run_id}-node{context.node_id}")


def _encoding(own: UpdateSettings, run_config: Mapping[str, Any], mark: _Mark) -> dict[str, Any]:
    """The node's encoding for the round: its own max weight; clip bound and fractional bits from its
    run config, or the server's where the run config sets none.

    Raises:
        ParameterError: the server's settings differ from the node's, or its run config sets an
            encoding key to another value than the server's.
    """
    if mark.settings != own:
        raise ParameterError("the server's weight key, secure metrics or max weight differ from this node's own "
                             "(make_secagg_mod's arguments); it trains nothing")
    for key, value in mark.encoding.items():
        if key in run_config and run_config[key] != value:
            raise ParameterError(f"the server's {key} contradicts this node's run config")
    return dict(mark.encoding) | {"secagg-max-weight": own.max_weight}


def _weight(value: Any, key: str, max_weight: int) -> int:
    """The node's weight, clipped to its max weight. Neither the error nor the log names the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()) or value < 1:
        raise ParameterError(f"the weight {key!r} must be an integer >= 1 (missing, or of another kind or range)")
    if value > max_weight:
        _LOG.warning("secagg_mod: the weight %r is above this node's max weight %d and is clipped to it", key, max_weight)
        return max_weight
    return int(value)


def _update_of(reply: Message, received: ArrayRecord, layout: Layout, own: UpdateSettings,
               clip_bound: float) -> tuple[np.ndarray, int]:
    """The flat secure vector (trained - received arrays, then the secure metrics) and the weight."""
    trained = _only(reply.content.array_records, "ArrayRecord", "the train reply")
    metrics = _only(reply.content.metric_records, "MetricRecord", "the train reply")
    if sorted(trained.keys()) != sorted(received.keys()):
        raise ParameterError("the trained ArrayRecord has other keys than the one received")
    weight = _weight(metrics.get(own.weight_key), own.weight_key, own.max_weight)
    parts = []
    for kind, key, shape in layout:
        if kind == _ARRAYS:
            new, old = trained[key].numpy(), received[key].numpy()
            if new.shape != shape or new.dtype.kind not in "biuf":  # numpy's cast error would quote values
                raise ParameterError(f"the trained array {key!r} has another shape than the one received, "
                                     "or is not real numbers")
            parts.append((new.astype(np.float64) - old.astype(np.float64)).reshape(-1))
        else:
            value = metrics.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"the secure metric {key!r} is missing or not a number")
            parts.append(np.array([value], dtype=np.float64))
    vector = np.concatenate(parts)
    if not np.isfinite(vector).all():
        raise ParameterError("the update holds NaN or infinity")
    if (np.abs(vector) > clip_bound).any():  # no count or value
        _LOG.warning("secagg_mod: update values beyond the clip bound %g are clipped", clip_bound)
    return vector, weight


def _call_train(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The app's train function; its exception or error reply is replaced by one without its text."""
    try:
        reply = call_next(message, context)
    except Exception as exc:  # noqa: BLE001 - its text may hold the node's values, and Flower sends it
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        _LOG.error("secagg_mod: the train function raised %s%s", type(exc).__name__,
                   f" at {frame.filename}:{frame.lineno}" if frame else "")
        raise ProtocolAbort("the train function failed (its error stays on the node)") from None
    if reply.has_error():
        _LOG.error("secagg_mod: the train function replied with error code %d", reply.error.code)
        raise ProtocolAbort("the train function replied with an error (its reason stays on the node)")
    return reply


def _train(message: Message, context: Context, call_next: ClientAppCallable, own: UpdateSettings) -> Message:
    content = message.content
    if TRAIN_RECORD not in content:
        raise ProtocolAbort("this node trains only for secure aggregation and the train message does not ask "
                            "for it (wrap the server's strategy in SecAggStrategy)")
    mark = _Mark.parse(content[TRAIN_RECORD])
    encoding = _encoding(own, context.run_config, mark)  # refused before training, from settings alone
    received = _only(content.array_records, "ArrayRecord", "the train message")
    model, digest = train_digests(content)
    store = _store(context)
    with store.locked():
        previous, released = store.load(), store.released(model)
    if previous is not None and previous.round_number >= mark.round_number:
        if (previous.round_number, previous.session) == (mark.round_number, digest):
            return _acknowledge(message, mark.round_number, digest)  # a retry: trains and stores nothing
        raise ProtocolAbort(f"a train message for round {mark.round_number}; this node stored round "
                            f"{previous.round_number} already")
    if released:
        raise ProtocolAbort("this node already released an update trained from these arrays; "
                            "it trains from each model once")
    layout = _layout(received, own.secure_metrics)
    message.content = RecordDict({k: v for k, v in content.items() if k != TRAIN_RECORD})
    try:  # the train function sees the message its strategy built; the shared content is not mutated
        reply = _call_train(message, context, call_next)
    finally:
        message.content = content
    vector, weight = _update_of(reply, received, layout, own, encoding["secagg-clip-bound"])
    with store.locked():
        previous = store.load()
        if previous is not None and previous.round_number >= mark.round_number:
            raise ProtocolAbort(f"round {mark.round_number} was stored by another process meanwhile")
        if store.released(model, vector):  # the same update from the same model in any dtype or order, or any run
            raise ProtocolAbort("this node already released an update trained from these arrays, or this very "
                                "update; it releases each once")
        store.save(StoredUpdate(PENDING, mark.round_number, model, digest, layout, encoding, weight, vector))
    return _acknowledge(message, mark.round_number, digest)


def secagg_query(message: Message, context: Context) -> Message:
    """Answer one ``query.secagg`` message of a round started by :class:`SecAggStrategy`.

    The session is rebuilt from this node's run config, the encoding and layout it stored with the
    round's update, and the digest of the train message it trained from (bound into the session:
    a node that trained from other arrays or another train config than the rest is in another
    session and drops out). The stored update is taken at the mask (CKKS: upload) step, once.
    Raises:
        SecAggError: the message is malformed, this node stored no update of that round, or the
            client refused the message (Flower sends an error reply: the node drops out).
    """
    envelope = unpack(message.content)
    store = _store(context)
    stored = store.load()
    if stored is None or stored.round_number != envelope.round_number:
        raise ProtocolAbort(f"this node trained nothing for secure round {envelope.round_number}")
    run_config = dict(context.run_config) | dict(stored.encoding)
    node = Context(context.run_id, context.node_id, context.node_config, context.state, run_config)
    template = _template(stored.layout)

    def take(_: Context, round_number: int) -> tuple[Any, int]:
        vector, weight = store.take(round_number)
        return Schema.of(template).unflatten(vector), weight

    return handle(message, node, template, take, model=stored.session, run_config=context.run_config)


def make_secagg_mod(*, weight_key: str = "num-examples", secure_metrics: Iterable[str] = (),
                    max_weight: int = 1) -> Mod:
    """A Flower mod answering train messages from :class:`SecAggStrategy` with an acknowledgement.

    The arguments are this node's own settings (:class:`UpdateSettings`); the server must use the
    same ones (``SecAggStrategy(..., secure_metrics=..., max_weight=...)`` and its strategy's
    ``weighted_by_key``), or the node refuses its train messages before training. A ``train``
    message runs ``call_next`` (the app's train function), keeps (trained - received arrays, weight,
    secure metrics) in the node-local file and replies with an acknowledgement only; a
    ``query.secagg`` message is answered by :func:`secagg_query`; every other message passes through
    ``call_next`` untouched.

    The mod raises a :class:`~secagg.SecAggError` (Flower sends an error reply, the node leaves the
    round) for a train message without the secure mark, a malformed mark or other settings than
    these, a replayed round, arrays it already released an update from, an update vector it already
    released (either in any run of its state directory), or a reply that breaks the rules in
    flower_strategy's module docstring.
    Raises:
        ParameterError: invalid settings.
    """
    own = UpdateSettings.of(weight_key, secure_metrics, max_weight)

    def secagg_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        message_type = message.metadata.message_type
        if message_type == MESSAGE_TYPE:
            return secagg_query(message, context)
        if message_type.split(".")[0] == MessageType.TRAIN:
            return _train(message, context, call_next, own)
        return call_next(message, context)

    return secagg_mod


secagg_mod = make_secagg_mod()
"""The mod with the default settings: weight ``num-examples`` clipped to 1 (an unweighted average),
no secure metrics. Use :func:`make_secagg_mod` for others."""
