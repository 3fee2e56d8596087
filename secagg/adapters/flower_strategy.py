"""Secure aggregation under any Flower Message-API strategy (FedAvg, FedAdam, FedYogi, FedProx, ...).

Two pieces, following Flower's wrapper-and-mod convention (like its central-DP wrappers):

- :class:`SecAggStrategy` wraps the strategy on the server. Training messages go out as the inner
  strategy builds them, marked as secure. Nodes answer with an acknowledgement only; the nodes that
  acknowledged then run one secure round (:func:`secagg.adapters.flower.run_round`) whose released
  sum is the survivors' weighted update. The wrapper turns it into one synthetic reply (the sent
  arrays plus the average update, and the averaged secure metrics) and lets the inner strategy
  aggregate that, so FedAvg returns the weighted average and FedAdam applies its server optimiser
  to it.
- :func:`secagg_mod` on every ClientApp: it runs the user's train function, keeps the result in a
  private node-local file, replies with an acknowledgement, and answers the secure round from the
  file. :func:`secagg_query` answers the round's messages too, for apps that attach the mod to
  their train function only.

What the server learns per round: the weighted sum over survivors of (trained arrays - arrays
sent), each coordinate clipped to the clip bound; the weighted sums of the ``secure_metrics``; the
sum of the weights (``num-examples``, or the strategy's ``weighted_by_key``) and who survived. It
never sees one node's arrays, metrics or weight. Train replies carry nothing else: metrics not named
in ``secure_metrics`` stay on the node. Evaluation is Flower's own, in the clear.

Usage (a complete app; ``secagg`` must be importable on the SuperLink and every SuperNode)::

    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAdam

    from secagg.adapters.flower_strategy import SecAggStrategy, secagg_mod, secagg_query

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = SecAggStrategy(FedAdam(), context, secure_metrics=["train_loss"])
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=3)

    client_app = ClientApp(mods=[secagg_mod])
    client_app.query("secagg")(secagg_query)  # Flower routes a message only to a registered function

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        loss, examples = train_locally(model, context)
        metrics = MetricRecord({"train_loss": loss, "num-examples": examples})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                       reply_to=message)

Settings. The session (protocol, thresholds, encoding) is built by :func:`~secagg.adapters.flower.
session_config` from the run config keys ``secagg-protocol``, ``secagg-corrupt-fraction``,
``secagg-dropout-fraction`` (security-relevant: every node reads them from its own run config only),
``secagg-clip-bound``, ``secagg-fractional-bits`` and ``secagg-max-weight`` (the encoding). The
encoding only sets the range and precision of what the server is entitled to learn anyway, so the
server announces the values it uses in each train message (overridable in the constructor, e.g.
``max_weight=`` for ``num-examples`` above 1): a node adopts an announced value for a key its own run
config leaves unset and refuses a value that contradicts its own. ``secagg-stage-timeout`` and
``secagg-poll-interval`` are the server's alone. ``flwr.simulation.run_simulation`` gives both sides
an empty run config: the defaults then apply, with the server's constructor overrides.

Rules a node enforces: a train message without the secure mark is refused (a server cannot
downgrade a node that installed the mod to plain FedAvg); the reply must hold exactly one
ArrayRecord with the received keys and shapes and one MetricRecord with an integer weight in
``[1, max_weight]`` and every secure metric as a finite number; a train message for a round this
node already stored (or an older one) is refused, unless it is a retry of the same round with the
same arrays, which gets the same acknowledgement and trains nothing; the stored update is handed
to the protocol once, at the mask step, and erased from the file before it is masked.

State: each message may run in a fresh process (deployment) or a long-lived Ray actor (simulation);
the file is the only state. It sits next to :class:`~secagg.adapters.nodestate.NodeStore`'s records
(node config ``secagg-state-dir``; mode 0700, files 0600) and holds the plain update until the mask
step: put the directory on a tmpfs if it must never reach a disk.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..encoding import Schema
from ..errors import InsufficientParties, MalformedMessage, ParameterError, ProtocolAbort
from ..wire import Reader, Writer
from .flower import MESSAGE_TYPE, FlowerRound, _state_directory, handle, round_context, run_round, session_config, unpack
from .nodestate import private_directory, private_lock, write_private

__all__ = ["ACK_RECORD", "TRAIN_RECORD", "SecAggStrategy", "secagg_mod", "secagg_query"]

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
        arrays_id, public = r.blob(_MAX_FIELD).decode(), json.loads(r.blob(_MAX_FIELD))
        weight = r.u64()
        layout = tuple((str(k), str(n), tuple(int(x) for x in s)) for k, n, s in public["layout"])
        count = sum(math.prod(s) for _, _, s in layout) if status == _PENDING else 0
        vector = r.array(8, count).view("<f8").astype(np.float64)
        r.done()
        if status not in (_PENDING, _TAKEN):
            raise MalformedMessage("unknown update record status")
        return cls(status, round_number, arrays_id, layout, dict(public["encoding"]), weight, vector)

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
            the rules of the module docstring, or a replayed round (Flower sends an error reply).
    """
    message_type = message.metadata.message_type
    if message_type == MESSAGE_TYPE:
        return secagg_query(message, context)
    if message_type.split(".")[0] == MessageType.TRAIN:
        return _train(message, context, call_next)
    return call_next(message, context)


