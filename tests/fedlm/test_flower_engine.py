"""``fedlm run --engine flower``: fedlm's server loop as a Flower ServerApp, one client per SuperNode.

The fast tests drive :func:`fedlm.flower_engine.serve` over the in-process :class:`LocalGrid` (the
ClientApp runs in this process, messages untouched); the tests marked ``flower`` run the CLI on
Flower's simulation runtime (Ray) and on a real local deployment (SuperLink + SuperNodes on 127.0.0.1),
each in its own process, bounded in time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402

from fedlm.errors import InputError  # noqa: E402
from fedlm.flower_app import make_client_app  # noqa: E402
from fedlm.flower_engine import RESULT_FILE, _compare, serve, write_workdir  # noqa: E402
from fedlm.loop import build_model, setup  # noqa: E402
from fedlm.progress import RunProgress  # noqa: E402
from tests.adapters.localgrid import LocalGrid, stamp_task_identity  # noqa: E402
from tests.fedlm.helpers import tiny_config  # noqa: E402

RUN_ID = 77
NODES = [9001, 9002, 9003, 9004]
REPO = Path(__file__).resolve().parents[2]


def _workdir(tmp_path: Path, **overrides: Any) -> tuple[Any, Any, Path]:
    cfg = tiny_config(tmp_path, engine="flower", clients=4, clients_per_round=4, **overrides)
    out = Path(cfg.out)
    prepared = setup(cfg, out, RunProgress())
    model, _ = build_model(cfg, prepared, out, RunProgress())
    workdir = out / "flower"
    write_workdir(cfg, model, workdir)
    return cfg, prepared, workdir


def _grid(workdir: Path, partitions: dict[int, int] | None = None) -> LocalGrid:
    partitions = partitions or {node: i for i, node in enumerate(NODES)}
    contexts = {node: Context(run_id=RUN_ID, node_id=node, node_config={"partition-id": p, "num-partitions": 4},
                              state=RecordDict(), run_config={}) for node, p in partitions.items()}
    return LocalGrid(make_client_app(workdir), contexts)


def _serve(grid: LocalGrid, workdir: Path) -> dict[str, Any]:
    serve(grid, Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={}), workdir)
    return json.loads((workdir / RESULT_FILE).read_text())


@pytest.mark.parametrize("backend", ["secagg+", "secagg", "ckks"])
def test_rounds_over_flower_messages_match_the_in_memory_engine_round_by_round(tmp_path, monkeypatch, backend):
    """Injected dropouts at protocol stages; every round's secure average is within the bounds of both
    the in-memory engine's (replayed from the same state with the same survivors) and plain FedAvg."""
    stamp_task_identity(monkeypatch, RUN_ID)
    cfg, prepared, workdir = _workdir(tmp_path, backend=backend, flower_compare=True, dropout=0.3, seed=3)
    result = _serve(_grid(workdir), workdir)
    records = result["records"]
    assert [r["round"] for r in records] == [1, 2]
    done = [r for r in records if not r["aborted"]]
    assert done, "no round completed: the comparison below would check nothing"
    assert any(r["dropped"] for r in records), "the seed should inject at least one dropout"
    for r in done:
        assert r["train_loss"] is None and r["max_abs_diff_vs_plain"] is None  # the server never sees them
        assert set(r["survivors"]) <= set(r["sampled"]) and r["bytes_up_per_client"] > 0
        assert not set(r["survivors"]) & {d["client"] for d in r["dropped"] if d["stage"] in ("advertise", "share", "upload",
                                                                                               "mask")}
    check = _compare(cfg, prepared, workdir, records, RunProgress())
    assert check["within_bound"] is True and len(check["rounds"]) == len(done)
    for r in check["rounds"]:
        assert r["max_abs_diff_vs_in_memory"] <= r["bound"] + check["float32_slack"]


