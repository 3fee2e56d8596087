"""secagg_mod's node-side rules that span rounds or compare what server and node compute.

The train message digest both sides bind into the session (canonical: independent of memory layout
and byte order; sensitive to the arrays' order and every name, dtype, shape, value and config entry),
and the one-update-per-model rule: a node that released an update trained from some arrays refuses to
train from them again, in any run of its state directory, and never releases the same update vector
twice, while a round that released nothing leaves it free to.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from secagg import ParameterError  # noqa: E402
from secagg.adapters.flower_node import TRAIN_RECORD, UpdateSettings, make_secagg_mod, train_digests  # noqa: E402
from secagg.adapters.flower_strategy import SecAggStrategy  # noqa: E402

from . import strategy_apps as apps  # noqa: E402
from .localgrid import LocalGrid, stamp_task_identity  # noqa: E402

RUN_ID = 31
NODES = [9_001, 17, 4_242]
RUN_CONFIG = {"secagg-protocol": "secagg", "secagg-max-weight": 8, "secagg-poll-interval": 0.01,
              "secagg-stage-timeout": 5.0}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)


def _content(arrays: dict[str, np.ndarray], config: dict[str, Any] | None = None, **extra: Any) -> RecordDict:
    records: dict[str, Any] = {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                               "config": ConfigRecord(config or {"server-round": 1, "lr": 0.1})}
    return RecordDict(records | extra)


BASE = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.int64)}


def test_the_train_digest_is_canonical() -> None:
    model, digest = train_digests(_content(BASE))
    same = [
        _content({"w": np.asfortranarray(BASE["w"]), "b": BASE["b"]}),  # memory order
        _content({"w": BASE["w"].astype(">f4"), "b": BASE["b"].astype(">i8")}),  # byte order
        _content(BASE, {"lr": 0.1, "server-round": 1}),
        _content(BASE, **{TRAIN_RECORD: ConfigRecord({"round": 9})}),  # the mark is not part of it
    ]
    for content in same:
        assert train_digests(content) == (model, digest)


@pytest.mark.parametrize("arrays, config", [
    (BASE | {"w": BASE["w"] + np.float32(2**-10)}, None),  # one value
    (BASE | {"w": BASE["w"].astype(np.float64)}, None),  # the dtype
    (BASE | {"w": BASE["w"].reshape(4, 3)}, None),  # the shape
    ({"v": BASE["w"], "b": BASE["b"]}, None),  # a name
    ({"b": BASE["b"], "w": BASE["w"]}, None),  # the record's order (to_numpy_ndarrays() is positional)
    (BASE, {"server-round": 1, "lr": 0.0}),  # a config value
    (BASE, {"server-round": 1, "lr": 1}),  # its type (int 1 is not float 1.0)
    (BASE, {"server-round": 1, "lr": 0.1, "seed": b"\x00"}),  # one more entry
])
def test_the_train_digest_changes_with_any_array_or_config_entry(arrays, config) -> None:
    model, digest = train_digests(_content(BASE))
    changed_model, changed = train_digests(_content(arrays, config))
    assert changed != digest and (changed_model == model) is (config is not None)


def test_a_metric_record_is_part_of_the_digest_and_two_array_records_are_refused() -> None:
    assert train_digests(_content(BASE, metrics=MetricRecord({"x": 1.0})))[1] != train_digests(_content(BASE))[1]
    with pytest.raises(ParameterError, match="exactly one ArrayRecord"):
        train_digests(_content(BASE, other=ArrayRecord({"w": Array(BASE["w"])})))


def test_settings_are_checked() -> None:
    for bad in (dict(max_weight=0), dict(max_weight=True), dict(max_weight=2.0), dict(weight_key=""),
                dict(secure_metrics=["a", "a"]), dict(secure_metrics=["num-examples"]), dict(secure_metrics="abc")):
        with pytest.raises(ParameterError):
            make_secagg_mod(**bad)  # type: ignore[arg-type]
    assert UpdateSettings.of("n", ["a"], 3) == UpdateSettings("n", ("a",), 3)


# -- one update per model and run --------------------------------------------------------------------------
def _grid(root: Path, partitions) -> LocalGrid:
    contexts = {NODES[p]: Context(RUN_ID, NODES[p], {"partition-id": p, "secagg-state-dir": str(root / f"node{p}")},
                                  RecordDict(), dict(RUN_CONFIG)) for p in partitions}
    return LocalGrid(apps.make_client_app(True), contexts)


def _train(strategy: SecAggStrategy, grid: LocalGrid, server_round: int, arrays: ArrayRecord) -> list[Message]:
    """FedAvg's train messages (their config differs by round: ``server-round``; the rule is on the arrays)."""
    return grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))


