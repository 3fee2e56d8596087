"""Regressions for the second red-team review of the Flower integration (attacks on the first fixes).

The adversary is the Flower server side (ServerApp, SuperLink operator: it writes the run config,
picks the run ids and builds any message it likes). Each test reproduces one attack (R1: CKKS with
one contributor; R2: a run config served differently to one node; R3/R4: the same model re-sent in
another dtype or another run; R5: arrays in another order; R6: an abandoned run's plain update;
R7: fedlm DP releases past the plan) and asserts that it now fails.
"""

from __future__ import annotations

import stat
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from secagg import SecAggError  # noqa: E402
from secagg.adapters import flower as fa  # noqa: E402
from secagg.adapters.flower_node import _layout, _template, train_digests  # noqa: E402
from secagg.adapters.flower_strategy import ACK_RECORD, SecAggStrategy, make_secagg_mod, secagg_query  # noqa: E402

from . import strategy_apps as apps  # noqa: E402
from .localgrid import LocalGrid, stamp_task_identity  # noqa: E402

RUN_ID = 4_711
NODES = [9_001, 17, 4_242, 77_777]
RUN_CONFIG = {"secagg-protocol": "secagg", "secagg-max-weight": 8, "secagg-poll-interval": 0.01,
              "secagg-stage-timeout": 5.0, "secagg-clip-bound": 4.0}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)


def _contexts(root: Path, run_id: int = RUN_ID, run_config: dict[str, Any] = RUN_CONFIG,
              per_node: dict[int, dict[str, Any]] | None = None) -> dict[int, Context]:
    per_node = per_node or {}
    return {node: Context(run_id, node, {"partition-id": p, "secagg-state-dir": str(root / f"node{p}")}, RecordDict(),
                          dict(run_config) | per_node.get(node, {})) for p, node in enumerate(NODES)}


def _strategy(run_id: int = RUN_ID, run_config: dict[str, Any] = RUN_CONFIG, **settings: Any) -> SecAggStrategy:
    return SecAggStrategy(FedAvg(fraction_evaluate=0.0), Context(run_id, 0, {}, RecordDict(), dict(run_config)),
                          **(apps.SETTINGS | settings))


def _train(strategy: SecAggStrategy, grid: LocalGrid, server_round: int, arrays: ArrayRecord,
           nodes: list[int] | None = None, edit=None) -> tuple[dict[int, Message], Message]:
    """Marked train messages (``edit(message)`` may rewrite one), sent to ``nodes``; replies and the message
    whose digest the server binds (the first one it built, unedited)."""
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({"server-round": 1}), grid))
    for message in messages:
        message.content["config"] = ConfigRecord({"server-round": 1})
    bound = messages[0]
    digest = train_digests(bound.content)[1]
    messages = [m for m in messages if nodes is None or m.metadata.dst_node_id in nodes]
    if edit is not None:
        messages = [edit(m) for m in messages]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    return replies, _Bound(digest)


class _Bound:
    def __init__(self, digest: bytes) -> None:
        self.digest = digest


def _secure(grid: LocalGrid, nodes: list[int], arrays: ArrayRecord, round_number: int, bound: _Bound,
            run_config: dict[str, Any] = RUN_CONFIG, run_id: int = RUN_ID) -> fa.FlowerRound:
    layout = _layout(arrays, apps.SETTINGS["secure_metrics"])
    config = fa.session_config(run_config, len(nodes), _template(layout))
    return fa.run_round(grid, nodes, config, round_number=round_number,
                        context=fa.round_context(run_id, round_number, bound.digest, run_config), stage_timeout=5.0,
                        poll_interval=0.01)


def _app(train) -> ClientApp:
    app = ClientApp(mods=[make_secagg_mod(**apps.SETTINGS)])
    app.train()(train)
    app.query("secagg")(secagg_query)
    return app


def _reply(message: Message, trained: dict[str, np.ndarray], partition: int) -> Message:
    metrics = MetricRecord({"num-examples": partition + 1, "train_loss": 1.0 + partition})
    return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in trained.items()}), "metrics": metrics}),
                   reply_to=message)


def _delta(partition: int, shape) -> np.ndarray:
    """A deterministic update, exactly representable in float32."""
    return np.full(shape, 0.125 * (partition + 1), dtype=np.float32) * (-1) ** partition