def test_the_replay_check_can_fail(tmp_path, monkeypatch):
    """A kept average nudged by 1e-3 (far above the bound) is reported outside the bound."""
    from safetensors.torch import load_file, save_file

    stamp_task_identity(monkeypatch, RUN_ID)
    cfg, prepared, workdir = _workdir(tmp_path, flower_compare=True, dropout=0.0, rounds=1)
    records = _serve(_grid(workdir), workdir)["records"]
    path = workdir / "rounds" / "round-1.safetensors"
    kept = load_file(str(path))
    name = next(k for k in kept if k.startswith("average/"))
    kept[name] = kept[name] + 1e-3
    save_file(kept, str(path))
    check = _compare(cfg, prepared, workdir, records, RunProgress())
    assert check["within_bound"] is False and check["max_abs_diff"] >= 9e-4


def test_a_node_failing_to_train_is_dropped_and_the_round_completes(tmp_path, monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)
    _, _, workdir = _workdir(tmp_path, dropout=0.0, rounds=1)
    grid = _grid(workdir)
    app = grid.app

    def failing(message: Message, context: Context) -> Message:
        if message.metadata.message_type == "train" and context.node_id == NODES[1]:
            raise RuntimeError("out of memory")
        return app(message, context)

    grid.app = failing
    (record,) = _serve(grid, workdir)["records"]
    assert not record["aborted"] and record["survivors"] == [0, 2, 3]
    assert record["dropped"] == [{"client": 1, "stage": "train"}]


def test_plain_backend_drops_a_malformed_upload(tmp_path, monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)
    _, _, workdir = _workdir(tmp_path, backend="plain", dropout=0.0, rounds=1)
    grid = _grid(workdir)

    def tamper(message: Message, reply: Message) -> Message:
        if message.metadata.message_type == "train" and message.metadata.dst_node_id == NODES[2]:
            return Message(RecordDict({"metrics": ConfigRecord({"num-examples": 1})}), reply_to=message)
        return reply

    grid.tamper = tamper
    (record,) = _serve(grid, workdir)["records"]
    assert record["survivors"] == [0, 1, 3] and {"client": 2, "stage": "upload"} in record["dropped"]


def test_two_nodes_claiming_one_client_are_refused(tmp_path, monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)
    _, _, workdir = _workdir(tmp_path, rounds=1)
    grid = _grid(workdir, {NODES[0]: 0, NODES[1]: 0, NODES[2]: 2, NODES[3]: 3})
    with pytest.raises(InputError, match="3 of 4 clients"):
        _serve(grid, workdir)


def test_a_node_refuses_a_train_message_without_its_config(tmp_path, monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)
    _, _, workdir = _workdir(tmp_path, rounds=1)
    grid = _grid(workdir)
    message = Message(RecordDict({"config": ConfigRecord({"round": 1, "drop-at": ""})}), NODES[0], "train")
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "ArrayRecord 'arrays'" in reply.error.reason


def _fedlm(tmp_path: Path, *flags: str, timeout: float) -> dict[str, Any]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedlm", "run", "--engine", "flower", "--clients", "4",
               "--clients-per-round", "4", "--rounds", "2", "--warmup-steps", "20", "--local-steps", "2",
               "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--vocab-size", "320",
               "--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--max-chars-per-domain", "20000",
               "--dropout", "0.3", "--quiet", "--out", str(out), *flags]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=timeout, check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    return json.loads((out / "report.json").read_text())


def _check_report(report: dict[str, Any], runtime: str) -> None:
    assert report["engine"] == "flower" and report["flower"]["runtime"] == runtime
    done = [r for r in report["rounds"] if not r["aborted"]]
    assert done and any(r["dropped"] for r in report["rounds"])
    check = report["engine_check"]
    assert check["within_bound"] is True and len(check["rounds"]) == len(done)


@pytest.mark.flower
@pytest.mark.slow
def test_fedlm_on_flowers_simulation_runtime(tmp_path):
    """The CLI on Flower's simulation runtime (Ray), with injected dropouts, checked against in-memory."""
    _check_report(_fedlm(tmp_path, "--backend", "secagg+", timeout=400), "simulation")


