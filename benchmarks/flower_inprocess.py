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
it has, as flwr's grids do once their timeout passes). A client that raises replies with an error
message, as a SuperNode does.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

FIRST_NODE = 1000  # client node ids; the SuperLink's own id is 1
FLOWER_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


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
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    return locals()


def make_grid_class() -> type:
    """``InProcessGrid``, built on first use so that importing this module does not import flwr."""
    f = _flwr()
    grid_base: Any = f["Grid"]
    Message, serde = f["Message"], f["serde"]
    configs_key, stage_key = f["RECORD_KEY_CONFIGS"], f["Key"].STAGE

    class InProcessGrid(grid_base):  # type: ignore[misc]
        """flwr's ``Grid`` over direct calls to in-process ``ClientApp`` objects."""

        def __init__(self, apps: dict[int, tuple[Any, Any]], drop_at: dict[int, str]) -> None:
            self.apps, self.drop_at = apps, drop_at
            self._the_run = f["Run"].create_empty(1)
            self._replies: dict[str, Any] = {}
            self.client_seconds: dict[str, list[float]] = defaultdict(list)
            self.upload_bytes: dict[int, int] = defaultdict(int)
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

        def _gone(self, node: int, stage: str) -> bool:
            when = self.drop_at.get(node)
            return when is not None and FLOWER_STAGES.index(stage) >= FLOWER_STAGES.index(when)

        def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
            ids = []
            for msg in messages:
                proto = serde.message_to_proto(msg)  # the server side of the transport
                proto.metadata.message_id = str(uuid.uuid4())
                ids.append(proto.metadata.message_id)
                node = proto.metadata.dst_node_id
                stage = str(msg.content.config_records[configs_key][stage_key])
                if self._gone(node, stage):
                    continue
                start = time.perf_counter()
                reply_proto = self._client(node, serde.message_from_proto(proto))
                self.client_seconds[stage].append(time.perf_counter() - start)
                size = reply_proto.ByteSize()
                self.upload_bytes[node] += size
                self.stage_upload_bytes[stage][node] = size
                self._replies[proto.metadata.message_id] = reply_proto
            return ids

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
            return [client_update(self.node, dim, seed)], 1, {}

    def client_fn(context: Any) -> Any:
        return UpdateClient(int(context.node_config["index"])).to_client()

    return f["flwr"].client.ClientApp(client_fn=client_fn, mods=[f["secaggplus_mod"]])


def run_flower_round(n: int, dim: int, num_shares: int, threshold: int, dropped: list[int],
                     seed: int = 0, drop_stage: str = "collect_masked_vectors") -> FlowerRound:
    """One round of Flower's SecAgg+ among ``n`` in-process clients with updates of ``dim`` float32.

    Node ids are ``FIRST_NODE .. FIRST_NODE + n - 1``; ``dropped`` lists
    0-based client indices that vanish at ``drop_stage`` (they never reply from then on).
    ``num_shares`` and ``threshold`` go to ``SecAggPlusWorkflow`` unchanged; weights are 1 and
    ``max_weight`` 1, so the quantisation step is Flower's 16 / 2^22.
    """
    f = _flwr()
    logging.getLogger("flwr").setLevel(logging.CRITICAL)  # halts are reported by the caller
    app = _client_app(dim, seed)
    apps = {FIRST_NODE + i: (app, f["Context"](1, FIRST_NODE + i, {"index": i}, f["RecordDict"](), {}))
            for i in range(n)}
    grid = make_grid_class()(apps, {FIRST_NODE + i: drop_stage for i in dropped})
    # What flwr's ServerApp runner does before it calls the server app (flwr/server/compat/app.py).
    identity = f["TaskIdentity"]
    identity.task_id, identity.run_id, identity.node_id = 1, 1, f["SUPERLINK_NODE_ID"]
    manager = f["SimpleClientManager"]()
    for node in apps:
        manager.register(f["GridClientProxy"](node, grid, 1))
    fedavg_seconds: list[float] = []
    entered: list[float] = []

    fedavg: Any = f["FedAvg"]

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
    context = f["LegacyContext"](f["Context"](1, 0, {}, state, {}), f["ServerConfig"](num_rounds=1), strategy, manager)
    workflow = f["SecAggPlusWorkflow"](num_shares, threshold, max_weight=1.0)
    start = time.perf_counter()
    workflow(grid, context)
    wall = time.perf_counter() - start
    client_total = sum(sum(v) for v in grid.client_seconds.values())
    completed = bool(entered)
    result = FlowerRound(
        n, dim, num_shares, threshold, sorted(dropped), completed, wall - client_total,
        (entered[0] - grid.last_return) if completed else float("nan"),
        fedavg_seconds[0] if fedavg_seconds else 0.0, wall,
        dict(grid.client_seconds), dict(grid.upload_bytes), {k: dict(v) for k, v in grid.stage_upload_bytes.items()},
        list(grid.errors),
    )
    if completed:
        aggregate = context.state.array_records["parameters"].to_numpy_ndarrays()[0]
        survivors = [i for i in range(n) if i not in set(dropped)]
        exact = np.mean([client_update(i, dim, seed).astype(np.float64) for i in survivors], axis=0)
        result.max_abs_error = float(np.abs(aggregate - exact).max())
    return result