TRAINED: Counter[int] = Counter()
"""Calls of float32_model_train per partition (LocalGrid runs the app in this process)."""


def float32_model_train(message: Message, context: Context) -> Message:
    """A deterministic train function of a float32 model: it loads the arrays into float32 parameters
    (as torch's load_state_dict does), trains, returns its float32 state."""
    partition = int(context.node_config["partition-id"])
    TRAINED[partition] += 1
    params = {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in message.content["arrays"].items()}
    lr = float(context.run_config.get("lr", 1.0))
    return _reply(message, {k: (v + lr * _delta(partition, v.shape)).astype(np.float32) for k, v in params.items()},
                  partition)


def _arrays(dtype=np.float32) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.linspace(-1, 1, 6).astype(np.float32).astype(dtype)),
                        "v": Array(np.linspace(0, 1, 6).astype(np.float32).astype(dtype))})


def _weighted(partitions) -> np.ndarray:
    return sum((p + 1) * _delta(p, (6,)).astype(np.float64) for p in partitions)


# =====================================================================================================
# R1 (HIGH). The corrupt-fraction floor is bypassed by switching the protocol: a run config (written by the
# server side) saying secagg-protocol = "ckks" and secagg-ckks-min-contributors = 1 makes an honest key
# holder decrypt a "sum" of one upload. The server drops every other upload (a dropout it claims) and reads
# one node's update in the clear. No node-config floor applies to CKKS (admit() is for SecAggConfig only).
# =====================================================================================================
CKKS_CONFIG = {"secagg-protocol": "ckks", "secagg-ckks-min-contributors": 1, "secagg-max-weight": 8,
               "secagg-clip-bound": 4.0}


def test_ckks_min_contributors_one_releases_one_nodes_update(tmp_path) -> None:
    grid = LocalGrid(_app(float32_model_train), _contexts(tmp_path, run_config=CKKS_CONFIG))
    strategy = _strategy(run_config=CKKS_CONFIG)
    replies, bound = _train(strategy, grid, 1, _arrays())
    assert all(ACK_RECORD in r.content for r in replies.values())
    victim = min(NODES)  # client 0: a key holder; any node would do with a larger committee
    victim_partition = NODES.index(victim)

    def drop_uploads(message: Message, reply: Message) -> Message:
        if message.metadata.dst_node_id != victim and fa.unpack(message.content).step == "upload":
            return Message(Error(2, "dropped"), reply_to=message)  # the server claims these uploads never came
        return reply

    grid.tamper = drop_uploads
    try:
        outcome = _secure(grid, NODES, _arrays(), 1, bound, run_config=CKKS_CONFIG)
    except SecAggError:
        return  # fixed: no node joins such a session, or no sum of one input is decrypted
    weighted = outcome.result.weighted_sum
    leaked = np.allclose(np.asarray(weighted)[:12], np.concatenate([_weighted([victim_partition])] * 2), atol=1e-3)
    assert len(outcome.result.survivors) >= 2 and not leaked, (
        f"the server decrypted node {victim}'s update alone: {np.asarray(weighted)[:6]}")


# =====================================================================================================
# R2 (MEDIUM-HIGH). The model-inconsistency attack through the run config: the session binds the train
# message (arrays + train config) but not the run config, which the SuperLink serves to each SuperNode
# (GetRun) and a hostile operator can serve differently per node. Flower's templates read training
# hyperparameters from it (context.run_config["lr"]). Everyone but the victim gets lr = 0: their updates
# vanish, the round completes with all nodes, and the released sum is the victim's update.
# =====================================================================================================
def test_a_run_config_served_differently_to_one_node_is_another_session(tmp_path) -> None:
    victim = NODES[2]
    contexts = _contexts(tmp_path, per_node={n: {"lr": 1.0 if n == victim else 0.0} for n in NODES})
    grid = LocalGrid(_app(float32_model_train), contexts)
    replies, bound = _train(_strategy(), grid, 1, _arrays())
    assert all(ACK_RECORD in r.content for r in replies.values())
    try:
        outcome = _secure(grid, NODES, _arrays(), 1, bound)
    except SecAggError:
        return
    sum_w = np.asarray(outcome.result.weighted_sum)[:6]
    assert victim not in outcome.survivor_nodes, (
        f"all nodes summed; the sum is the victim's update x weight: {sum_w} vs {_weighted([2])}")


