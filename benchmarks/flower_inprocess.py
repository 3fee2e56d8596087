"""Flower's real SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod`` clients) in this process.

Nothing here re-implements Flower's protocol: the server is flwr's own ``SecAggPlusWorkflow`` called
with a ``LegacyContext`` (FedAvg, a ``SimpleClientManager`` of ``GridClientProxy`` objects), and each
client is flwr's ``ClientApp`` with ``mods=[secaggplus_mod]`` and its own persistent ``Context``.
What this module supplies is the transport: :class:`InProcessGrid`, an implementation of flwr's
``Grid`` interface that delivers each message by a direct call, no network and no Ray. Every
message crosses it as flwr's protobuf (``message_to_proto`` / ``message_from_proto``), as it would
through a SuperLink, so each side gets its own copy (the workflow shares one ``ConfigRecord`` among
all setup messages and the mod pops keys from it) and the upload bytes are the real encoded sizes.

Time is split by side: the grid times each client call (decode, ``ClientApp``, encode the reply);
the server's time is the workflow's wall time less that. A client scheduled to drop at a stage
never replies from then on, as with a node that went away (``send_and_receive`` returns the replies
it has, as flwr's grids do once their timeout passes), or, with ``unavailable_replies``, gets the
error reply a SuperLink sends for a node whose heartbeat stopped (``NODE_UNAVAILABLE``). A client
that raises replies with an error message, as a SuperNode does.

The grid carries any ClientApp's messages, not only SecAgg+'s: ``step_of`` names the step a message
asks for (timing, bytes and drops are kept per step), and :mod:`benchmarks.flower_overhead` runs
Flower's Message-API FedAvg and our ``SecAggStrategy`` over it. :class:`FlowerSecAggPlus` keeps one
Flower SecAgg+ deployment (server state, clients and their contexts) for several rounds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

FIRST_NODE = 1000  # client node ids; the SuperLink's own id is 1
FLOWER_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
Gone = Callable[[int, str], bool]
"""``(node, step) -> True`` if the node does not answer a message for that step."""


@dataclass
class FlowerRound:
    """What one in-process Flower SecAgg+ round did and cost."""

    n: int
    dim: int
    num_shares: int
    threshold: int
    dropped: list[int]
    completed: bool
    server_s: float
    unmask_s: float
    """Server time after the last unmask reply until FedAvg's ``aggregate_fit`` is called."""
    fedavg_s: float
    """FedAvg's ``aggregate_fit`` on the n copies of the aggregate the workflow hands it (compat)."""
    wall_s: float
    client_s: dict[str, list[float]] = field(default_factory=dict)
    upload_bytes: dict[int, int] = field(default_factory=dict)
    stage_upload_bytes: dict[str, dict[int, int]] = field(default_factory=dict)
    client_errors: list[str] = field(default_factory=list)
    max_abs_error: float | None = None


def _flwr() -> Any:
    """flwr's modules, imported on first use (flwr is an optional dependency)."""
    import flwr.client
    import flwr.common.serde as serde
    from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.serverapp.grid import Grid
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    return locals()


def flower_stage(message: Any) -> str:
    """The SecAgg+ stage a ``SecAggPlusWorkflow`` message asks for (its step for :class:`InProcessGrid`)."""
    f = _flwr()
    return str(message.content.config_records[f["RECORD_KEY_CONFIGS"]][f["Key"].STAGE])


def gone_from(drop_at: Mapping[int, str], order: Sequence[str] = FLOWER_STAGES) -> Gone:
    """Nodes in ``drop_at`` answer nothing from their step on (steps in ``order``), in every round."""

    def gone(node: int, step: str) -> bool:
        when = drop_at.get(node)
        return when is not None and step in order and order.index(step) >= order.index(when)

    return gone


def stamp_server_identity(run_id: int = 1) -> None:
    """What flwr's ServerApp runner does before it calls the server app (flwr/server/compat/app.py):
    the process's task identity, with which flwr stamps every message it creates."""
    f = _flwr()
    identity = f["TaskIdentity"]
    identity.task_id, identity.run_id, identity.node_id = 1, run_id, f["SUPERLINK_NODE_ID"]