@pytest.mark.flower
@pytest.mark.slow
def test_fedlm_on_a_local_flower_deployment(tmp_path):
    """The CLI on a SuperLink and 4 SuperNodes on 127.0.0.1, started and stopped by fedlm."""
    _check_report(_fedlm(tmp_path, "--backend", "secagg+", "--flower-runtime", "local-deployment", "--rounds", "1",
                         timeout=400), "local-deployment")


@pytest.mark.parametrize("overrides", [
    {"mode": "prompt", "personal_tokens": 2},
    {"task": "sft", "mode": "full", "sft_examples": 40, "eval_examples": 4, "seq_len": 64},
    {"mode": "pretrain"},
], ids=["prompt-personal", "sft-full", "pretrain"])
def test_every_mode_and_task_runs_over_flower_messages(tmp_path, monkeypatch, overrides):
    """Personal prompt rows stay on the nodes (their files), SFT rounds are scored per task."""
    stamp_task_identity(monkeypatch, RUN_ID)
    cfg, _, workdir = _workdir(tmp_path, dropout=0.0, rounds=1, **overrides)
    (record,) = _serve(_grid(workdir), workdir)["records"]
    assert not record["aborted"] and record["survivors"] == [0, 1, 2, 3]
    if cfg.personal_tokens:
        from safetensors.torch import load_file

        rows = [load_file(str(workdir / "nodes" / f"client-{c}" / "personal_prompt.safetensors"))["personal_prompt"]
                for c in range(4)]
        assert all(r.shape[0] == 2 for r in rows) and not all(bool((r == rows[0]).all()) for r in rows[1:])
    if cfg.task == "sft":
        assert set(record["task_eval"]) and all("accuracy" in v for v in record["task_eval"].values())


def test_a_node_sent_another_model_is_in_another_session_and_drops_out(tmp_path, monkeypatch):
    """The model-inconsistency attack: the server sends one node a different global state. Each node
    binds a digest of the state it trained from into the session, so the victim's messages belong to
    another session and are refused: the round completes without it."""
    from flwr.app import Array, ArrayRecord

    stamp_task_identity(monkeypatch, RUN_ID)
    _, _, workdir = _workdir(tmp_path, dropout=0.0, rounds=1)
    grid = _grid(workdir)
    app = grid.app

    def other_model(message: Message, context: Context) -> Message:
        if message.metadata.message_type == "train" and context.node_id == NODES[2]:
            arrays = message.content["arrays"]
            changed = {k: Array(a.numpy() + 0.01) for k, a in arrays.items()}
            message = Message(RecordDict({"arrays": ArrayRecord(changed), "config": message.content["config"]}),
                              NODES[2], "train")
            message.metadata.__dict__["_message_id"] = "x" * 64
        return app(message, context)

    grid.app = other_model
    (record,) = _serve(grid, workdir)["records"]
    assert not record["aborted"] and record["survivors"] == [0, 1, 3]
    assert record["dropped"] == [{"client": 2, "stage": "advertise"}]


def test_distributed_dp_over_flower_messages(tmp_path, monkeypatch):
    """Under --dp-epsilon each node derives the DP encoding (noise plan, survivor floor) itself and the
    server charges every released round; the replay check is skipped and says why."""
    stamp_task_identity(monkeypatch, RUN_ID)
    cfg, prepared, workdir = _workdir(tmp_path, dropout=0.0, rounds=2, dp_epsilon=50.0, mode="prompt")
    result = _serve(_grid(workdir), workdir)
    done = [r for r in result["records"] if not r["aborted"]]
    assert len(done) == 2 and all(r["survivors"] == [0, 1, 2, 3] for r in done)
    assert 0 < done[0]["epsilon"] < done[1]["epsilon"] <= 50.0
    assert result["dp"]["epsilon"] == done[1]["epsilon"] and result["dp"]["min_survivors"] >= 1
    check = _compare(cfg, prepared, workdir, result["records"], RunProgress())
    assert check["within_bound"] is None and "DP" in check["skipped"]