def test_a_node_trains_again_from_the_same_arrays_only_while_it_released_no_update_from_them(tmp_path) -> None:
    grid = _grid(tmp_path, range(3))
    strategy = SecAggStrategy(FedAvg(fraction_evaluate=0.0), Context(RUN_ID, 0, {}, RecordDict(), dict(RUN_CONFIG)),
                              secure_metrics=["train_loss"])
    arrays, calls = apps.initial_arrays(), dict(apps.TRAIN_CALLS)
    # Round 1: every node trains; the server abandons the round before the mask step (nothing released).
    assert not any(r.has_error() for r in _train(strategy, grid, 1, arrays))
    # Round 2, the same arrays: allowed (no update left a node), and this time the secure round runs.
    replies = _train(strategy, grid, 2, arrays)
    assert not any(r.has_error() for r in replies)
    strategy.aggregate_train(2, replies)
    assert strategy.rounds[2].result.weight_sum == 1 + 2 + 3
    assert all(apps.TRAIN_CALLS[p] == calls.get(p, 0) + 2 for p in range(3))
    # Round 3, the same arrays again: every node refuses before training.
    replies = _train(strategy, grid, 3, arrays)
    assert all(r.has_error() and "once" in r.error.reason for r in replies)
    assert all(apps.TRAIN_CALLS[p] == calls.get(p, 0) + 2 for p in range(3))
    assert strategy.aggregate_train(3, replies) == (None, None)
    # Other arrays are fine.
    other = ArrayRecord({k: Array(np.asarray(v.numpy() * 2, dtype=v.numpy().dtype)) for k, v in arrays.items()})
    replies = _train(strategy, grid, 4, other)
    strategy.aggregate_train(4, replies)
    assert strategy.rounds[4].result.weight_sum == 1 + 2 + 3
    # The state directory's released record: two model digests and two update tags (kind byte + 32 bytes each).
    released, key = tmp_path / "node0" / "released", tmp_path / "node0" / "update-tag.key"
    assert stat.S_IMODE(released.stat().st_mode) == 0o600 and len(released.read_bytes()) == 5 + 4 * 33
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert train_digests(RecordDict({"arrays": arrays}))[0] in released.read_bytes()
    assert not list((tmp_path / "node0").glob("*.models"))


def test_the_store_releases_each_vector_once_per_directory_and_erases_only_other_runs_pending_updates(tmp_path) -> None:
    from secagg.adapters.updatestore import PENDING, TAKEN, StoredUpdate, UpdateStore
    from secagg.errors import ProtocolAbort

    vector = np.linspace(-1, 1, 5)
    layout = (("arrays", "w", (5,)),)

    def stored(round_number: int, model: bytes) -> StoredUpdate:
        return StoredUpdate(PENDING, round_number, model, bytes(32), layout, {}, 3, vector.copy())

    run1, same_run = UpdateStore(tmp_path, "run1-node1"), UpdateStore(tmp_path, "run1-node2")
    with run1.locked():
        run1.save(stored(1, b"a" * 32))
    with same_run.locked():
        same_run.save(stored(1, b"c" * 32))
    assert run1.load().status == PENDING  # another node of the same run (a shared directory) is left alone
    taken, weight = run1.take(1)
    assert np.array_equal(taken, vector) and weight == 3
    other_run = UpdateStore(tmp_path, "run2-node7")  # another run and node id, the same directory
    with other_run.locked():
        assert other_run.released(b"a" * 32) and other_run.released(b"b" * 32, vector)
        assert not other_run.released(b"b" * 32, vector + 2**-30)
        other_run.save(stored(1, b"b" * 32))  # a new run's round: run 1's pending updates are erased
    erased = same_run.load()
    assert erased.status == TAKEN and erased.vector.size == 0 and erased.weight == 0
    with pytest.raises(ProtocolAbort, match="once"):  # the same vector, from another model, is not released
        other_run.take(1)
    assert other_run.load().status == TAKEN and other_run.load().vector.size == 0
