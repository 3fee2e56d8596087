"""The Flower adapter: message packing, the round loop through an in-process Grid, a real deployment.

The in-process :class:`LocalGrid` hands each message straight to the example ClientApp with one
persistent :class:`Context` per node, as a SuperNode does, so the router's dropout scenarios run
through the adapter in a second. The test marked ``flower`` starts a real SuperLink and SuperNodes
on 127.0.0.1 (tens of seconds, bounded by the launcher's timeout, every process stopped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402

from secagg import InsufficientParties, MalformedMessage, ParameterError, ProtocolAbort, Schema, SecAggClient, SecAggServer  # noqa: E402
from secagg.protocols.ckks import CkksConfig  # noqa: E402
from secagg.protocols.registry import PROTOCOLS  # noqa: E402
from secagg.adapters import flower as fa  # noqa: E402
from secagg.adapters.flower_launcher import run_local  # noqa: E402

from .localgrid import LocalGrid, stamp_task_identity  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
RUN_CONFIG = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
RUN_ID = 4242


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


def _grid(example, tmp_path, drops: dict[int, str] | None = None, mode: str = "crash",
          run_config: dict[str, Any] = RUN_CONFIG) -> tuple[LocalGrid, dict[int, int]]:
    partition = {node: i for i, node in enumerate(NODE_IDS)}
    contexts = {}
    for node, p in partition.items():
        config: dict[str, Any] = {"partition-id": p, "secagg-state-dir": str(tmp_path / f"node{p}")}
        if drops and p in drops:
            config |= {"drop-at": drops[p], "drop-mode": mode}
        contexts[node] = Context(RUN_ID, node, config, RecordDict(), dict(run_config))
    return LocalGrid(example.client_app, contexts), partition


def _round(grid: LocalGrid, example, timeout: float = 5.0) -> fa.FlowerRound:
    config = fa.session_config(RUN_CONFIG, len(NODE_IDS), example.TEMPLATE)
    assert (config.protocol, config.degree, config.threshold) == ("secagg+", 4, 2)
    return fa.run_round(grid, NODE_IDS, config, round_number=0, context=fa.round_context(RUN_ID, 0, run_config=RUN_CONFIG),
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
        grid.share_run_config(run_config)
        fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE)
    (report,) = json.loads(result_path.read_text())
    assert report["round"] == 0 and report["error"].startswith("InsufficientParties")


def test_serve_runs_the_configured_rounds_and_reports(example, tmp_path) -> None:
    grid, partition = _grid(example, tmp_path, {5: "share"})
    result_path = tmp_path / "result.json"
    run_config = dict(RUN_CONFIG) | {"secagg-num-nodes": 6, "secagg-rounds": 2, "secagg-poll-interval": 0.01,
                                     "secagg-result-path": str(result_path)}
    seen: list[int] = []
    grid.share_run_config(run_config)
    rounds = fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE,
                      on_result=lambda r, _: seen.append(r))
    assert seen == [0, 1]
    reports = json.loads(result_path.read_text())
    for r, report in enumerate(reports):
        assert report["round"] == r and report["dropped"] == {str(NODE_IDS[5]): "share"}
        expected = expected_average(example, [0, 1, 2, 3, 4], r)
        assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    assert len(rounds) == 2


# -- CKKS through the same round loop --------------------------------------------------------------------
CKKS_CONFIG = dict(RUN_CONFIG) | {"secagg-protocol": "ckks"}
CLIENT_NODE = dict(enumerate(sorted(NODE_IDS)))  # client id -> node id; the committee is clients 0, 1, 2


class KillingGrid(LocalGrid):
    """A node in ``killed`` (node -> step) never answers again from that step on: a SuperNode killed there."""

    def __init__(self, app: Any, contexts: dict[int, Context], killed: dict[int, str]) -> None:
        super().__init__(app, contexts)
        self.killed = killed

    def push_messages(self, messages) -> list[str]:
        for message in messages:
            node = message.metadata.dst_node_id
            if self.killed.get(node) == fa.unpack(message.content).step:
                self.silent.add(node)
        return super().push_messages(messages)


def _killing_grid(example, tmp_path, killed_clients: dict[int, str]) -> tuple[KillingGrid, dict[int, int]]:
    grid, partition = _grid(example, tmp_path, run_config=CKKS_CONFIG)
    return KillingGrid(grid.app, grid.contexts, {CLIENT_NODE[c]: s for c, s in killed_clients.items()}), partition


def _ckks_round(grid: LocalGrid, example, timeout: float = 5.0) -> fa.FlowerRound:
    config = fa.session_config(CKKS_CONFIG, len(NODE_IDS), example.TEMPLATE)
    assert isinstance(config, CkksConfig) and config.committee == (0, 1, 2) and config.min_contributors == 3
    return fa.run_round(grid, NODE_IDS, config, round_number=0, context=fa.round_context(RUN_ID, 0, run_config=CKKS_CONFIG),
                        stage_timeout=timeout, poll_interval=0.01)


def _assert_exact_for_survivors(example, partition: dict[int, int], outcome: fa.FlowerRound) -> None:
    expected = expected_average(example, sorted(partition[n] for n in outcome.survivor_nodes))
    assert np.abs(outcome.result.average_vector() - expected).max() <= outcome.result.error_bound
    assert outcome.result.weight_sum == sum(partition[n] + 1 for n in outcome.survivor_nodes)


@pytest.mark.parametrize("stage, client, lost, decrypted_by", [
    (None, None, False, 0),
    ("advertise", 0, True, 1),  # a committee member never advertises: client 1 generates and decrypts
    ("generate", 0, True, 1),   # the designated generator dies: the next member generates
    ("upload", 3, True, 0),     # a node outside the committee dies before uploading
    ("upload", 0, True, 1),     # a key holder dies before uploading: a live holder is asked first
    ("decrypt", 0, False, 1),   # the key holder asked dies after its upload: the next one decrypts
])
def test_ckks_round_with_a_node_killed_at_each_stage(example, tmp_path, stage, client, lost, decrypted_by) -> None:
    grid, partition = _killing_grid(example, tmp_path, {client: stage} if stage else {})
    outcome = _ckks_round(grid, example, timeout=0.3)
    node = CLIENT_NODE.get(client)
    assert set(outcome.survivor_nodes) == set(NODE_IDS) - ({node} if lost else set())
    assert outcome.dropped == ({node: stage} if stage else {})
    assert outcome.result.decrypted_by == decrypted_by
    _assert_exact_for_survivors(example, partition, outcome)
    report = outcome.report()
    assert (report["protocol"], report["threshold"], report["degree"]) == ("ckks", 3, None)
    assert report["committee"] == [CLIENT_NODE[c] for c in (0, 1, 2)]
    assert report["decrypted_by"] == CLIENT_NODE[decrypted_by] and report["grid_bits"] == 16
    assert set(report["stage_seconds"]) == {"advertise", "generate", "upload", "decrypt"}
    if stage:  # the stage waited out the timeout for the dead node (a repeated stage counts every attempt)
        assert report["stage_seconds"][stage] >= 0.3


def test_ckks_a_generator_that_errs_once_is_replaced_and_still_holds_the_key(example, tmp_path) -> None:
    """An error reply (the node stays up) at generate: another member generates; the first one still
    receives the key, uploads, and is the key holder asked."""
    grid, partition = _grid(example, tmp_path, {1: "generate"}, run_config=CKKS_CONFIG)  # partition 1: client 0
    assert CLIENT_NODE[0] == NODE_IDS[1]
    outcome = _ckks_round(grid, example)
    assert outcome.dropped == {NODE_IDS[1]: "generate"} and set(outcome.survivor_nodes) == set(NODE_IDS)
    assert outcome.result.decrypted_by == 0
    _assert_exact_for_survivors(example, partition, outcome)


@pytest.mark.parametrize("killed", [
    {0: "advertise", 1: "advertise", 2: "advertise"},  # no committee member: nobody can make the key
    {c: "upload" for c in range(1, 6)},                # one upload: below min_contributors = 2
    {0: "decrypt", 1: "upload", 2: "upload"},          # every key holder gone before it decrypts
])
def test_ckks_too_few_survivors_release_nothing(example, tmp_path, killed) -> None:
    grid, _ = _killing_grid(example, tmp_path, killed)
    with pytest.raises(InsufficientParties):
        _ckks_round(grid, example, timeout=0.3)


def test_serve_runs_a_ckks_round_and_reports(example, tmp_path) -> None:
    grid, partition = _grid(example, tmp_path, {4: "upload"}, run_config=CKKS_CONFIG)
    result_path = tmp_path / "result.json"
    run_config = CKKS_CONFIG | {"secagg-num-nodes": 6, "secagg-poll-interval": 0.01,
                                "secagg-result-path": str(result_path)}
    grid.share_run_config(run_config)
    (outcome,) = fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE)
    (report,) = json.loads(result_path.read_text())
    assert report == json.loads(json.dumps(outcome.report()))
    assert report["dropped"] == {str(NODE_IDS[4]): "upload"} and report["weight_sum"] == 1 + 2 + 3 + 4 + 6
    expected = expected_average(example, [0, 1, 2, 3, 5])
    assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    assert report["error_bound"] == 5 * 2.0**-16 / report["weight_sum"]


def test_a_ckks_node_refuses_a_step_of_another_protocol(example, tmp_path) -> None:
    grid, _ = _grid(example, tmp_path, run_config=CKKS_CONFIG)
    node = NODE_IDS[0]
    message = Message(fa.pack(fa.Envelope("share", 0, 3, 6, b"")), node, fa.MESSAGE_TYPE)
    with pytest.raises(MalformedMessage, match="not a step of a ckks round"):
        example.secagg_step(message, grid.contexts[node])
    assert not (tmp_path / "node0").exists()  # refused before any state was made


def test_every_protocol_has_a_node_store_and_every_step_an_envelope() -> None:
    assert set(fa._STORES) == set(PROTOCOLS)
    for name, protocol in PROTOCOLS.items():
        assert set(protocol.server_stages(None)) <= set(protocol.message_stages) <= fa._STEPS
    assert fa.unpack(fa.pack(fa.Envelope("decrypt", 1, 2, 3, b"x"))).step == "decrypt"


def test_ckks_session_config_refuses_bad_settings(example) -> None:
    for bad in ({"secagg-ckks-preset": "toy-64"}, {"secagg-ckks-committee": 0},
                {"secagg-ckks-min-contributors": 7}, {"secagg-fractional-bits": 60}, {"secagg-protocol": "plain"}):
        with pytest.raises(ParameterError):
            fa.session_config(CKKS_CONFIG | bad, 6, example.TEMPLATE)
    finest = fa.session_config({"secagg-protocol": "ckks"}, 6, example.TEMPLATE)
    assert isinstance(finest, CkksConfig) and finest.grid_bits == finest.finest_grid_bits()
    assert fa.session_config(CKKS_CONFIG | {"secagg-ckks-committee": 9}, 4, example.TEMPLATE).committee == (0, 1, 2, 3)


# -- drop-mode kill ---------------------------------------------------------------------------------------
_FAKE_SUPERNODE = """import subprocess, sys
# the stand-in SuperNode: a middle process (SuperExec's place), then the ClientApp under it
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]]).wait(timeout=120)
"""
_MIDDLE = """import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {clientapp!r}])
code = child.wait(timeout=100)
open(sys.argv[1], "w").write(str(code))
"""
_CLIENTAPP = """from flwr.app import Context, RecordDict
from secagg_flower_example import app
context = Context(1, 1, {"drop-at": "mask", "drop-mode": "kill"}, RecordDict(), {})
app._maybe_drop(context, "mask")
"""


def test_drop_mode_kill_kills_the_supernode_ancestor_and_nothing_else(example, tmp_path) -> None:
    fake = tmp_path / "flower-supernode"
    fake.write_text(_FAKE_SUPERNODE)
    middle_report = tmp_path / "clientapp-exit-code"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(APP_DIR), str(APP_DIR.parents[1])]))
    supernode = subprocess.Popen([sys.executable, str(fake), _MIDDLE.format(clientapp=_CLIENTAPP), str(middle_report)],
                                 env=env)
    try:
        assert supernode.wait(timeout=60) == -signal.SIGKILL  # killed by its grandchild
        deadline = time.monotonic() + 30
        while not middle_report.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert middle_report.read_text() == "137"  # the ClientApp exited at once; the middle one lived on
    finally:
        supernode.kill()
        supernode.wait()
    # In-process (no flower-supernode ancestor) kill mode raises like crash and signals nobody.
    context = Context(1, 1, {"drop-at": "mask", "drop-mode": "kill"}, RecordDict(), {})
    assert example.supernode_ancestor() is None
    with pytest.raises(RuntimeError, match="drop at mask"):
        example._maybe_drop(context, "mask")


# -- a real deployment ------------------------------------------------------------------------------------
def _deployment_unavailable() -> str:
    here = Path(sys.executable).parent
    if not all((here / n).exists() or shutil.which(n) for n in ("flower-superlink", "flower-supernode", "flwr")):
        return "Flower's executables are not installed"
    if tuple(int(x) for x in version("flwr").split(".")[:2]) < (1, 42):
        return "the launcher drives the flwr >= 1.42 command line (one HTTP port, SuperLink connections)"
    return ""


DEPLOYMENT_STAGE_TIMEOUT = 20.0
"""Seconds a deployment round waits for a stage: over 3x the slowest stage measured on 2 idle cores
(the first: 4 fresh ``flwr-clientapp`` processes importing flwr, secagg and TenSEAL at once, ~6 s);
the killed node's stage takes exactly this long."""