# -- server side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pending:
    """What the server sent in one training round, kept until it aggregates."""

    round_number: int
    grid: Grid
    nodes: frozenset[int]
    sent: ArrayRecord
    arrays_id: str
    layout: Layout
    run_config: Mapping[str, Any]


def _acknowledgement_problem(content: RecordDict, pending: _Pending) -> str | None:
    if set(content.keys()) != {ACK_RECORD}:
        return f"the reply holds {sorted(content.keys())}, not only {ACK_RECORD!r} (is secagg_mod installed?)"
    record = content[ACK_RECORD]
    if not isinstance(record, ConfigRecord) or set(record.keys()) != _ACK_KEYS or record["version"] != _VERSION:
        return "the acknowledgement is malformed"
    if record["round"] != pending.round_number or record["arrays-id"] != pending.arrays_id:
        return "the acknowledgement is for another round or other arrays"
    return None


def _sent_arrays(messages: list[Message]) -> ArrayRecord:
    """The one ArrayRecord every train message carries (identical for all, or the wrapper refuses)."""
    first: ArrayRecord | None = None
    for message in messages:
        if message.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            raise ParameterError(f"the inner strategy configured a {message.metadata.message_type!r} message to train")
        arrays: ArrayRecord = _only(message.content.array_records, "ArrayRecord", "a train message")
        if first is None:
            first = arrays
        elif arrays is not first and arrays.object_id != first.object_id:
            raise ParameterError("SecAggStrategy needs one ArrayRecord sent to every node; the inner strategy varies it")
    assert first is not None
    return first


