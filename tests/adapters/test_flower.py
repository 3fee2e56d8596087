"""The Flower adapter: message packing, the round loop through an in-process Grid, a real deployment.

The in-process :class:`LocalGrid` hands each message straight to the example ClientApp with one
persistent :class:`Context` per node, as a SuperNode does, so the router's dropout scenarios run
through the adapter in a second. The test marked ``flower`` starts a real SuperLink and SuperNodes
on 127.0.0.1 (tens of seconds, bounded by the launcher's timeout, every process stopped).
"""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402

from secagg import InsufficientParties, MalformedMessage, Schema, SecAggClient, SecAggServer  # noqa: E402
from secagg.adapters import flower as fa  # noqa: E402
from secagg.adapters.flower_launcher import run_local  # noqa: E402

from .localgrid import LocalGrid, stamp_task_identity  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
RUN_CONFIG = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
RUN_ID = 4242


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(APP_DIR))
    from secagg_flower_example import app

    return app


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)


def expected_average(example, partitions: list[int], round_number: int = 0) -> np.ndarray:
    schema = Schema.of(example.TEMPLATE)
    pairs = [example.partition_update(p, round_number) for p in partitions]
    total = sum(w * schema.flatten(u) for u, w in pairs)
    return total / sum(w for _, w in pairs)


# -- packing --------------------------------------------------------------------------------------------
def test_pack_survives_flowers_object_encoding() -> None:
    envelope = fa.Envelope("mask", 3, 2, 5, bytes(range(256)) * 3)
    message = Message(fa.pack(envelope), 77, fa.MESSAGE_TYPE)
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    restored = inflate_object_from_contents(message.object_id, contents)
    assert fa.unpack(restored.content) == envelope
    assert fa.unpack(fa.pack(fa.Envelope("advertise", 0, 0, 2, b""))).payload == b""


def _tampered(edit: Callable[[RecordDict], None]) -> RecordDict:
    content = fa.pack(fa.Envelope("share", 1, 0, 4, b"secagg bytes"))
    edit(content)
    return content


@pytest.mark.parametrize("edit", [
    lambda c: c.__setitem__("extra", ConfigRecord({"x": 1})),
    lambda c: c.pop("secagg.payload"),
    lambda c: c["secagg.meta"].__setitem__("version", 2),
    lambda c: c["secagg.meta"].__setitem__("step", "exfiltrate"),
    lambda c: c["secagg.meta"].__setitem__("client-id", 4),
    lambda c: c["secagg.meta"].__setitem__("round", 1.0),
    lambda c: c["secagg.meta"].__setitem__("extra", 1),
    lambda c: c["secagg.payload"].__setitem__("bytes", Array("uint8", (12,), "numpy.ndarray", b"secagg bytes")),
    lambda c: c["secagg.payload"].__setitem__("bytes", Array("int8", (12,), fa.STYPE, b"secagg bytes")),
    lambda c: c["secagg.payload"].__setitem__("bytes", Array("uint8", (13,), fa.STYPE, b"secagg bytes")),
    lambda c: c["secagg.payload"].__setitem__("more", Array("uint8", (1,), fa.STYPE, b"x")),
])
def test_unpack_refuses_anything_but_our_layout(edit) -> None:
    with pytest.raises(MalformedMessage):
        fa.unpack(_tampered(edit))


# -- the round loop through an in-process grid (tests/adapters/localgrid.py) ---------------------------------
NODE_IDS = [9_001, 17, 4_242, 77_777, 23, 500]  # deliberately unsorted, as Flower's random ids are


def _grid(example, tmp_path, drops: dict[int, str] | None = None, mode: str = "crash") -> tuple[LocalGrid, dict[int, int]]:
    partition = {node: i for i, node in enumerate(NODE_IDS)}
    contexts = {}
    for node, p in partition.items():
        config: dict[str, Any] = {"partition-id": p, "secagg-state-dir": str(tmp_path / f"node{p}")}
        if drops and p in drops:
            config |= {"drop-at": drops[p], "drop-mode": mode}
        contexts[node] = Context(RUN_ID, node, config, RecordDict(), dict(RUN_CONFIG))
    return LocalGrid(example.client_app, contexts), partition


def _round(grid: LocalGrid, example, timeout: float = 5.0) -> fa.FlowerRound:
    config = fa.session_config(RUN_CONFIG, len(NODE_IDS), example.TEMPLATE)
    assert (config.protocol, config.degree, config.threshold) == ("secagg+", 4, 2)
    return fa.run_round(grid, NODE_IDS, config, round_number=0, context=fa.round_context(RUN_ID, 0),
                        stage_timeout=timeout, poll_interval=0.01)


@pytest.mark.parametrize("stage", [None, "advertise", "share", "mask", "unmask"])
def test_round_with_a_crash_at_each_stage(example, tmp_path, stage) -> None:
    grid, partition = _grid(example, tmp_path, {2: stage} if stage else None)
    outcome = _round(grid, example)
    assert outcome.nodes == dict(enumerate(sorted(NODE_IDS)))
    lost = {NODE_IDS[2]} if stage in ("advertise", "share", "mask") else set()
    assert set(outcome.survivor_nodes) == set(NODE_IDS) - lost
    assert outcome.dropped == ({NODE_IDS[2]: stage} if stage else {})
    expected = expected_average(example, sorted(partition[n] for n in outcome.survivor_nodes))
    assert np.abs(outcome.result.average_vector() - expected).max() <= outcome.result.error_bound
    assert set(outcome.stage_seconds) == {"advertise", "share", "mask", "unmask"}