def _leftovers(workdir: Path) -> list[int]:
    """Live processes whose environment names the run's directory (every process Flower started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(workdir).encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _run_with_a_killed_node(protocol_config: dict[str, Any], drop_at: str):
    """4 SuperNodes; partition 3 SIGKILLs its own SuperNode when asked for ``drop_at``."""
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    nodes[3] |= {"drop-at": drop_at, "drop-mode": "kill"}
    run_config = {"secagg-num-nodes": 4, "secagg-stage-timeout": DEPLOYMENT_STAGE_TIMEOUT} | protocol_config
    run = run_local(APP_DIR, nodes, run_config, timeout=150.0)
    (report,) = run.result
    assert "error" not in report, report
    assert run.exited == {"node3": -signal.SIGKILL}  # that SuperNode was killed, every other one lived
    assert _leftovers(run.workdir) == []  # and every process of the run is stopped, orphans included
    return run


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.skipif(bool(_deployment_unavailable()), reason=_deployment_unavailable() or "available")
def test_secagg_plus_round_on_a_local_flower_deployment(example) -> None:
    """4 SuperNodes, partition 3's SuperNode is killed when asked for its masked input; 3 survive."""
    # With 4 clients and 25% dropout, the SecAgg+ parameter search picks the complete graph.
    run = _run_with_a_killed_node({"secagg-dropout-fraction": 0.25}, "mask")
    (report,) = run.result
    assert list(report["dropped"].values()) == ["mask"] and len(report["survivors"]) == 3
    assert report["weight_sum"] == 1 + 2 + 3
    expected = expected_average(example, [0, 1, 2])
    assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    print(f"\nFlower deployment round (secagg+, one node killed at mask): {run.seconds:.1f}s wall, "
          f"stages {report['stage_seconds']}")


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.skipif(bool(_deployment_unavailable()), reason=_deployment_unavailable() or "available")
def test_ckks_round_on_a_local_flower_deployment(example) -> None:
    """4 SuperNodes, CKKS with a 3-member key committee; partition 3's SuperNode is killed when the
    key setup is done and its upload is due (a key holder, unless partition 3 has the largest node
    id). The key travelled over Flower messages; a live holder decrypts the 3 survivors' exact sum."""
    run = _run_with_a_killed_node({"secagg-protocol": "ckks"}, "upload")
    (report,) = run.result
    # a key holder decrypts sums of at least ceil(0.1 * 4) + 2 = 3 inputs (the nodes' floor)
    assert (report["protocol"], report["threshold"], report["degree"]) == ("ckks", 3, None)
    assert list(report["dropped"].values()) == ["upload"] and len(report["survivors"]) == 3
    killed = int(next(iter(report["dropped"])))
    assert killed not in report["survivors"] and report["decrypted_by"] in report["survivors"]
    assert report["committee"] == sorted(report["survivors"] + [killed])[:3]
    assert report["weight_sum"] == 1 + 2 + 3
    assert report["error_bound"] == 3 * 2.0**-report["grid_bits"] / 6
    expected = expected_average(example, [0, 1, 2])
    assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    print(f"\nFlower deployment round (ckks, one node killed at upload): {run.seconds:.1f}s wall, "
          f"stages {report['stage_seconds']}")


@pytest.mark.parametrize("n", [3, 4, 9, 10, 11, 25])
def test_a_node_refuses_ckks_min_contributors_just_below_its_bound(tmp_path, n) -> None:
    """min_contributors >= ceil(floor * n) + 2 (SECURITY.md): refused one below, accepted at the bound."""
    least = fa.least_contributors(n, 0.1)
    assert least == -(-n // 10) + 2
    for minimum, refused in ((least - 1, True), (least, False)):
        run_config = {"secagg-protocol": "ckks", "secagg-ckks-min-contributors": minimum}
        context = Context(RUN_ID, 5, {"secagg-state-dir": str(tmp_path / f"n{n}-{minimum}")}, RecordDict(), run_config)
        message = Message(fa.pack(fa.Envelope("advertise", 0, 0, n, b"")), 5, fa.MESSAGE_TYPE)
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        template = {"w": np.zeros(3, dtype=np.float32)}
        if refused:
            with pytest.raises(ProtocolAbort, match="ceil"):
                fa.handle(message, context, template, lambda c, r: (template, 1))
        else:
            assert fa.unpack(fa.handle(message, context, template, lambda c, r: (template, 1)).content).payload