# =====================================================================================================
# R3 (MEDIUM; bypasses the F5 fix). "One update per model" is keyed on the digest of the arrays *as sent*,
# dtype included. The same model re-sent as float64 has another digest, while a float32 model loads it into
# the very same parameters: a deterministic train function gives a bit-identical update, which the server
# sums once with and once without the victim, in one run.
# =====================================================================================================
def test_the_same_update_from_the_model_resent_as_float64_is_not_released_again(tmp_path) -> None:
    grid = LocalGrid(_app(float32_model_train), _contexts(tmp_path))
    strategy, victim = _strategy(), NODES[1]
    _, bound = _train(strategy, grid, 1, _arrays(np.float32))
    first = _secure(grid, NODES, _arrays(), 1, bound)
    rest = [n for n in NODES if n != victim]
    assert first.result.survivors and len(first.survivor_nodes) == len(NODES)
    assert train_digests(RecordDict({"arrays": _arrays(np.float32)}))[0] != \
        train_digests(RecordDict({"arrays": _arrays(np.float64)}))[0]  # the model-digest rule alone lets it in
    replies, _ = _train(strategy, grid, 2, _arrays(np.float64), nodes=rest)
    # Each node trained, found the very vector it released in round 1 (its node-local HMAC tag) and refused.
    assert {n for n, r in replies.items() if r.has_error()} == set(rest), "an identical update was stored again"
    key = tmp_path / "node0" / "update-tag.key"
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert all(key.read_bytes().hex() not in r.error.reason for r in replies.values())


# =====================================================================================================
# R4 (MEDIUM; the F5 fix's scope). The released-model digests are kept per run (run<id>-node<id>.models),
# and the SuperLink operator starts runs at will: the same model in a new run, without the victim, gives
# the same deterministic updates of everyone else; the difference of the two sums is the victim's update.
# =====================================================================================================
def test_the_same_model_in_a_new_run_is_refused_by_the_state_directory(tmp_path, monkeypatch) -> None:
    victim = NODES[3]
    grid = LocalGrid(_app(float32_model_train), _contexts(tmp_path))
    _, bound = _train(_strategy(), grid, 1, _arrays())
    first = _secure(grid, NODES, _arrays(), 1, bound)
    run2 = RUN_ID + 1
    stamp_task_identity(monkeypatch, run2)
    rest = [n for n in NODES if n != victim]
    grid2 = LocalGrid(grid.app, _contexts(tmp_path, run_id=run2))  # the same nodes and state directories
    assert len(first.survivor_nodes) == len(NODES)
    calls = dict(TRAINED)
    replies, _ = _train(_strategy(run_id=run2), grid2, 1, _arrays(), nodes=rest)
    assert {n for n, r in replies.items() if r.has_error()} == set(rest), "a node trained from the model again"
    assert TRAINED == calls  # refused before training, by the state directory's released-model digests


