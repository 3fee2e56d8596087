"""SecAggStrategy + secagg_mod: Flower's own strategies aggregating secure sums.

In-process tests run ``Strategy.start`` over :class:`~tests.adapters.localgrid.LocalGrid` (one
persistent Context per node, a private state directory each) and compare against the same
unwrapped strategy fed the plain replies of the same ClientApp. The test marked ``flower`` runs
Flower's simulation runtime (Ray) in a child process bound to loopback and bounded in time.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy  # noqa: E402

from secagg import InsufficientParties, MalformedMessage, ParameterError, ProtocolAbort  # noqa: E402
from secagg.adapters import flower as fa  # noqa: E402
from secagg.adapters.flower_strategy import ACK_RECORD, TRAIN_RECORD, SecAggStrategy  # noqa: E402

from . import strategy_apps as apps  # noqa: E402
from .localgrid import LocalGrid, stamp_task_identity  # noqa: E402

RUN_ID = 777
NODES = [9_001, 17, 4_242, 77_777, 23, 500]  # partition i runs on NODES[i]; deliberately unsorted
RUN_CONFIG = {"secagg-protocol": "secagg+", "secagg-max-weight": 8, "secagg-poll-interval": 0.01,
              "secagg-stage-timeout": 5.0}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)


def _grid(root: Path, secure: bool, partitions, run_config=RUN_CONFIG,
          node_config: dict[int, dict[str, Any]] | None = None, mod_on_train_only: bool = False) -> LocalGrid:
    contexts = {}
    for p in partitions:
        config = {"partition-id": p, "secagg-state-dir": str(root / f"node{p}")} | (node_config or {}).get(p, {})
        contexts[NODES[p]] = Context(RUN_ID, NODES[p], config, RecordDict(), dict(run_config))
    return LocalGrid(apps.make_client_app(secure, mod_on_train_only), contexts)


def _server(run_config=RUN_CONFIG) -> Context:
    return Context(RUN_ID, 0, {}, RecordDict(), dict(run_config))


def _wrapped(inner: Strategy, run_config=RUN_CONFIG, **options: Any) -> SecAggStrategy:
    return SecAggStrategy(inner, _server(run_config), secure_metrics=["train_loss"], **options)


def _assert_close(got: ArrayRecord, expected: ArrayRecord, tolerance: float) -> None:
    assert list(got.keys()) == list(expected.keys())
    for key, array in expected.items():
        mine, theirs = got[key].numpy(), array.numpy()
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert np.abs(mine.astype(np.float64) - theirs).max() <= tolerance, key
    moved = max(np.abs(got[k].numpy() - v.numpy()).max() for k, v in apps.initial_arrays().items())
    assert moved > 0.01  # the global model was trained: the comparison is not between two copies of the start


def _bound(strategy: SecAggStrategy) -> float:
    """Rounding of every round so far (each round starts from arrays already off by the earlier ones),
    plus float32 rounding of the arrays (|values| < 4, so 1e-6 covers a few ulps)."""
    return sum(o.result.error_bound for o in strategy.rounds.values()) + 1e-6


def _plain(inner: Strategy, root: Path, partitions, rounds: int = 1):
    return inner.start(grid=_grid(root, False, partitions), initial_arrays=apps.initial_arrays(), num_rounds=rounds)


def _secure(strategy: SecAggStrategy, grid: LocalGrid, rounds: int = 1):
    return strategy.start(grid=grid, initial_arrays=apps.initial_arrays(), num_rounds=rounds)


# -- FedAvg and FedAdam give the plain strategy's result, within the quantisation bound ------------------
@pytest.mark.parametrize("protocol, mod_on_train_only",
                         [("secagg", False), ("secagg+", False), ("secagg+", True), ("ckks", False)])
def test_fedavg_through_the_wrapper_equals_plain_fedavg(tmp_path, protocol, mod_on_train_only) -> None:
    run_config = RUN_CONFIG | {"secagg-protocol": protocol}
    wrapped = _wrapped(FedAvg(), run_config)
    grid = _grid(tmp_path / "s", True, range(6), run_config, mod_on_train_only=mod_on_train_only)
    secure = _secure(wrapped, grid, rounds=2)
    plain = _plain(FedAvg(), tmp_path / "p", range(6), rounds=2)
    assert {o.result.config.protocol for o in wrapped.rounds.values()} == {protocol}
    if protocol != "ckks":
        assert wrapped.rounds[1].result.config.degree == (4 if protocol == "secagg+" else None)
    _assert_close(secure.arrays, plain.arrays, _bound(wrapped))
    for r in (1, 2):
        mine, theirs = secure.train_metrics_clientapp[r], plain.train_metrics_clientapp[r]
        assert set(mine.keys()) == {"train_loss"} and "private_note" in theirs  # unnamed metrics stay home
        assert abs(mine["train_loss"] - theirs["train_loss"]) <= wrapped.rounds[r].result.error_bound + 1e-12
        assert dict(secure.evaluate_metrics_clientapp[r]) == pytest.approx(dict(plain.evaluate_metrics_clientapp[r]))


@pytest.mark.parametrize("stage", ["train", "share", "mask"])
def test_a_node_failing_in_a_round_leaves_the_survivors_weighted_average(tmp_path, stage) -> None:
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    secure = _secure(wrapped, _grid(tmp_path / "s", True, range(6), node_config={2: {"drop-at": stage}}))
    plain = _plain(FedAvg(fraction_evaluate=0.0), tmp_path / "p", [0, 1, 3, 4, 5])
    outcome = wrapped.rounds[1]
    assert outcome.result.weight_sum == 1 + 2 + 4 + 5 + 6 and NODES[2] not in outcome.survivor_nodes
    assert (outcome.dropped == {NODES[2]: stage}) == (stage != "train")  # at train it never acknowledged
    _assert_close(secure.arrays, plain.arrays, _bound(wrapped))


def test_too_few_survivors_aggregate_nothing(tmp_path) -> None:
    drops = {p: {"drop-at": "mask"} for p in range(5)}
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    result = _secure(wrapped, _grid(tmp_path, True, range(6), node_config=drops))
    assert wrapped.rounds == {} and result.train_metrics_clientapp == {} and len(result.arrays) == 0


def test_a_released_sum_the_wrapper_cannot_average_aggregates_nothing_and_the_run_goes_on(tmp_path, monkeypatch) -> None:
    """Any SecAggError while turning the released sum into the inner strategy's reply (here: a sum whose
    weight is not positive) ends the round with nothing aggregated, never Strategy.start."""
    from secagg.results import WeightedSum

    original = WeightedSum.average_vector
    refused = {1}

    def average_vector(result: WeightedSum):
        if refused:
            refused.pop()
            raise ProtocolAbort("the aggregated weight sum is not positive")
        return original(result)

    monkeypatch.setattr(WeightedSum, "average_vector", average_vector)
    grid = _grid(tmp_path, True, range(4))
    train: list[Message] = []
    grid.tamper = lambda message, reply: (train.append(reply) if message.metadata.message_type == MessageType.TRAIN
                                          else None) or reply
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    result = _secure(wrapped, grid, rounds=2)
    assert wrapped.rounds == {} and result.train_metrics_clientapp == {} and len(train) == 8
    # Round 2 did run. The model was unchanged, and every node had released an update trained from it
    # in round 1, so each refused to train from it again (one update per model and run).
    assert all(r.has_error() and "once" in r.error.reason for r in train[4:])


def test_fedadam_through_the_wrapper_matches_plain_fedadam(tmp_path) -> None:
    wrapped = _wrapped(FedAdam(fraction_evaluate=0.0))
    secure = _secure(wrapped, _grid(tmp_path / "s", True, range(6)), rounds=2)
    plain = _plain(FedAdam(fraction_evaluate=0.0), tmp_path / "p", range(6), rounds=2)
    # FedAdam's step eta_t * m / (sqrt(v) + tau) moves by at most ~0.5x an error in the averaged update
    # while |update| >= 0.05 (the test's updates), so each round's rounding bound carries over at most 1x.
    _assert_close(secure.arrays, plain.arrays, _bound(wrapped))
    assert isinstance(wrapped.strategy, FedAdam) and wrapped.strategy.m_t is not None  # its state advanced


# -- what the server sees ---------------------------------------------------------------------------------
def test_the_server_receives_no_arrays_and_no_metrics_of_any_node(tmp_path) -> None:
    grid = _grid(tmp_path, True, range(6))
    seen: list[tuple[str, Message]] = []
    grid.tamper = lambda message, reply: seen.append((message.metadata.message_type, reply)) or reply
    _secure(_wrapped(FedAvg(fraction_evaluate=0.0)), grid)
    train = [reply for kind, reply in seen if kind == MessageType.TRAIN]
    assert len(train) == 6 and all(set(r.content.keys()) == {ACK_RECORD} for r in train)
    assert all(not r.content.metric_records for _, r in seen)
    payloads = b"".join(fa.unpack(r.content).payload for kind, r in seen if kind == fa.MESSAGE_TYPE)
    assert len(payloads) > 6 * 13 * 4  # the masked vectors did travel
    for p in range(6):
        weight = apps.initial_arrays()["layer.weight"].numpy()
        trained = (weight + apps.partition_delta(p, 1, "layer.weight", weight.shape)).astype(np.float32)
        assert trained.tobytes()[:16] not in payloads


def test_an_acknowledgement_carrying_arrays_is_left_out(tmp_path) -> None:
    grid = _grid(tmp_path / "s", True, range(6))

    def leak(message: Message, reply: Message) -> Message:
        if message.metadata.message_type == MessageType.TRAIN and message.metadata.dst_node_id == NODES[1]:
            reply.content["arrays"] = apps.initial_arrays()
        return reply

    grid.tamper = leak
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    secure = _secure(wrapped, grid)
    assert NODES[1] not in wrapped.rounds[1].nodes.values()
    _assert_close(secure.arrays, _plain(FedAvg(fraction_evaluate=0.0), tmp_path / "p", [0, 2, 3, 4, 5]).arrays,
                  _bound(wrapped))


@pytest.mark.parametrize("weight, counted", [(2.5, 0), (0, 0), (-3, 0), (9, 8), (10**12, 8), (3.0, 3)])
def test_a_weight_is_refused_unless_an_integer_from_1_and_clipped_to_the_nodes_max_weight(tmp_path, weight, counted) -> None:
    """Non-integers and weights below 1 are refused (a fixed rule, not a server's bound; the error names no
    value); above the node's own max weight (8) the weight is clipped to it, never refused."""
    grid = _grid(tmp_path, True, range(6), node_config={4: {"weight": weight}})
    reasons: list[str] = []
    grid.tamper = lambda message, reply: (reasons.append(reply.error.reason) if reply.has_error() else None) or reply
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    _secure(wrapped, grid)
    assert (NODES[4] in wrapped.rounds[1].nodes.values()) is bool(counted)
    assert wrapped.rounds[1].result.weight_sum == 1 + 2 + 3 + 4 + 6 + counted
    assert len(reasons) == (0 if counted else 1) and not any(str(weight) in r for r in reasons), reasons


