"""Secure aggregation under any Flower Message-API strategy (FedAvg, FedAdam, FedYogi, FedProx, ...).

Two pieces, following Flower's wrapper-and-mod convention (like its central-DP wrappers):

- :class:`SecAggStrategy` wraps the strategy on the server. Training messages go out as the inner
  strategy builds them, marked as secure. Nodes answer with an acknowledgement only; the nodes that
  acknowledged then run one secure round (:func:`secagg.adapters.flower.run_round`) whose released
  sum is the survivors' weighted update. The wrapper turns it into one synthetic reply (the sent
  arrays plus the average update, and the averaged secure metrics) and lets the inner strategy
  aggregate that, so FedAvg returns the weighted average and FedAdam applies its server optimiser
  to it.
- :func:`~secagg.adapters.flower_node.make_secagg_mod` builds the mod for every ClientApp from the
  node's own settings (weight key, secure metrics, max weight): it runs the user's train function,
  keeps the result in a private node-local file, replies with an acknowledgement, and answers the
  secure round from the file. :func:`secagg_query` answers the round's messages too, for apps that
  attach the mod to their train function only.

What the server learns per round: the weighted sum over survivors of (trained arrays - arrays
sent), each coordinate clipped to the clip bound; the weighted sums of the node's secure metrics;
the sum of the weights (each clipped to the max weight) and who survived. It never sees one node's
arrays, metrics or weight in a train reply: those carry nothing else, and metrics the node does not
name as secure stay on the node. The server chooses nothing about which of a node's values go into
the sum or how large they may be: weight key, secure metrics and max weight are the node's own
(:func:`make_secagg_mod`'s arguments); the server's mark states its own settings only so that a node
with others refuses before training, whatever its data. Evaluation is Flower's own, in the clear:
an evaluate reply shows that node's metrics and its ``num-examples`` (which may equal its train
weight) to the server.

Usage (a complete app; ``secagg`` must be importable on the SuperLink and every SuperNode)::

    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAdam

    from secagg.adapters.flower_strategy import SecAggStrategy, make_secagg_mod, secagg_query

    SECURE = {"secure_metrics": ["train_loss"], "max_weight": 10_000}  # the same on both sides
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = SecAggStrategy(FedAdam(), context, **SECURE)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=3)

    client_app = ClientApp(mods=[make_secagg_mod(**SECURE)])  # weight key: "num-examples" on both sides
    client_app.query("secagg")(secagg_query)  # Flower routes a message only to a registered function

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        loss, examples = train_locally(model, context)
        metrics = MetricRecord({"train_loss": loss, "num-examples": examples})
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                       reply_to=message)

Settings. A node's weight key, secure metrics and max weight are :func:`make_secagg_mod`'s arguments
(default: ``num-examples``, none, 1); the server's are the inner strategy's ``weighted_by_key``, the
constructor's ``secure_metrics`` and ``max_weight`` (or the run config's ``secagg-max-weight``). A
node whose settings differ refuses the train message before training. A weight above the node's
max weight is clipped to it (a warning in the node's own log), so a node never drops out because
of where its weight lies. The session (protocol, thresholds) is built by
:func:`~secagg.adapters.flower.session_config` from the run config keys ``secagg-protocol``,
``secagg-corrupt-fraction``, ``secagg-dropout-fraction`` (every node reads them from the run config
it is given and refuses a corrupt fraction below its node config's ``secagg-min-corrupt-fraction``),
``secagg-clip-bound`` and ``secagg-fractional-bits``. Clip bound and fractional bits only set
the range and precision of what the server is entitled to learn anyway, so the server announces the
values it uses in each train message (overridable in the constructor): a node adopts an announced
value for a key its own run config leaves unset and refuses a value that contradicts its own; it
never refuses because of its data. ``secagg-stage-timeout`` and ``secagg-poll-interval`` are the
server's alone. ``flwr.simulation.run_simulation`` gives both sides an empty run config: the defaults
then apply, with the server's constructor overrides.

Rules a node enforces: a train message without the secure mark is refused (a server cannot
downgrade a node that installed the mod to plain FedAvg); the reply must hold exactly one
ArrayRecord with the received keys and shapes and one MetricRecord with an integer weight >= 1 and
every secure metric as a finite number; a train message for a round this node already stored (or an
older one) is refused, unless it is a retry of the same round with the same content, which gets the
same acknowledgement and trains nothing; the stored update is handed to the protocol once, at the
mask step, and erased from the file before it is masked; a node trains at most once from a given
model once it has released an update from it, and never releases the same update vector twice
(node-local HMAC tags), in any run of its state directory (a server resending the same arrays, in
another dtype or another run, cannot subtract one node out of two sums of the same updates). The
round's session binds the digest of the whole train message (the arrays in their order, their
names, shapes and dtypes, and the train config): a node
sent other arrays or another config than the rest is in another session and drops out, so the round
completes only among nodes that trained from the same message. No error or log of the node names
one of its values (Flower sends a ClientApp's exception text to the server); the train function's
own exceptions and error replies are replaced by ones without their text.

Not guaranteed across rounds: each round releases one sum; sums over different survivor sets or
from different (even slightly different) models can be differenced to isolate a node's update.
That is secure aggregation's known limitation without differential privacy (SECURITY.md).

Rounds: the secure round of server round r is secagg round r, and a node refuses a train message for
a round at or below the last one it stored; so one run drives one ``SecAggStrategy.start`` (a second
``start`` in the same run, counting from round 1 again, would be refused by every node). A round
that aggregates nothing leaves the model unchanged: nodes that released an update in it refuse to
train from it again, so the next round runs without them.

State: each message may run in a fresh process (deployment) or a long-lived Ray actor (simulation);
the files are the only state (:mod:`~secagg.adapters.updatestore`). They sit next to
:class:`~secagg.adapters.nodestate.NodeStore`'s records (node config ``secagg-state-dir``; mode 0700,
files 0600) and hold the plain update until the mask step: put the directory on a tmpfs if it must
never reach a disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..errors import ParameterError, SecAggError
from .flower import FlowerRound, round_context, run_round, session_config
from .identity import REGISTRY, Registry
from .updatestore import Layout
from .flower_node import (
    _ARRAYS, _LOG, ACK_RECORD, TRAIN_RECORD, UpdateSettings, _acknowledgement_problem, _layout, _Mark,
    _only, _template, make_secagg_mod, secagg_mod, secagg_query, train_digests,
)

__all__ = ["ACK_RECORD", "TRAIN_RECORD", "SecAggStrategy", "make_secagg_mod", "secagg_mod", "secagg_query"]


@dataclass(frozen=True)
class _Pending:
    """What the server sent in one training round, kept until it aggregates."""

    round_number: int
    grid: Grid
    nodes: frozenset[int]
    sent: ArrayRecord
    digest: bytes
    layout: Layout
    run_config: Mapping[str, Any]


def _sent(messages: list[Message]) -> tuple[ArrayRecord, bytes]:
    """The one ArrayRecord every train message carries and the digest of the (identical) train content.

    Raises:
        ParameterError: a message is not a train message, or the contents differ between nodes.
    """
    digests: dict[int, tuple[bytes, bytes]] = {}
    for message in messages:
        if message.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            raise ParameterError(f"the inner strategy configured a {message.metadata.message_type!r} message to train")
        if id(message.content) not in digests:  # FedAvg & co. share one RecordDict: hashed once
            digests[id(message.content)] = train_digests(message.content)
    if len(set(digests.values())) != 1:
        raise ParameterError("SecAggStrategy needs one ArrayRecord and one train config sent to every node; "
                             "the inner strategy varies them")
    return _only(messages[0].content.array_records, "ArrayRecord", "a train message"), next(iter(digests.values()))[1]


def _option(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ParameterError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class SecAggStrategy(Strategy):
    """Wrap a Flower strategy so that it only ever aggregates securely summed updates.

    Args:
        strategy: the strategy to wrap; its ``configure_train`` must send one ArrayRecord and one
            train config to every node. Its ``weighted_by_key`` and ``arrayrecord_key`` are used if
            it has them.
        context: the ServerApp's context (its run id and run config).
        secure_metrics: names of train metrics averaged inside the secure sum (weighted like the
            arrays); they, the weight key and ``max_weight`` must equal the nodes' own settings
            (:func:`make_secagg_mod`), or the nodes refuse to train.
        clip_bound, fractional_bits: encoding overrides of the run config (announced to the nodes;
            a node refuses a value contradicting its own run config).
        max_weight: overrides the run config's ``secagg-max-weight`` (default 1).
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
        self.arrays_key = str(getattr(strategy, "arrayrecord_key", "arrays"))
        overrides = {"secagg-clip-bound": clip_bound, "secagg-fractional-bits": fractional_bits,
                     "secagg-max-weight": max_weight}
        self._given_run_config = dict(context.run_config)  # bound into every session, as each node binds its own
        self._run_config = dict(context.run_config) | {k: v for k, v in overrides.items() if v is not None}
        weight: Any = self._run_config.get("secagg-max-weight", 1)  # UpdateSettings checks it is an int
        self.settings = UpdateSettings.of(str(getattr(strategy, "weighted_by_key", "num-examples")), secure_metrics,
                                          weight)
        """The settings every node's mod must have (weight key, secure metrics, max weight)."""
        self.weight_key, self.secure_metrics = self.settings.weight_key, self.settings.secure_metrics
        self._timing: dict[str, float] = {}
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
        _LOG.info("\t├──> SecAggStrategy: protocol %s, secure metrics %s, max weight %d, wrapping %s",
                  self._run_config.get("secagg-protocol", "secagg+ (default)"), list(self.secure_metrics),
                  self.settings.max_weight, type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The inner strategy's train messages, each marked with :data:`TRAIN_RECORD`.

        Raises:
            ParameterError: the inner strategy sends different arrays or configs to different nodes,
                or the run config gives no valid session for the sampled nodes.
        """
        self._pending = None
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        sent, digest = _sent(messages)
        layout = _layout(sent, self.secure_metrics)
        encoding = session_config(self._run_config, max(2, len(messages)), _template(layout)).encoding
        announced = {"secagg-clip-bound": float(encoding.clip_bound), "secagg-fractional-bits": encoding.fractional_bits}
        mark = _Mark(server_round, self.settings, announced).record()
        for message in messages:
            message.content[TRAIN_RECORD] = mark
        run_config = self._run_config | announced | {"secagg-max-weight": self.settings.max_weight}
        self._pending = _Pending(server_round, grid, frozenset(m.metadata.dst_node_id for m in messages), sent,
                                 digest, layout, run_config)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the secure round with the nodes that acknowledged; the inner strategy aggregates its sum.

        Returns ``(None, None)``, as Flower's strategies do when nothing can be aggregated, if fewer
        than two nodes acknowledged, too few for the threat model's thresholds, fewer than the
        threshold survived the secure round (nothing is released then), or the released sum is
        refused (any :class:`~secagg.SecAggError`, e.g. a hostile client's weight): the error is
        logged and the run goes on.
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
        try:  # configure_train checked the run config for all sampled nodes: what fails now is too few of them
            path = pending.run_config.get(REGISTRY)  # malicious-model rounds: n is the registry's size
            registry = Registry.read(str(path)) if path else None
            config = session_config(pending.run_config, len(registry) if registry else len(nodes),
                                    _template(pending.layout))
            outcome = run_round(pending.grid, nodes, config, round_number=server_round,
                                context=round_context(self.run_id, server_round, pending.digest, self._given_run_config),
                                stage_timeout=self._timing.get("stage_timeout", 30.0),
                                poll_interval=self._timing.get("poll_interval", 0.2), registry=registry)
            reply = self._synthetic_reply(pending, outcome)
        except SecAggError as exc:
            _LOG.warning("secagg round %d: %s: %s; nothing aggregated (the model stays as it is, and nodes that "
                         "released an update in this round do not train from it again)",
                         server_round, type(exc).__name__, exc)
            return None, None
        self.rounds[server_round] = outcome
        _LOG.info("secagg round %d: %d of %d nodes in the sum, dropped %s", server_round,
                  len(outcome.survivor_nodes), len(nodes), outcome.dropped)
        return self.strategy.aggregate_train(server_round, [reply])

    def _acknowledged(self, pending: _Pending, replies: list[Message]) -> list[int]:
        nodes: dict[int, None] = {}  # ordered, with O(1) membership
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                problem: str | None = f"error {reply.error.code}: {reply.error.reason}"
            elif node not in pending.nodes or node in nodes:
                problem = "not sampled for this round, or a second reply"
            else:
                problem = _acknowledgement_problem(reply.content, pending.round_number, pending.digest)
            if problem:
                _LOG.warning("secagg round %d: node %d left out (%s)", pending.round_number, node, problem)
            else:
                nodes[node] = None
        return list(nodes)

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
