"""The malicious-server variant across Flower nodes: identities, the identify step, hostile servers.

In-process through :class:`LocalGrid` (each message handled by a fresh :class:`NodeStore` replay, as
a SuperNode's per-message ClientApp process does), then on a real loopback deployment (``flower``).
The hostile ServerApp (``hostile_app``) drives the audit harness's deviating server through the
adapter's own round loop; the semi-honest runs of the same attacks are the control that shows the
attacks work through Flower, so the malicious runs' refusals are not vacuous.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Message, RecordDict  # noqa: E402

from secagg import InsufficientParties, IntegrityError, ParameterError, ProtocolAbort, Schema  # noqa: E402
from secagg.adapters import flower as fa  # noqa: E402
from secagg.adapters import identity  # noqa: E402
from secagg.adapters.flower_launcher import run_local  # noqa: E402
from secagg.adapters.nodestate import NodeStore  # noqa: E402


from .localgrid import stamp_task_identity  # noqa: E402
from .test_flower import APP_DIR, NODE_IDS, RUN_CONFIG, RUN_ID, LocalGrid, _deployment_unavailable, expected_average  # noqa: E402

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile_app"
HOSTILE_CONFIG = tomllib.loads((HOSTILE_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
MALICIOUS = dict(RUN_CONFIG) | {"secagg-threat": "malicious"}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch, RUN_ID)


def enrol(directory: Path, count: int) -> tuple[list[Path], Path]:
    """``count`` identity key files and the registry enrolling them as clients 0..count-1."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = [directory / f"client{i}.key" for i in range(count)]
    publics = [identity.new_identity(key)[0] for key in keys]
    registry = directory / "registry.json"
    identity.write_registry(publics, registry)
    return keys, registry


