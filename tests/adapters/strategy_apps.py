"""ClientApps with known updates for the SecAggStrategy tests, and a Flower simulation run of them.

Importable by Ray's workers (the simulation ships the ClientApp to them) and runnable as a script:
``python -m tests.adapters.strategy_apps OUT.json`` runs ``flwr.simulation.run_simulation`` with 4
SuperNodes, FedAdam wrapped in SecAggStrategy (SecAgg+), 2 rounds, partition 3 crashing at the mask
step of every secure round, and writes the final arrays, the train metrics and the error bounds.

A node's update is a fixed function of its ``partition-id`` and the round (:func:`partition_delta`),
so a plain strategy fed the same replies gives the exact reference. Node config ``drop-at`` (or, in
the simulation, the ``SECAGG_TEST_DROP`` environment variable ``"partition:step"``) makes a node raise
at one step: ``train`` or a secure step (``advertise``, ``share``, ``mask``, ``unmask``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from secagg.adapters.flower import MESSAGE_TYPE, unpack
from secagg.adapters.flower_strategy import make_secagg_mod, secagg_query

TRAIN_CALLS: dict[int, int] = {}
"""Partition -> train function calls in this process (the replay tests count them)."""


def initial_arrays(size: int = 0) -> ArrayRecord:
    """The global model before round 1; ``size`` > 0 adds one float32 array of that many values."""
    arrays = {
        "layer.weight": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
        "layer.bias": np.zeros(4, dtype=np.float32),
        "steps": np.array(5, dtype=np.int64),  # an integer array: averaged as float64, like FedAvg does
    }
    if size:
        arrays["big"] = np.zeros(size, dtype=np.float32)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def partition_delta(partition: int, round_number: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """What partition ``partition`` adds to array ``name`` in a round: |values| in [0.05, 0.8]."""
    if name == "steps":
        return np.array(partition + 1, dtype=np.int64)
    grid = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) % 7
    sign = 1.0 if (partition + round_number) % 2 else -1.0
    return sign * (0.05 + 0.1 * partition + 0.02 * grid + 0.03 * round_number)


def train_loss(partition: int, round_number: int) -> float:
    return 2.0 - 0.25 * partition - 0.1 * round_number


def _drop_at(context: Context) -> str | None:
    configured = context.node_config.get("drop-at")
    if configured:
        return str(configured)
    env = os.environ.get("SECAGG_TEST_DROP", "")
    if env and env.split(":")[0] == str(context.node_config.get("partition-id")):
        return env.split(":")[1]
    return None


def crash_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Raise at the node's ``drop-at`` step (outermost mod: the node fails as a crashed SuperNode does)."""
    drop = _drop_at(context)
    if drop:
        kind = message.metadata.message_type
        step = unpack(message.content).step if kind == MESSAGE_TYPE else kind.split(".")[0]
        if step == drop:
            raise RuntimeError(f"node configured to drop at {drop}")
    return call_next(message, context)


def train(message: Message, context: Context) -> Message:
    """Add this partition's delta to the received arrays; report weight and metrics."""
    partition = int(context.node_config["partition-id"])
    TRAIN_CALLS[partition] = TRAIN_CALLS.get(partition, 0) + 1
    round_number = int(message.content["config"]["server-round"])  # type: ignore[arg-type]
    received = message.content["arrays"]
    trained = {}
    for key, array in received.items():
        value = array.numpy()
        trained[key] = Array(np.asarray(value + partition_delta(partition, round_number, key, value.shape),
                                        dtype=value.dtype))
    weight: Any = context.node_config.get("weight", partition + 1)
    metrics = MetricRecord({"num-examples": weight, "train_loss": train_loss(partition, round_number),
                            "private_note": 42.0})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Evaluation metrics that depend on the partition only (they travel in the clear, as in Flower)."""
    partition = int(context.node_config["partition-id"])
    metrics = MetricRecord({"eval_loss": 1.0 + partition, "num-examples": partition + 1})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


SETTINGS: dict[str, Any] = {"secure_metrics": ["train_loss"], "max_weight": 8}
"""The nodes' own settings (make_secagg_mod's arguments); the tests' servers use the same."""


def make_client_app(secure: bool = True, mod_on_train_only: bool = False, **settings: Any) -> ClientApp:
    """The test ClientApp: plain (Flower's FedAvg reference) or with the secagg mod (``SETTINGS``
    updated by ``settings``), for the whole app or (``mod_on_train_only``) for the train function
    only, the secure round then reaching ``secagg_query`` through its registration."""
    secagg_mod = make_secagg_mod(**(SETTINGS | settings))
    if not secure:
        app = ClientApp(mods=[crash_mod])
        app.train()(train)
    elif mod_on_train_only:
        app = ClientApp(mods=[crash_mod])
        app.train(mods=[secagg_mod])(train)
    else:
        app = ClientApp(mods=[crash_mod, secagg_mod])
        app.train()(train)
    app.evaluate()(evaluate)
    if secure:
        app.query("secagg")(secagg_query)
    return app


def _listening_addresses() -> list[str]:
    """The local addresses of every listening TCP socket of this process's session (Ray's processes)."""
    import psutil

    session, found = os.getsid(0), set()
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session:
                found |= {c.laddr.ip for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except (ProcessLookupError, psutil.Error):
            continue
    return sorted(found)


def _simulate(out_path: str) -> None:
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAdam
    from flwr.simulation import run_simulation

    from secagg.adapters.flower_strategy import SecAggStrategy

    server_app = ServerApp()
    report: dict[str, Any] = {}

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        import ray

        report["node_ip"] = ray.util.get_node_ip_address()
        strategy = SecAggStrategy(FedAdam(fraction_evaluate=0.0, min_available_nodes=4), context,
                                  secure_metrics=["train_loss"], max_weight=8, stage_timeout=30.0, poll_interval=0.05)
        result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=2)
        report["arrays"] = {k: v.numpy().tolist() for k, v in result.arrays.items()}
        report["train_metrics"] = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
        report["listening"] = _listening_addresses()
        report["rounds"] = {str(r): {"error_bound": o.result.error_bound, "dropped": list(o.dropped.values()),
                                     "survivors": len(o.survivor_nodes), "weight_sum": o.result.weight_sum,
                                     "protocol": o.result.config.protocol, "stage_seconds": o.stage_seconds}
                            for r, o in strategy.rounds.items()}

    start = time.monotonic()
    run_simulation(server_app=server_app, client_app=make_client_app(), num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1}})
    report["seconds"] = time.monotonic() - start
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    _simulate(sys.argv[1])