def test_a_node_refuses_an_encoding_contradicting_its_run_config(tmp_path) -> None:
    grid = _grid(tmp_path, True, range(6))
    grid.contexts[NODES[3]].run_config["secagg-clip-bound"] = 4.0
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0), clip_bound=2.0)
    _secure(wrapped, grid)
    assert NODES[3] not in wrapped.rounds[1].nodes.values() and len(wrapped.rounds[1].nodes) == 5


@pytest.mark.parametrize("server", [{"max_weight": 4}, {"max_weight": 9}, {"secure_metrics": []},
                                    {"secure_metrics": ["train_loss", "private_note"]}, {"weighted_by_key": "w"}])
def test_a_node_with_other_settings_than_the_server_refuses_before_training(tmp_path, server) -> None:
    """Weight key, secure metrics and max weight are the node's own: the server cannot choose them."""
    grid = _grid(tmp_path, True, range(3))
    inner = FedAvg(fraction_evaluate=0.0, weighted_by_key=server.pop("weighted_by_key", "num-examples"))
    options = {"secure_metrics": ["train_loss"]} | server
    wrapped = SecAggStrategy(inner, _server(), **options)
    calls = dict(apps.TRAIN_CALLS)
    result = _secure(wrapped, grid)
    assert wrapped.rounds == {} and len(result.arrays) == 0 and apps.TRAIN_CALLS == calls
    assert not list(tmp_path.glob("node*/*.update"))


