"""TEST ONLY: a ServerApp that attacks its own SuperNodes with the audit harness's deviating server.

The ClientApp is the library's honest one (:func:`secagg.adapters.flower.make_client_app`). The
ServerApp is not: it drives :class:`secagg.audit.adversarial_server.AdversarialServer` through the
adapter's own round loop (``run_round(..., server=...)``) with one of the harness's scripts:

- ``restricted-delivery`` (:class:`secagg.audit.attacks_isolation.Isolation`): show a victim only
  t - 1 share holders, then call the honest ones dropped (the regression of SECURITY.md);
- ``inconsistent-survivor-sets`` (:func:`secagg.audit.attacks_unmask.inconsistent_view`): tell half
  the victim's peers it dropped and the rest that it survived.

The server colludes with corrupt clients (the last c ids, as the harness assumes). They run real
client code inside the ServerApp's process (:class:`CorruptNode`) with the harness's replayable
randomness, so the attacker knows their mask keys; :class:`CollusionGrid` answers their messages
in-process and forwards everything else to the real nodes. In a malicious-model run the corrupt
clients' identity keys (``hostile-corrupt-keys``, comma-separated, in registry order) are enrolled
like anyone's. The app writes what it obtained to ``secagg-result-path``: which shares the honest
nodes released for whom, the survivor-set signatures, and the victim's input if it could unmask it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
from flwr.app import Context, Error, Message
from flwr.serverapp import Grid, ServerApp

from secagg import SecAggClient, SecAggError
from secagg.adapters import flower as fa
from secagg.adapters.identity import NodeIdentity, Registry, bind_registry, read_identity_key
from secagg.audit.adversarial_server import AdversarialServer
from secagg.audit.attacks_isolation import Isolation, corrupt_ids, corrupt_random
from secagg.audit.attacks_unmask import VICTIM, inconsistent_view
from secagg.protocols.secagg import Stage
from secagg.protocols.secagg import messages as m

TEMPLATE = {"lora_A": np.zeros((2, 3), dtype=np.float32), "lora_B": np.zeros(3, dtype=np.float32)}


def partition_update(partition: int, round_number: int) -> tuple[dict[str, np.ndarray], int]:
    """What an honest node of partition ``partition`` contributes (weight ``partition + 1``)."""
    out = {}
    for index, (name, zeros) in enumerate(TEMPLATE.items()):
        grid = np.arange(zeros.size, dtype=np.float64).reshape(zeros.shape)
        out[name] = ((partition + 1) * 0.375 - grid * 0.25 * (index + 1) + round_number).astype(np.float32)
    return out, partition + 1


client_app = fa.make_client_app(TEMPLATE, lambda context, rnd: partition_update(int(context.node_config["partition-id"]), rnd))


class CorruptNode:
    """A client colluding with the server: honest client code, randomness the attacker replays."""

    def __init__(self, client_id: int, identity: NodeIdentity | None, run_id: int, run_config: Any) -> None:
        self.client_id, self.identity, self.run_id, self.run_config = client_id, identity, run_id, run_config
        self.client: SecAggClient | None = None

    def answer(self, message: Message) -> Message:
        envelope = fa.unpack(message.content)
        session = fa.round_context(self.run_id, envelope.round_number, run_config=self.run_config)
        node = self.identity
        if node is not None:
            session = bind_registry(session, node.registry)
        if envelope.step == "identify":
            assert node is not None
            payload = node.claim(session, message.metadata.dst_node_id)
        elif envelope.step == "advertise":
            config = fa.session_config(self.run_config, envelope.num_clients, TEMPLATE)
            self.client = SecAggClient(
                config, self.client_id, round_number=envelope.round_number, context=session,
                random=corrupt_random(self.client_id), identity=node.key if node else None,
                registry=node.registry.as_dict() if node else None)
            payload = self.client.advertise()
        else:
            assert self.client is not None
            if self.client.stage is Stage.MASK:
                self.client.set_input({k: np.zeros_like(v) for k, v in TEMPLATE.items()}, 1)
            reply = self.client.handle(envelope.payload)
            assert reply is not None
            payload = reply
        answer = fa.Envelope(envelope.step, envelope.round_number, self.client_id, envelope.num_clients, payload)
        return Message(fa.pack(answer), reply_to=message)


class CollusionGrid(fa.GridProxy):
    """The real grid, plus the corrupt clients' nodes answered in this process."""

    def __init__(self, inner: Grid, corrupt: dict[int, CorruptNode]) -> None:
        super().__init__(inner)
        self.corrupt = corrupt
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return [*self.inner.get_node_ids(), *self.corrupt]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ours = [msg for msg in messages if msg.metadata.dst_node_id in self.corrupt]
        theirs = iter(self.inner.push_messages([msg for msg in messages if msg.metadata.dst_node_id not in self.corrupt]))
        ids = {}
        for msg in ours:
            msg.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            try:
                reply = self.corrupt[msg.metadata.dst_node_id].answer(msg)
            except SecAggError as exc:  # it runs honest client code, which refuses too
                reply = Message(Error(2, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[mid] = reply
            ids[id(msg)] = mid
        return [ids[id(msg)] if id(msg) in ids else next(theirs) for msg in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = list(message_ids)
        theirs = [mid for mid in wanted if mid not in self._replies]
        ours = [self._replies.pop(mid) for mid in wanted if mid in self._replies]
        return ours + list(self.inner.pull_messages(theirs)) if theirs else ours

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _released(server: AdversarialServer) -> dict[str, dict[str, list[int]]]:
    """Share kind -> owner -> the holders that released a share of it to the attacker."""
    out: dict[str, dict[str, list[int]]] = {"self-mask-seed": defaultdict(list), "mask-key": defaultdict(list)}
    for holder, body in server.responses:
        for owner, kind in zip(body.owners, body.kinds):
            name = "self-mask-seed" if kind == m.ShareKind.SELF_MASK_SEED else "mask-key"
            out[name][str(owner)].append(holder)
    return {kind: {owner: sorted(holders) for owner, holders in by.items()} for kind, by in out.items()}


class _DropLog(logging.Handler):
    """Collects the round loop's "node N dropped at STAGE (REASON)" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.entries: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("secagg round %d: node %d dropped at %s"):
            _, node, stage, reason = record.args  # type: ignore[misc]
            self.entries.append((int(node), str(stage), str(reason)))


def attack(grid: Grid, context: Context) -> dict[str, Any]:
    """Run round 0 under the configured attack and report what the attacker obtained."""
    cfg = context.run_config
    nodes = fa._wait_for_nodes(grid, int(cfg["secagg-num-nodes"]), float(cfg["secagg-node-timeout"]))
    registry = Registry.read(str(cfg["secagg-registry"])) if cfg.get("secagg-registry") else None
    keys = [read_identity_key(p) for p in str(cfg.get("hostile-corrupt-keys", "")).split(",") if p]
    count = len(keys) if registry else int(cfg["hostile-corrupt-nodes"])
    config = fa.session_config(cfg, len(registry) if registry else len(nodes) + count, TEMPLATE)
    corrupt = corrupt_ids(config)
    if len(corrupt) != count:
        raise SystemExit(f"the run assumes {len(corrupt)} corrupt clients; the attacker brought {count}")
    identities = [NodeIdentity(k, registry, registry.client_of(k.public_bytes)) for k in keys] if registry else []
    if identities and [i.client_id for i in identities] != corrupt:
        raise SystemExit(f"the corrupt keys must be the registry's last entries {corrupt}")
    fake = {max(nodes) + 1 + i: CorruptNode(cid, identities[i] if identities else None, context.run_id, cfg)
            for i, cid in enumerate(corrupt)}  # above every real node id: the last ids when sorted
    base = fa.round_context(context.run_id, 0, run_config=cfg)
    isolation = Isolation(corrupt)
    script = isolation.script if cfg["hostile-attack"] == "restricted-delivery" else inconsistent_view(config)
    server = AdversarialServer(config, script=script, context=bind_registry(base, registry) if registry else base,
                               registry=registry.as_dict() if registry else None)
    error = ""
    drops = _DropLog()
    fa._LOG.addHandler(drops)
    try:
        fa.run_round(CollusionGrid(grid, fake), [*nodes, *fake], config, round_number=0, context=base,
                     stage_timeout=float(cfg["secagg-stage-timeout"]), poll_interval=float(cfg["secagg-poll-interval"]),
                     registry=registry, server=server)
    except SecAggError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        fa._LOG.removeHandler(drops)
    plan = isolation.plan
    recovered = isolation.recover(server) if cfg["hostile-attack"] == "restricted-delivery" else server.recover(VICTIM)
    return {
        "attack": cfg["hostile-attack"],
        "threat": config.threat.adversary.value,
        "num_clients": config.num_clients,
        "threshold": config.threshold,
        "quorum": config.quorum,
        "corrupt": corrupt,
        "victim": plan.victim if plan else VICTIM,
        "shown": list(plan.shown) if plan else None,
        "dropped_honest": list(plan.dropped_honest) if plan else None,
        "released": _released(server),
        "survivor_signatures": sorted(server.signatures),
        "recovered": None if recovered is None else [int(w) for w in recovered],
        "round_error": error,
        # why each real node left the round: (Flower node id, stage, reason), from the round loop's log
        "drops": [[node, stage, reason] for node, stage, reason in drops.entries if node not in fake],
    }


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    report = attack(grid, context)
    with open(str(context.run_config["secagg-result-path"]), "w", encoding="utf-8") as handle:
        json.dump(report, handle)