def make_grid_class() -> type:
    """``InProcessGrid``, built on first use so that importing this module does not import flwr."""
    f = _flwr()
    grid_base: Any = f["Grid"]
    Message, serde = f["Message"], f["serde"]

    class InProcessGrid(grid_base):  # type: ignore[misc]
        """flwr's ``Grid`` over direct calls to in-process ``ClientApp`` objects.

        Args:
            apps: node id -> (``ClientApp``, that node's persistent ``Context``).
            gone: which node fails to answer which step (:func:`gone_from`).
            step_of: the step a server message asks for (default: its SecAgg+ stage).
            unavailable_replies: answer a gone node's message with the SuperLink's node-unavailable
                error instead of nothing (a server then needs no timeout to move on).
        """

        def __init__(self, apps: dict[int, tuple[Any, Any]], gone: Gone, step_of: Callable[[Any], str] = flower_stage,
                     unavailable_replies: bool = False) -> None:
            self.apps, self.gone, self.step_of = apps, gone, step_of
            self.unavailable_replies = unavailable_replies
            self._the_run = f["Run"].create_empty(1)
            self._replies: dict[str, Any] = {}
            self.client_seconds: dict[str, list[float]] = defaultdict(list)
            self.upload_bytes: dict[int, int] = defaultdict(int)
            self.download_bytes: dict[int, int] = defaultdict(int)
            self.stage_upload_bytes: dict[str, dict[int, int]] = defaultdict(dict)
            self.errors: list[str] = []
            self.last_return = 0.0

        def set_run(self, run: Any) -> None:
            self._the_run = run

        @property
        def run(self) -> Any:
            return self._the_run

        def create_message(self, content: Any, message_type: str, dst_node_id: int, group_id: str,
                           ttl: float | None = None) -> Any:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(self.apps)

        def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
            ids = []
            for msg in messages:
                proto = serde.message_to_proto(msg)  # the server side of the transport
                proto.metadata.message_id = str(uuid.uuid4())
                ids.append(proto.metadata.message_id)
                node = proto.metadata.dst_node_id
                step = self.step_of(msg)
                if self.gone(node, step):
                    if self.unavailable_replies:
                        self._replies[proto.metadata.message_id] = self._unavailable(proto)
                    continue
                self.download_bytes[node] += proto.ByteSize()
                start = time.perf_counter()
                reply_proto = self._client(node, serde.message_from_proto(proto))
                self.client_seconds[step].append(time.perf_counter() - start)
                size = reply_proto.ByteSize()
                self.upload_bytes[node] += size
                self.stage_upload_bytes[step][node] = size
                self._replies[proto.metadata.message_id] = reply_proto
            return ids

        def _unavailable(self, proto: Any) -> Any:
            """The error reply a SuperLink makes for a message to a node whose heartbeat expired."""
            error = f["Error"](f["ErrorCode"].NODE_UNAVAILABLE, "node unavailable (in-process drop)")
            return serde.message_to_proto(Message(error, reply_to=serde.message_from_proto(proto)))

        def _client(self, node: int, msg: Any) -> Any:
            app, context = self.apps[node]
            try:
                reply = app(msg, context)
            except Exception as exc:  # a SuperNode turns a ClientApp exception into an error reply
                self.errors.append(f"node {node}: {type(exc).__name__}: {exc}")
                reply = Message(f["Error"](0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            return serde.message_to_proto(reply)

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
            return [serde.message_from_proto(self._replies.pop(i)) for i in message_ids if i in self._replies]

        def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
            replies = list(self.pull_messages(self.push_messages(messages)))
            self.last_return = time.perf_counter()
            return replies

    return InProcessGrid


def client_update(node: int, dim: int, seed: int) -> np.ndarray:
    """The synthetic update of client ``node`` (the same for Flower's clients and ours)."""
    rng = np.random.default_rng(seed * 1_000_003 + node)  # ok: synthetic benchmark input
    return (rng.standard_normal(dim) * 0.01).astype(np.float32)


def _client_app(dim: int, seed: int) -> Any:
    f = _flwr()

    numpy_client: Any = f["flwr"].client.NumPyClient

    class UpdateClient(numpy_client):  # type: ignore[misc]
        def __init__(self, node: int) -> None:
            self.node = node

        def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            return [parameters[0] + client_update(self.node, dim, seed)], 1, {}

    def client_fn(context: Any) -> Any:
        return UpdateClient(int(context.node_config["index"])).to_client()

    return f["flwr"].client.ClientApp(client_fn=client_fn, mods=[f["secaggplus_mod"]])


class FlowerSecAggPlus:
    """One in-process Flower SecAgg+ deployment, kept for several rounds.

    The server is ``SecAggPlusWorkflow`` with a ``LegacyContext`` (legacy ``FedAvg``, a
    ``SimpleClientManager`` of ``GridClientProxy`` objects); the ``n`` clients are one ``ClientApp``
    with ``secaggplus_mod`` and a persistent ``Context`` each, at node ids ``FIRST_NODE ..
    FIRST_NODE + n - 1``. Each client trains by adding its :func:`client_update` to the parameters
    it receives (weight 1); the model starts at zeros. ``dropped`` lists 0-based client indices that
    stop answering at ``drop_stage`` in every round; ``num_shares`` and ``threshold`` go to the
    workflow unchanged; ``max_weight`` is 1, so the quantisation step is Flower's 16 / 2^22.
    """

    def __init__(self, n: int, dim: int, num_shares: int, threshold: int, dropped: list[int], seed: int = 0,
                 drop_stage: str = "collect_masked_vectors", unavailable_replies: bool = False) -> None:
        f = _flwr()
        logging.getLogger("flwr").setLevel(logging.CRITICAL)  # halts are reported by the caller
        self.n, self.dim, self.seed, self.dropped = n, dim, seed, sorted(dropped)
        app = _client_app(dim, seed)
        apps = {FIRST_NODE + i: (app, f["Context"](1, FIRST_NODE + i, {"index": i}, f["RecordDict"](), {}))
                for i in range(n)}
        self.grid = make_grid_class()(apps, gone_from({FIRST_NODE + i: drop_stage for i in dropped}),
                                      unavailable_replies=unavailable_replies)
        stamp_server_identity()
        manager = f["SimpleClientManager"]()
        for node in apps:
            manager.register(f["GridClientProxy"](node, self.grid, 1))
        self.fedavg_seconds: list[float] = []
        self.entered: list[float] = []
        """When each round's ``aggregate_fit`` was called (a round that halted never calls it)."""
        fedavg: Any = f["FedAvg"]
        entered, fedavg_seconds = self.entered, self.fedavg_seconds

        class TimedFedAvg(fedavg):  # type: ignore[misc]
            def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
                entered.append(time.perf_counter())
                out = super().aggregate_fit(server_round, results, failures)
                fedavg_seconds.append(time.perf_counter() - entered[-1])
                return out

        strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n)
        state = f["RecordDict"]()
        state.array_records["parameters"] = f["ArrayRecord"]([np.zeros(dim, dtype=np.float32)])
        state.config_records["config"] = f["ConfigRecord"]({"current_round": 1})
        self.context = f["LegacyContext"](f["Context"](1, 0, {}, state, {}), f["ServerConfig"](num_rounds=1),
                                          strategy, manager)
        self.workflow = f["SecAggPlusWorkflow"](num_shares, threshold, max_weight=1.0)

    def round(self, number: int) -> float:
        """Run round ``number`` (from 1); its wall seconds, clients' calls included."""
        self.context.state.config_records["config"]["current_round"] = number
        start = time.perf_counter()
        self.workflow(self.grid, self.context)
        return time.perf_counter() - start

    def max_abs_error(self, rounds: int) -> float:
        """Max |model - exact| after ``rounds`` completed rounds (each adds the survivors' mean update)."""
        model = self.context.state.array_records["parameters"].to_numpy_ndarrays()[0]
        survivors = [i for i in range(self.n) if i not in set(self.dropped)]
        mean = np.mean([client_update(i, self.dim, self.seed).astype(np.float64) for i in survivors], axis=0)
        return float(np.abs(model - rounds * mean).max())


def run_flower_round(n: int, dim: int, num_shares: int, threshold: int, dropped: list[int],
                     seed: int = 0, drop_stage: str = "collect_masked_vectors") -> FlowerRound:
    """One round of Flower's SecAgg+ among ``n`` in-process clients with updates of ``dim`` float32.

    Node ids are ``FIRST_NODE .. FIRST_NODE + n - 1``; ``dropped`` lists
    0-based client indices that vanish at ``drop_stage`` (they never reply from then on).
    ``num_shares`` and ``threshold`` go to ``SecAggPlusWorkflow`` unchanged; weights are 1 and
    ``max_weight`` 1, so the quantisation step is Flower's 16 / 2^22.
    """
    flower = FlowerSecAggPlus(n, dim, num_shares, threshold, dropped, seed, drop_stage)
    wall = flower.round(1)
    grid = flower.grid
    client_total = sum(sum(v) for v in grid.client_seconds.values())
    completed = bool(flower.entered)
    result = FlowerRound(
        n, dim, num_shares, threshold, sorted(dropped), completed, wall - client_total,
        (flower.entered[0] - grid.last_return) if completed else float("nan"),
        flower.fedavg_seconds[0] if flower.fedavg_seconds else 0.0, wall,
        dict(grid.client_seconds), dict(grid.upload_bytes), {k: dict(v) for k, v in grid.stage_upload_bytes.items()},
        list(grid.errors),
    )
    if completed:
        result.max_abs_error = flower.max_abs_error(1)
    return result