# =====================================================================================================
# R5 (MEDIUM, app-dependent). The model digest sorts the arrays by name, but an ArrayRecord is ordered and
# Flower's ArrayRecord.to_numpy_ndarrays() (the classic set_weights(net, arrays) pattern) is positional.
# Swapping two same-shaped arrays for the victim keeps the digest (same session) while the victim trains
# from another model than the rest: the model-inconsistency attack the binding was meant to stop.
# =====================================================================================================
def positional_train(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    names = ["w", "v"]  # the app's own parameter order (its net.state_dict())
    values = message.content["arrays"].to_numpy_ndarrays()
    params = dict(zip(names, (np.asarray(v, dtype=np.float32) for v in values)))
    return _reply(message, {k: v + _delta(partition, v.shape) for k, v in params.items()}, partition)


def test_a_node_sent_the_arrays_in_another_order_drops_out_of_the_session(tmp_path) -> None:
    victim = NODES[0]
    grid = LocalGrid(_app(positional_train), _contexts(tmp_path))

    def swap(message: Message) -> Message:
        if message.metadata.dst_node_id == victim:
            arrays = message.content["arrays"]
            swapped = ArrayRecord({"v": arrays["v"], "w": arrays["w"]})
            message.content = RecordDict({**message.content, "arrays": swapped})
        return message

    replies, bound = _train(_strategy(), grid, 1, _arrays(), edit=swap)
    assert all(ACK_RECORD in r.content for r in replies.values())
    outcome = _secure(grid, NODES, _arrays(), 1, bound)
    assert victim not in outcome.survivor_nodes, "the victim trained from another model and stayed in the session"


# =====================================================================================================
# R6 (LOW; F6's fix covers the round store only). A run abandoned after training leaves the node's plain,
# unmasked update in run<id>-node<id>.update for good: starting a round of another run closes the sibling
# round records, not the sibling update files.
# =====================================================================================================
def test_a_new_runs_update_erases_an_abandoned_runs_plain_update(tmp_path, monkeypatch) -> None:
    from secagg.adapters.updatestore import PENDING, UpdateStore

    grid = LocalGrid(_app(float32_model_train), _contexts(tmp_path))
    _train(_strategy(), grid, 1, _arrays())  # run 1 is abandoned here: no secure round
    run2 = RUN_ID + 1
    stamp_task_identity(monkeypatch, run2)
    grid2 = LocalGrid(grid.app, _contexts(tmp_path, run_id=run2))
    shifted = ArrayRecord({k: Array(v.numpy() + 1) for k, v in _arrays().items()})
    _, bound = _train(_strategy(run_id=run2), grid2, 1, shifted)
    _secure(grid2, NODES, shifted, 1, bound, run_id=run2)
    left = UpdateStore(tmp_path / "node0", f"run{RUN_ID}-node{NODES[0]}").load()
    assert left is None or left.status != PENDING, "run 1's plain update is still on the node's disk"


# =====================================================================================================
# R7 (MEDIUM, fedlm --engine flower --dp-epsilon). The node derives the DP encoding itself, but the privacy
# budget is spent and checked by the server only (fedlm.rounds.federate stops before epsilon passes E).
# A hostile ServerApp just keeps sending rounds -- here the very same global state again -- and every node
# adds fresh noise to a fresh update each time: the releases compose past the planned (E, delta), and
# averaging them strips the noise. The node keeps no count of the DP rounds it took part in.
# (The same node also trains again from a global state it already released an update from: the
# "one update per model" rule of SecAggStrategy is not fedlm's.)
# =====================================================================================================
def test_fedlm_nodes_refuse_dp_rounds_beyond_the_planned_budget(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    from fedlm.backends import make_backend
    from fedlm.flower_app import make_client_app as fedlm_client_app, secagg_settings
    from fedlm.flower_engine import FlowerRunner, write_workdir
    from fedlm.loop import build_model, setup
    from fedlm.model import uploaded_state
    from fedlm.progress import RunProgress
    from tests.fedlm.helpers import tiny_config

    cfg = tiny_config(tmp_path, engine="flower", clients=4, clients_per_round=4, dropout=0.0, rounds=1,
                      dp_epsilon=50.0, mode="prompt")
    out = Path(cfg.out)
    prepared = setup(cfg, out, RunProgress())
    model, _ = build_model(cfg, prepared, out, RunProgress())
    workdir = out / "flower"
    write_workdir(cfg, model, workdir)
    contexts = {node: Context(RUN_ID, node, {"partition-id": p}, RecordDict(), {}) for p, node in enumerate(NODES)}
    grid = LocalGrid(fedlm_client_app(workdir), contexts)
    max_weight = max(c.num_examples for c in prepared.clients)
    state = uploaded_state(model, cfg)
    backend = make_backend(cfg, max_weight, state)
    runner = FlowerRunner(grid, cfg, secagg_settings(cfg, max_weight), RUN_ID, stage_timeout=10.0, backend=backend)
    planned = cfg.resolved_dp_rounds
    released = 0
    for rnd in range(1, planned + 4):  # the same global state every time
        outcome = runner.round({k: v.clone() for k, v in state.items()}, rnd, [0, 1, 2, 3], {})
        released += outcome.result is not None
    assert released <= planned, f"{released} DP releases of one model; the plan covers {planned}"