def _node_config(tmp_path: Path, partition: int, key: Path | None, registry: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = {"partition-id": partition, "secagg-state-dir": str(tmp_path / f"node{partition}")}
    if key is not None and registry is not None:
        config |= {identity.IDENTITY_KEY: str(key), identity.REGISTRY: str(registry)}
    return config


def malicious_grid(example, tmp_path, drops: dict[int, str] | None = None) -> tuple[LocalGrid, identity.Registry]:
    """The example app on NODE_IDS; partition i holds registry entry i."""
    keys, registry = enrol(tmp_path / "pki", len(NODE_IDS))
    contexts = {}
    for p, node in enumerate(NODE_IDS):
        config = _node_config(tmp_path, p, keys[p], registry)
        if drops and p in drops:
            config |= {"drop-at": drops[p], "drop-mode": "crash"}
        contexts[node] = Context(RUN_ID, node, config, RecordDict(), dict(MALICIOUS))
    return LocalGrid(example.client_app, contexts), identity.Registry.read(registry)


def malicious_round(grid: LocalGrid, example, registry: identity.Registry) -> fa.FlowerRound:
    config = fa.session_config(MALICIOUS, len(registry), example.TEMPLATE)
    assert (config.threat.is_malicious, config.degree, config.threshold, config.quorum) == (True, None, 4, 4)
    return fa.run_round(grid, NODE_IDS, config, round_number=0, context=fa.round_context(RUN_ID, 0, run_config=MALICIOUS),
                        stage_timeout=5.0, poll_interval=0.01, registry=registry)


# -- happy path -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [None, "identify", "advertise", "share", "mask", "consistency", "unmask"])
def test_malicious_round_with_a_crash_at_each_stage(example, tmp_path, stage) -> None:
    grid, registry = malicious_grid(example, tmp_path, {2: stage} if stage else None)
    outcome = malicious_round(grid, example, registry)
    mapped = {c: node for c, node in enumerate(NODE_IDS) if not (stage == "identify" and c == 2)}
    assert outcome.nodes == mapped  # the registry's ids, not the sorted node ids
    lost = {NODE_IDS[2]} if stage in ("identify", "advertise", "share", "mask") else set()
    assert set(outcome.survivor_nodes) == set(NODE_IDS) - lost
    assert outcome.dropped == ({NODE_IDS[2]: stage} if stage else {})
    expected = expected_average(example, sorted(NODE_IDS.index(n) for n in outcome.survivor_nodes))
    assert np.abs(outcome.result.average_vector() - expected).max() <= outcome.result.error_bound
    assert set(outcome.stage_seconds) == {"identify", "advertise", "share", "mask", "consistency", "unmask"}


def test_too_few_signers_release_nothing(example, tmp_path) -> None:
    grid, registry = malicious_grid(example, tmp_path, {0: "consistency", 1: "consistency", 2: "consistency"})
    with pytest.raises(InsufficientParties):
        malicious_round(grid, example, registry)


def test_serve_runs_a_malicious_round_from_the_run_config(example, tmp_path) -> None:
    grid, _ = malicious_grid(example, tmp_path, {4: "mask"})
    run_config = MALICIOUS | {"secagg-num-nodes": 6, "secagg-poll-interval": 0.01,
                              "secagg-registry": str(tmp_path / "pki" / "registry.json")}
    grid.share_run_config(run_config)
    (outcome,) = fa.serve(grid, Context(RUN_ID, 1, {}, RecordDict(), run_config), example.TEMPLATE)
    assert outcome.dropped == {NODE_IDS[4]: "mask"} and outcome.result.config.threat.is_malicious
    expected = expected_average(example, [0, 1, 2, 3, 5])
    assert np.abs(outcome.result.average_vector() - expected).max() <= outcome.result.error_bound


# -- the identify step, server side -------------------------------------------------------------------------------
def test_a_claim_for_another_registry_entry_is_refused(example, tmp_path) -> None:
    grid, registry = malicious_grid(example, tmp_path)
    impostor = NODE_IDS[3]

    def claim_client_zero(message: Message, reply: Message) -> Message:
        envelope = fa.unpack(reply.content)
        if message.metadata.dst_node_id != impostor or envelope.step != "identify":
            return reply
        forged = fa.Envelope("identify", envelope.round_number, 0, envelope.num_clients, envelope.payload)
        return Message(fa.pack(forged), reply_to=message)

    grid.tamper = claim_client_zero
    outcome = malicious_round(grid, example, registry)
    assert outcome.dropped == {impostor: "identify"} and outcome.nodes[0] == NODE_IDS[0]
    assert impostor not in outcome.survivor_nodes and NODE_IDS[0] in outcome.survivor_nodes


def test_a_node_holding_another_registry_is_dropped_at_identify(example, tmp_path) -> None:
    grid, registry = malicious_grid(example, tmp_path)
    odd = tmp_path / "odd.json"  # the same keys with clients 4 and 5 swapped: another digest
    table = identity.Registry.read(tmp_path / "pki" / "registry.json").to_json()
    table["4"], table["5"] = table["5"], table["4"]
    odd.write_text(json.dumps(table))
    grid.contexts[NODE_IDS[1]].node_config[identity.REGISTRY] = str(odd)
    outcome = malicious_round(grid, example, registry)
    assert outcome.dropped == {NODE_IDS[1]: "identify"}


def test_one_key_on_two_nodes_seats_neither(example, tmp_path) -> None:
    grid, registry = malicious_grid(example, tmp_path)
    grid.contexts[NODE_IDS[5]].node_config[identity.IDENTITY_KEY] = str(tmp_path / "pki" / "client4.key")
    outcome = malicious_round(grid, example, registry)
    assert outcome.dropped == {NODE_IDS[4]: "identify", NODE_IDS[5]: "identify"}
    assert set(outcome.nodes) == {0, 1, 2, 3}


def test_run_round_wants_the_registry_of_the_session(example, tmp_path) -> None:
    grid, registry = malicious_grid(example, tmp_path)
    config = fa.session_config(MALICIOUS, len(registry), example.TEMPLATE)
    with pytest.raises(ParameterError, match="registry"):
        fa.run_round(grid, NODE_IDS, config, round_number=0, context=b"c")
    semi = fa.session_config(RUN_CONFIG, len(NODE_IDS), example.TEMPLATE)
    with pytest.raises(ParameterError, match="malicious-model rounds"):
        fa.run_round(grid, NODE_IDS, semi, round_number=0, context=b"c", registry=registry)
    with pytest.raises(ParameterError, match="secagg-threat"):
        fa.session_config(RUN_CONFIG | {"secagg-threat": "paranoid"}, 6, example.TEMPLATE)


# -- the node's rules -------------------------------------------------------------------------------------------------
def _ask(example, context: Context, envelope: fa.Envelope) -> fa.Envelope:
    message = Message(fa.pack(envelope), context.node_id, fa.MESSAGE_TYPE)
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return fa.unpack(fa.handle(message, context, example.TEMPLATE, example._update).content)


@pytest.mark.parametrize("case, error, match", [
    ("another-id", ProtocolAbort, "asked to act as client 1"),
    ("semi-honest-run", ProtocolAbort, "malicious-model rounds only"),
    ("other-population", ProtocolAbort, "registry has 6"),
    ("low-corrupt-fraction", ProtocolAbort, "requires at least 0.1"),
    ("no-identity", ParameterError, "needs this node's identity"),
    ("key-without-registry", ParameterError, "set both node config keys"),
    ("identify-without-identity", ProtocolAbort, "identify needs this node.s identity"),
])
def test_a_node_refuses_what_its_identity_rules_out(example, tmp_path, case, error, match) -> None:
    keys, registry = enrol(tmp_path / "pki", 6)
    node_config = _node_config(tmp_path, 0, keys[0], registry)
    run_config, envelope = dict(MALICIOUS), fa.Envelope("advertise", 0, 0, 6, b"")
    if case == "another-id":
        envelope = fa.Envelope("advertise", 0, 1, 6, b"")
    elif case == "semi-honest-run":
        run_config = dict(RUN_CONFIG)
    elif case == "other-population":
        envelope = fa.Envelope("advertise", 0, 0, 5, b"")
    elif case == "low-corrupt-fraction":
        run_config |= {"secagg-corrupt-fraction": 0.05}
    elif case == "no-identity":
        node_config = _node_config(tmp_path, 0, None, None)
    elif case == "key-without-registry":
        node_config.pop(identity.REGISTRY)
    elif case == "identify-without-identity":
        node_config, envelope = _node_config(tmp_path, 0, None, None), fa.Envelope("identify", 0, 0, 6, b"")
    context = Context(RUN_ID, NODE_IDS[0], node_config, RecordDict(), run_config)
    with pytest.raises(error, match=match):
        _ask(example, context, envelope)
    assert NodeStore(tmp_path / "node0", f"run{RUN_ID}-node{NODE_IDS[0]}").status(0) == "absent"


def test_the_same_node_advertises_as_its_own_entry(example, tmp_path) -> None:
    """The control of the refusals above: the unchanged request is answered and starts a round."""
    keys, registry = enrol(tmp_path / "pki", 6)
    context = Context(RUN_ID, NODE_IDS[0], _node_config(tmp_path, 0, keys[0], registry), RecordDict(), dict(MALICIOUS))
    reply = _ask(example, context, fa.Envelope("advertise", 0, 0, 6, b""))
    assert (reply.step, reply.client_id) == ("advertise", 0) and len(reply.payload) > 64
    assert NodeStore(tmp_path / "node0", f"run{RUN_ID}-node{NODE_IDS[0]}").status(0) == "active"


def test_a_node_claims_its_own_entry_deterministically(example, tmp_path) -> None:
    keys, registry_path = enrol(tmp_path / "pki", 6)
    context = Context(RUN_ID, NODE_IDS[3], _node_config(tmp_path, 3, keys[3], registry_path), RecordDict(),
                      dict(MALICIOUS))
    first, again = (_ask(example, context, fa.Envelope("identify", 7, 0, 6, b"")) for _ in range(2))
    assert first == again and first.client_id == 3
    registry = identity.Registry.read(registry_path)
    session = identity.bind_registry(fa.round_context(RUN_ID, 7, run_config=MALICIOUS), registry)
    registry.verify_claim(session, NODE_IDS[3], 3, first.payload)
    with pytest.raises(IntegrityError):
        registry.verify_claim(session, NODE_IDS[2], 3, first.payload)  # bound to the Flower node id


# -- hostile ServerApp, in process ----------------------------------------------------------------------------------
@pytest.fixture
def hostile(monkeypatch):
    monkeypatch.syspath_prepend(str(HOSTILE_DIR))
    from secagg_hostile_app import app

    return app


HONEST_NODES = NODE_IDS[:4]


def hostile_run(hostile, tmp_path, attack: str, malicious: bool) -> dict[str, Any]:
    """4 honest nodes (partition i = registry entry i) and 1 corrupt client played by the attacker."""
    keys, registry = enrol(tmp_path / "pki", 5)
    run_config = dict(HOSTILE_CONFIG) | {"hostile-attack": attack, "secagg-poll-interval": 0.01,
                                         "secagg-stage-timeout": 5.0, "secagg-node-timeout": 5.0}
    if malicious:
        run_config |= {"secagg-registry": str(registry), "hostile-corrupt-keys": str(keys[4])}
    else:
        run_config |= {"secagg-threat": "semi-honest"}
    contexts = {node: Context(RUN_ID, node, _node_config(tmp_path, p, keys[p] if malicious else None,
                                                           registry if malicious else None),
                              RecordDict(), run_config) for p, node in enumerate(HONEST_NODES)}
    report: dict[str, Any] = hostile.attack(LocalGrid(hostile.client_app, contexts),
                                            Context(RUN_ID, 1, {}, RecordDict(), run_config))
    report["partition_of"] = ({c: c for c in range(4)} if malicious
                              else {c: HONEST_NODES.index(n) for c, n in enumerate(sorted(HONEST_NODES))})
    report["run_config"] = run_config
    return report


def victim_input_recovered(hostile, report: dict[str, Any]) -> bool:
    """Whether the attacker's unmasked vector is the victim's weighted update (to the grid step)."""
    if report["recovered"] is None:
        return False
    config = fa.session_config(report["run_config"], report["num_clients"], hostile.TEMPLATE)
    values, weight = config.encoding.decode(np.array(report["recovered"], dtype=config.encoding.dtype))
    update, true_weight = hostile.partition_update(report["partition_of"][report["victim"]], 0)
    step = 2.0 ** -config.encoding.fractional_bits
    return weight == true_weight and bool(np.abs(values - true_weight * Schema.of(update).flatten(update)).max() <= step)


def nothing_released_for_the_victim(report: dict[str, Any]) -> bool:
    """Fewer than t shares of each secret the attack needs reached the attacker."""
    t, victim = report["threshold"], str(report["victim"])
    seeds = report["released"]["self-mask-seed"].get(victim, [])
    keys = [report["released"]["mask-key"].get(str(peer), []) for peer in report["dropped_honest"] or [report["victim"]]]
    return len(seeds) < t and all(len(k) < t for k in keys)


@pytest.mark.parametrize("attack", ["restricted-delivery", "inconsistent-survivor-sets"])
def test_hostile_server_recovers_the_victim_against_semi_honest_nodes(hostile, tmp_path, attack) -> None:
    """The control: through Flower, the harness's attack unmasks one node's input when clients do
    not defend against a deviating server (its expected outcome in SECURITY.md)."""
    report = hostile_run(hostile, tmp_path, attack, malicious=False)
    assert (report["threat"], report["num_clients"], report["threshold"], report["corrupt"]) == ("semi-honest", 5, 2, [4])
    assert victim_input_recovered(hostile, report), report["round_error"]
    assert len(report["released"]["self-mask-seed"][str(report["victim"])]) >= report["threshold"]
    assert not nothing_released_for_the_victim(report)  # the predicate the malicious runs pass can fail


@pytest.mark.parametrize("attack", ["restricted-delivery", "inconsistent-survivor-sets"])
def test_hostile_server_learns_nothing_from_malicious_model_nodes(hostile, tmp_path, attack) -> None:
    report = hostile_run(hostile, tmp_path, attack, malicious=True)
    assert (report["threat"], report["num_clients"], report["threshold"], report["quorum"]) == ("malicious", 5, 4, 4)
    assert report["recovered"] is None and not victim_input_recovered(hostile, report)
    assert nothing_released_for_the_victim(report)
    if attack == "restricted-delivery":
        assert report["victim"] == 0 and report["shown"] == [1, 2, 4] and report["dropped_honest"] == [1, 2]
        assert report["released"] == {"self-mask-seed": {}, "mask-key": {}} and report["survivor_signatures"] == []
    assert report["round_error"].startswith(("InsufficientParties", "ProtocolAbort"))
    assert_refused_for_the_right_reason(report, attack)


REFUSALS = {  # the stage at which honest nodes refuse each attack, and their reason
    "restricted-delivery": ("consistency", "InsufficientParties", "the quorum is"),
    "inconsistent-survivor-sets": ("unmask", "ProtocolAbort", "survivor signatures"),
}


def assert_refused_for_the_right_reason(report: dict[str, Any], attack: str) -> None:
    """Not just "the round failed": at least two honest nodes refused, at the stage and for the reason
    the defence gives, and no honest node left earlier for an unrelated one."""
    stage, error, reason = REFUSALS[attack]
    assert len(report["drops"]) >= 2, report["drops"]
    for node, dropped_at, why in report["drops"]:
        assert dropped_at == stage and error in why and reason in why, (node, dropped_at, why)


# -- a real deployment --------------------------------------------------------------------------------------------------
DEPLOYMENT = pytest.mark.skipif(bool(_deployment_unavailable()), reason=_deployment_unavailable() or "available")


@pytest.mark.flower
@pytest.mark.slow
@DEPLOYMENT
def test_malicious_round_on_a_local_flower_deployment(example, tmp_path) -> None:
    """4 SuperNodes with identities; partition 3 crashes when asked for its masked input."""
    keys, registry = enrol(tmp_path / "pki", 4)
    nodes = [{"partition-id": i, "num-partitions": 4, identity.IDENTITY_KEY: str(keys[i]),
              identity.REGISTRY: str(registry)} for i in range(4)]
    nodes[3] |= {"drop-at": "mask", "drop-mode": "crash"}
    run_config = {"secagg-threat": "malicious", "secagg-num-nodes": 4, "secagg-dropout-fraction": 0.25,
                  "secagg-stage-timeout": 30.0, "secagg-poll-interval": 0.2, "secagg-registry": str(registry)}
    run = run_local(APP_DIR, nodes, run_config, timeout=180.0)
    (report,) = run.result
    assert list(report["dropped"].values()) == ["mask"] and len(report["survivors"]) == 3
    assert (report["threshold"], report["weight_sum"]) == (3, 1 + 2 + 3)
    assert set(report["stage_seconds"]) == {"identify", "advertise", "share", "mask", "consistency", "unmask"}
    expected = expected_average(example, [0, 1, 2])
    assert np.abs(np.array(report["average"]) - expected).max() <= report["error_bound"]
    print(f"\nmalicious Flower round: {run.seconds:.1f}s wall, stages {report['stage_seconds']}")


@pytest.mark.flower
@pytest.mark.slow
@DEPLOYMENT
def test_hostile_serverapp_learns_nothing_on_a_local_flower_deployment(hostile, tmp_path) -> None:
    """Restricted delivery (SECURITY.md's regression) from a hostile ServerApp with a colluding client
    against 4 real SuperNodes holding identities: they refuse the survivor set, release nothing."""
    keys, registry = enrol(tmp_path / "pki", 5)
    nodes = [{"partition-id": i, identity.IDENTITY_KEY: str(keys[i]), identity.REGISTRY: str(registry)}
             for i in range(4)]
    run_config = {"hostile-attack": "restricted-delivery", "secagg-registry": str(registry),
                  "hostile-corrupt-keys": str(keys[4]), "secagg-num-nodes": 4, "secagg-poll-interval": 0.2}
    run = run_local(HOSTILE_DIR, nodes, run_config, timeout=180.0)
    report = run.result | {"partition_of": {c: c for c in range(4)},
                           "run_config": dict(HOSTILE_CONFIG) | run_config}
    assert (report["threat"], report["threshold"], report["quorum"], report["victim"]) == ("malicious", 4, 4, 0)
    assert report["shown"] == [1, 2, 4] and report["dropped_honest"] == [1, 2]
    assert report["recovered"] is None and nothing_released_for_the_victim(report)
    assert report["released"] == {"self-mask-seed": {}, "mask-key": {}} and report["survivor_signatures"] == []
    assert report["round_error"].startswith("InsufficientParties")
    assert_refused_for_the_right_reason(report, "restricted-delivery")
    print(f"\nhostile Flower round: {run.seconds:.1f}s wall; {report['round_error']}")