def _option(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ParameterError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class SecAggStrategy(Strategy):
    """Wrap a Flower strategy so that it only ever aggregates securely summed updates.

    Args:
        strategy: the strategy to wrap; its ``configure_train`` must send one ArrayRecord to every
            node. Its ``weighted_by_key`` and ``arrayrecord_key`` are used if it has them.
        context: the ServerApp's context (its run id and run config).
        secure_metrics: names of train metrics averaged inside the secure sum (weighted like the
            arrays); each node must report them as numbers within the clip bound.
        clip_bound, fractional_bits, max_weight: encoding overrides of the run config (announced to
            the nodes; a node refuses a value contradicting its own run config).
        stage_timeout, poll_interval: overrides of ``secagg-stage-timeout`` and ``secagg-poll-interval``.
    Raises:
        ParameterError: an invalid option.
    """

    def __init__(
        self,
        strategy: Strategy,
        context: Context,
        *,
        secure_metrics: Sequence[str] = (),
        clip_bound: float | None = None,
        fractional_bits: int | None = None,
        max_weight: int | None = None,
        stage_timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.strategy = strategy
        self.run_id = context.run_id
        self.weight_key = str(getattr(strategy, "weighted_by_key", "num-examples"))
        self.arrays_key = str(getattr(strategy, "arrayrecord_key", "arrays"))
        self.secure_metrics = _metric_names(secure_metrics, self.weight_key)
        overrides = dict(zip(_ENCODING_KEYS, (clip_bound, fractional_bits, max_weight)))
        self._run_config = dict(context.run_config) | {k: v for k, v in overrides.items() if v is not None}
        self._timing = {}
        for name, key, given in (("stage_timeout", "secagg-stage-timeout", stage_timeout),
                                 ("poll_interval", "secagg-poll-interval", poll_interval)):
            value = given if given is not None else self._run_config.get(key)
            if value is not None:
                self._timing[name] = _option(value, key)
        self.rounds: dict[int, FlowerRound] = {}
        """Server round -> the secure round that produced its aggregate (survivors, drops, timings)."""
        self._pending: _Pending | None = None

    def summary(self) -> None:
        """Log the secure-aggregation settings, then the inner strategy's summary."""
        _LOG.info("\t├──> SecAggStrategy: protocol %s, secure metrics %s, wrapping %s",
                  self._run_config.get("secagg-protocol", "secagg+ (default)"), list(self.secure_metrics),
                  type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The inner strategy's train messages, each marked with :data:`TRAIN_RECORD`.

        Raises:
            ParameterError: the inner strategy sends different arrays to different nodes, or the
                run config gives no valid session for the sampled nodes.
        """
        self._pending = None
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        sent = _sent_arrays(messages)
        layout = _layout(sent, self.secure_metrics)
        encoding = session_config(self._run_config, max(2, len(messages)), _template(layout)).encoding
        announced = {"secagg-clip-bound": float(encoding.clip_bound), "secagg-fractional-bits": encoding.fractional_bits,
                     "secagg-max-weight": encoding.max_weight}
        mark = _Mark(server_round, self.weight_key, self.secure_metrics, announced).record()
        for message in messages:
            message.content[TRAIN_RECORD] = mark
        self._pending = _Pending(server_round, grid, frozenset(m.metadata.dst_node_id for m in messages), sent,
                                 sent.object_id, layout, self._run_config | announced)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the secure round with the nodes that acknowledged; the inner strategy aggregates its sum.

        Returns ``(None, None)``, as Flower's strategies do when nothing can be aggregated, if fewer
        than two nodes acknowledged or fewer than the threshold survived the secure round.
        """
        pending, self._pending = self._pending, None
        replies = list(replies)
        if pending is None or pending.round_number != server_round:
            if replies:
                _LOG.warning("secagg: round %d was not configured by this strategy; nothing aggregated", server_round)
            return None, None
        nodes = self._acknowledged(pending, replies)
        if len(nodes) < 2:
            _LOG.warning("secagg round %d: %d node(s) acknowledged, a secure sum needs 2; nothing aggregated",
                         server_round, len(nodes))
            return None, None
        config = session_config(pending.run_config, len(nodes), _template(pending.layout))
        try:
            outcome = run_round(pending.grid, nodes, config, round_number=server_round,
                                context=round_context(self.run_id, server_round), **self._timing)
        except InsufficientParties as exc:
            _LOG.warning("secagg round %d: %s; nothing aggregated", server_round, exc)
            return None, None
        self.rounds[server_round] = outcome
        _LOG.info("secagg round %d: %d of %d nodes in the sum, dropped %s", server_round,
                  len(outcome.survivor_nodes), len(nodes), outcome.dropped)
        return self.strategy.aggregate_train(server_round, [self._synthetic_reply(pending, outcome)])

    def _acknowledged(self, pending: _Pending, replies: list[Message]) -> list[int]:
        nodes: list[int] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                problem: str | None = f"error {reply.error.code}: {reply.error.reason}"
            elif node not in pending.nodes or node in nodes:
                problem = "not sampled for this round, or a second reply"
            else:
                problem = _acknowledgement_problem(reply.content, pending)
            if problem:
                _LOG.warning("secagg round %d: node %d left out (%s)", pending.round_number, node, problem)
            else:
                nodes.append(node)
        return nodes

    def _synthetic_reply(self, pending: _Pending, outcome: FlowerRound) -> Message:
        """One train reply as if from a single node: sent arrays + average update, averaged metrics."""
        average = outcome.result.average_vector()
        arrays: dict[str, Array] = {}
        metrics: dict[str, int | float | list[int] | list[float]] = {}
        offset = 0
        for kind, key, shape in pending.layout:
            size = math.prod(shape)
            part = average[offset:offset + size].reshape(shape)
            offset += size
            if kind == _ARRAYS:
                base = pending.sent[key].numpy()
                dtype = base.dtype if np.issubdtype(base.dtype, np.floating) else np.dtype(np.float64)
                arrays[key] = Array(np.asarray(base.astype(np.float64) + part, dtype=dtype))
            else:
                metrics[key] = float(part[0])
        metrics[self.weight_key] = outcome.result.weight_sum
        content = RecordDict({self.arrays_key: ArrayRecord({k: arrays[k] for k in pending.sent.keys()}),
                              "metrics": MetricRecord(metrics)})
        return Message(content, 0, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The inner strategy's evaluation messages, unchanged (evaluation is not aggregated securely)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The inner strategy's aggregate of the evaluation replies."""
        return self.strategy.aggregate_evaluate(server_round, replies)