# -- the node's rules -------------------------------------------------------------------------------------
def _train_message(strategy: SecAggStrategy, grid: LocalGrid, round_number: int, arrays: ArrayRecord) -> Message:
    messages = list(strategy.configure_train(round_number, arrays, ConfigRecord(), grid))
    return next(m for m in messages if m.metadata.dst_node_id == NODES[0])


def _update_file(root: Path) -> Path:
    return root / "node0" / f"run{RUN_ID}-node{NODES[0]}.update"


def test_a_replayed_train_message_trains_and_stores_once(tmp_path) -> None:
    grid = _grid(tmp_path, True, [0, 1])
    context, wrapped = grid.contexts[NODES[0]], _wrapped(FedAvg())
    message = _train_message(wrapped, grid, 3, apps.initial_arrays())
    calls = apps.TRAIN_CALLS.get(0, 0)
    first = grid.app(message, context)
    stored = _update_file(tmp_path).read_bytes()
    again = grid.app(message, context)
    assert apps.TRAIN_CALLS[0] == calls + 1 and _update_file(tmp_path).read_bytes() == stored
    assert dict(again.content[ACK_RECORD]) == dict(first.content[ACK_RECORD])
    other = ArrayRecord({k: Array(np.asarray(v.numpy() + 1)) for k, v in apps.initial_arrays().items()})
    for round_number, arrays in ((3, other), (2, apps.initial_arrays())):  # same round, other arrays; an older round
        with pytest.raises(ProtocolAbort):
            grid.app(_train_message(wrapped, grid, round_number, arrays), context)
    assert apps.TRAIN_CALLS[0] == calls + 1 and _update_file(tmp_path).read_bytes() == stored
    assert stat.S_IMODE(_update_file(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(_update_file(tmp_path).parent.stat().st_mode) == 0o700


def test_an_update_is_masked_once_and_erased_before(tmp_path) -> None:
    grid = _grid(tmp_path, True, range(4))
    wrapped = _wrapped(FedAvg(fraction_evaluate=0.0))
    _secure(wrapped, grid)
    first = wrapped.rounds[1]
    delta = apps.partition_delta(0, 1, "layer.bias", (4,))
    assert delta.tobytes() not in _update_file(tmp_path).read_bytes()  # erased at the mask step
    config, stored = first.result.config, _update_file(tmp_path).read_bytes()
    for round_number in (1, 2):  # a second round 1 (refused by every node's record), a round never trained for
        with pytest.raises(InsufficientParties):
            fa.run_round(grid, NODES[:4], config, round_number=round_number,
                         context=fa.round_context(RUN_ID, round_number, run_config=RUN_CONFIG), stage_timeout=5.0,
                         poll_interval=0.01)
        assert _update_file(tmp_path).read_bytes() == stored
    # A retried train message of the finished round is acknowledged without training or storing.
    message = _train_message(wrapped, grid, 1, apps.initial_arrays())
    calls = apps.TRAIN_CALLS[0]
    assert ACK_RECORD in grid.app(message, grid.contexts[NODES[0]]).content
    assert _update_file(tmp_path).read_bytes() == stored and apps.TRAIN_CALLS[0] == calls


def test_a_train_message_without_the_secure_mark_is_refused(tmp_path) -> None:
    grid = _grid(tmp_path, True, [0, 1])
    (message, _) = FedAvg().configure_train(1, apps.initial_arrays(), ConfigRecord(), grid)
    with pytest.raises(ProtocolAbort, match="secure aggregation"):
        grid.app(message, grid.contexts[message.metadata.dst_node_id])
    assert not any((tmp_path / "node0").glob("*.update"))


def test_evaluate_messages_pass_through_untouched(tmp_path) -> None:
    grid = _grid(tmp_path, True, [0, 1])
    for message in FedAvg().configure_evaluate(1, apps.initial_arrays(), ConfigRecord(), grid):
        reply = grid.app(message, grid.contexts[message.metadata.dst_node_id])
        partition = NODES.index(message.metadata.dst_node_id)
        assert dict(reply.content["metrics"]) == {"eval_loss": 1.0 + partition, "num-examples": partition + 1}


def test_a_reply_missing_a_secure_metric_is_refused_by_every_node(tmp_path) -> None:
    wrapped = SecAggStrategy(FedAvg(fraction_evaluate=0.0), _server(), secure_metrics=["train_loss", "accuracy"])
    grid = _grid(tmp_path, True, range(6))
    grid.app = apps.make_client_app(True, secure_metrics=["train_loss", "accuracy"])  # the train function has none
    result = _secure(wrapped, grid)
    assert wrapped.rounds == {} and result.train_metrics_clientapp == {}
    assert not list(tmp_path.glob("node*/*.update"))  # nothing was stored


def test_a_corrupt_update_file_is_refused_with_a_secagg_error(tmp_path) -> None:
    grid = _grid(tmp_path, True, [0, 1])
    message = _train_message(_wrapped(FedAvg()), grid, 1, apps.initial_arrays())
    grid.app(message, grid.contexts[NODES[0]])
    data = bytearray(_update_file(tmp_path).read_bytes())
    data[82:92] = b"\xff" * 10  # inside the layout (after magic, version, status, round and two digests)
    _update_file(tmp_path).write_bytes(bytes(data))
    with pytest.raises(MalformedMessage):
        grid.app(_train_message(_wrapped(FedAvg()), grid, 2, apps.initial_arrays()), grid.contexts[NODES[0]])


def _mark_edit(key: str, value: Any):
    return lambda record: record.__setitem__(key, value)


@pytest.mark.parametrize("edit", [
    _mark_edit("extra", 1),
    lambda record: record.pop("metrics"),
    _mark_edit("version", 1),
    _mark_edit("version", 3),
    _mark_edit("round", -1),
    _mark_edit("round", 1.0),
    _mark_edit("weight-key", ""),
    _mark_edit("metrics", "train_loss"),
    _mark_edit("metrics", ["train_loss", "train_loss"]),
    _mark_edit("metrics", ["num-examples"]),
    _mark_edit("secagg-clip-bound", 0.0),
    _mark_edit("secagg-clip-bound", True),
    _mark_edit("secagg-max-weight", 0),
    _mark_edit("secagg-fractional-bits", "18"),
])
def test_a_malformed_mark_is_refused_before_training(tmp_path, edit) -> None:
    grid = _grid(tmp_path, True, [0, 1])
    message = _train_message(_wrapped(FedAvg()), grid, 1, apps.initial_arrays())
    mark = ConfigRecord(dict(message.content[TRAIN_RECORD]))
    edit(mark)
    message.content = RecordDict({**message.content, TRAIN_RECORD: mark})
    calls = apps.TRAIN_CALLS.get(0, 0)
    with pytest.raises(MalformedMessage):
        grid.app(message, grid.contexts[NODES[0]])
    assert apps.TRAIN_CALLS.get(0, 0) == calls


def test_the_wrapper_refuses_an_inner_strategy_sending_different_arrays(tmp_path) -> None:
    class Personalised(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            messages[0].content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2))}), "config": config})
            return messages

    with pytest.raises(ParameterError, match="one ArrayRecord"):
        _wrapped(Personalised()).configure_train(1, apps.initial_arrays(), ConfigRecord(), _grid(tmp_path, True, [0, 1]))