def test_a_silent_node_is_dropped_after_the_stage_timeout(example, tmp_path) -> None:
    grid, partition = _grid(example, tmp_path)
    grid.silent.add(NODE_IDS[4])
    outcome = _round(grid, example, timeout=0.3)
    assert outcome.dropped == {NODE_IDS[4]: "advertise"}
    expected = expected_average(example, [p for n, p in partition.items() if n != NODE_IDS[4]])
    assert np.abs(outcome.result.average_vector() - expected).max() <= outcome.result.error_bound


def test_a_reply_under_another_client_id_is_refused(example, tmp_path) -> None:
    grid, _ = _grid(example, tmp_path)
    impostor, victim = NODE_IDS[0], sorted(NODE_IDS)[0]  # the impostor claims client id 0

    def claim_client_zero(message: Message, reply: Message) -> Message:
        if message.metadata.dst_node_id != impostor or reply.has_error():
            return reply
        envelope = fa.unpack(reply.content)
        forged = fa.Envelope(envelope.step, envelope.round_number, 0, envelope.num_clients, envelope.payload)
        return Message(fa.pack(forged), reply_to=message)

    grid.tamper = claim_client_zero
    outcome = _round(grid, example)
    assert outcome.dropped == {impostor: "advertise"} and victim in outcome.survivor_nodes


def test_deliver_checks_the_secagg_sender_against_the_node(example) -> None:
    config = fa.session_config(RUN_CONFIG, 3, example.TEMPLATE)
    server = SecAggServer(config, round_number=0, context=b"c")
    advert = SecAggClient(config, 1, round_number=0, context=b"c").advertise()
    content = fa.pack(fa.Envelope("advertise", 0, 0, 3, advert))  # routed as client 0, sent by client 1
    assert fa._deliver(server, "advertise", 99, 0, content) == "the secagg header names another client"
    assert "rejected" in fa._deliver(server, "advertise", 99, 1, fa.pack(fa.Envelope("advertise", 0, 1, 3, b"junk")))
    assert fa._deliver(server, "advertise", 99, 1, fa.pack(fa.Envelope("advertise", 0, 1, 3, advert))) is None


def test_too_many_drops_release_nothing(example, tmp_path) -> None:
    grid, _ = _grid(example, tmp_path, {0: "mask", 1: "mask", 2: "mask", 3: "mask", 4: "mask"})
    with pytest.raises(InsufficientParties):
        _round(grid, example)


def test_serve_reports_a_failed_round(example, tmp_path) -> None:
    grid, _ = _grid(example, tmp_path, {p: "share" for p in range(5)})
    result_path = tmp_path / "result.json"
    run_config = dict(RUN_CONFIG) | {"secagg-num-nodes": 6, "secagg-poll-interval": 0.01,
                                     "secagg-result-path": str(result_path)}
    with pytest.raises(InsufficientParties):
        fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE)
    (report,) = json.loads(result_path.read_text())
    assert report["round"] == 0 and report["error"].startswith("InsufficientParties")


def test_serve_runs_the_configured_rounds_and_reports(example, tmp_path) -> None:
    grid, partition = _grid(example, tmp_path, {5: "share"})
    result_path = tmp_path / "result.json"
    run_config = dict(RUN_CONFIG) | {"secagg-num-nodes": 6, "secagg-rounds": 2, "secagg-poll-interval": 0.01,
                                     "secagg-result-path": str(result_path)}
    seen: list[int] = []
    rounds = fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE,
                      on_result=lambda r, _: seen.append(r))
    assert seen == [0, 1]
    reports = json.loads(result_path.read_text())
    for r, report in enumerate(reports):
        assert report["round"] == r and report["dropped"] == {str(NODE_IDS[5]): "share"}
        expected = expected_average(example, [0, 1, 2, 3, 4], r)
        assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    assert len(rounds) == 2


# -- a real deployment ------------------------------------------------------------------------------------
def _deployment_unavailable() -> str:
    here = Path(sys.executable).parent
    if not all((here / n).exists() or shutil.which(n) for n in ("flower-superlink", "flower-supernode", "flwr")):
        return "Flower's executables are not installed"
    if tuple(int(x) for x in version("flwr").split(".")[:2]) < (1, 42):
        return "the launcher drives the flwr >= 1.42 command line (one HTTP port, SuperLink connections)"
    return ""


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.skipif(bool(_deployment_unavailable()), reason=_deployment_unavailable() or "available")
def test_secagg_plus_round_on_a_local_flower_deployment(example) -> None:
    """4 SuperNodes, partition 3 crashes when asked for its masked input; 3 survive."""
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    nodes[3] |= {"drop-at": "mask", "drop-mode": "crash"}
    # With 4 clients and 25% dropout, the SecAgg+ parameter search picks the complete graph.
    run_config = {"secagg-num-nodes": 4, "secagg-dropout-fraction": 0.25, "secagg-stage-timeout": 60.0}
    run = run_local(APP_DIR, nodes, run_config, timeout=170.0)
    (report,) = run.result
    assert list(report["dropped"].values()) == ["mask"] and len(report["survivors"]) == 3
    assert report["weight_sum"] == 1 + 2 + 3
    expected = expected_average(example, [0, 1, 2])
    assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    print(f"\nFlower deployment round: {run.seconds:.1f}s wall, stages {report['stage_seconds']}")