def test_options_are_checked() -> None:
    with pytest.raises(ParameterError):
        SecAggStrategy(FedAvg(), _server(), secure_metrics=["num-examples"])
    with pytest.raises(ParameterError):
        SecAggStrategy(FedAvg(), _server(), stage_timeout=0)


# -- Flower's simulation runtime (Ray) ---------------------------------------------------------------------
def _stop_session(leader: int) -> None:
    """Kill what is left of the child's session (the child and any Ray process it started)."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == leader:
                proc.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue


@pytest.mark.flower
@pytest.mark.slow
def test_fedadam_over_secagg_plus_in_flowers_simulation_runtime(tmp_path) -> None:
    """4 SuperNodes in Ray actors, partition 3 crashes at every mask step; compared with plain FedAdam."""
    out = tmp_path / "report.json"
    env = os.environ | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray then takes 127.0.0.1 as the node address and binds it
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),  # the nodes' default state directory
        "SECAGG_TEST_DROP": "3:mask",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    start = time.monotonic()
    with open(tmp_path / "simulation.log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "tests.adapters.strategy_apps", str(out)], cwd=REPO,
                                 env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=150)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            _stop_session(child.pid)
    assert child.returncode == 0, (tmp_path / "simulation.log").read_text()[-3000:]
    report = json.loads(out.read_text())
    assert report["node_ip"] == "127.0.0.1"
    assert report["listening"] and set(report["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1"}, report["listening"]
    for r in ("1", "2"):
        assert report["rounds"][r]["dropped"] == ["mask"] and report["rounds"][r]["survivors"] == 3
        assert report["rounds"][r]["weight_sum"] == 1 + 2 + 3 and report["rounds"][r]["protocol"] == "secagg+"
    plain = FedAdam(fraction_evaluate=0.0).start(grid=_grid(tmp_path / "p", False, [0, 1, 2]),
                                                initial_arrays=apps.initial_arrays(), num_rounds=2)
    bound = sum(report["rounds"][r]["error_bound"] for r in ("1", "2")) + 1e-6
    for key, array in plain.arrays.items():
        assert np.abs(np.asarray(report["arrays"][key]) - array.numpy()).max() <= bound, key
    for r in (1, 2):
        assert abs(report["train_metrics"][str(r)]["train_loss"] - plain.train_metrics_clientapp[r]["train_loss"]) <= bound
    print(f"\nrun_simulation with SecAggStrategy(FedAdam): {report['seconds']:.1f}s inside, "
          f"{time.monotonic() - start:.1f}s with the interpreter; stages {report['rounds']['1']['stage_seconds']}")
