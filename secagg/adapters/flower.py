"""Flower adapter: SecAgg, SecAgg+ and CKKS rounds over Flower's Message API (written against flwr 1.42).

This is the only module of the package that imports ``flwr``. Flower moves bytes; secagg keeps the
protocol. One round, the same loop for every registered protocol (``secagg-protocol``):

1. The ServerApp lists the connected SuperNodes and maps them to client ids ``0..n-1`` in sorted
   node-id order. Every node gets an ``advertise`` message naming its client id and ``n``.
2. Each ClientApp rebuilds the session config from the run config (identical on every party) and a
   template of the update, answers with its advertisement, and from then on answers each stage.
3. The ServerApp feeds every reply into the protocol's server (:func:`secagg.new_server`), closes
   the stage with ``advance()`` once all nodes answered or ``stage-timeout`` passed, and sends the
   next stage's messages; the step names are the server's stages (SecAgg: share, mask,
   [consistency,] unmask; CKKS: generate, upload, decrypt). A node that errs, answers late or sends a
   rejected message is dropped; the protocol recovers as long as enough survive (SecAgg: the
   threshold; CKKS: one committee member to generate the key, ``min_contributors`` uploads, one
   live key holder to decrypt).

CKKS key distribution runs over the same messages: the server sends the committee's key list to
one member (``generate``), which answers with the public context and the secret context sealed to
each other member; the ``upload`` step carries the public context and each member's sealed secret
context to every node; the ``decrypt`` step goes to one key holder at a time. The committee is the
first ``secagg-ckks-committee`` client ids, i.e. the nodes with the smallest node ids.

Message layout (``message_type = "query.secagg"``, both directions): a :class:`ConfigRecord`
``"secagg.meta"`` with ``version``, ``step``, ``round``, ``client-id``, ``num-clients``, and an
:class:`ArrayRecord` ``"secagg.payload"`` holding one :class:`Array` (dtype ``uint8``, stype
``"secagg/wire-v1"``) whose ``data`` is secagg's canonical message, untouched. Arrays travel in
chunks, so large masked inputs pass without Flower's per-record limits; nothing is pickled.

Client state across messages: Flower 1.42 starts a new ``flwr-clientapp`` process for every
message, and only ``Context.state`` persists. It is not used for the protocol state, for two reasons:
it would put secrets (private keys, seeds, neighbours' shares, a CKKS secret key) into a Flower
record, and Flower pushes a ClientApp's reply *before* its updated context, so a reply can leave the
node while the state that produced it is not saved yet. A client answering a stage twice from the
same state (a fork) can reveal both kinds of share of one neighbour, or encrypt its input twice. The
ClientApp therefore keeps a private node-local write-ahead record (:mod:`.roundstore`), committed
under a lock before the reply is returned: :class:`~.nodestate.NodeStore` rebuilds a masking client
by deterministic replay, :class:`~.ckksstate.CkksNodeStore` imports a CKKS client's saved state. Set
its directory with the node config key ``secagg-state-dir`` (default: ``$XDG_RUNTIME_DIR/secagg-flower``
or ``~/.cache/secagg/flower``).

Usage, in the module a Flower App's ``pyproject.toml`` points at::

    server_app = make_server_app(template)  # or call run_round(grid, ...) inside your own ServerApp
    client_app = make_client_app(template, lambda context, rnd: (local_update(context), num_examples))

``template`` has the shape of every update (state dict, tensor list or array); ``secagg`` must be
importable on the SuperLink and every SuperNode. ``examples/flower_app`` is a complete app and
:mod:`secagg.adapters.flower_launcher` runs it on a local deployment.

Malicious-server variant (``secagg-threat = "malicious"``): clients sign their keys and the survivor
set with Ed25519 identity keys from a registry (:mod:`secagg.adapters.identity`, which says why Flower's
node ids and node authentication cannot serve). Each node's config names its key and the registry
(``secagg-identity-key``, ``secagg-registry``); the ServerApp's run config names the same registry
(``secagg-registry``). A round then opens with an ``identify`` step: each node answers with its
registry id and a signed claim, and the server maps nodes to client ids by these claims
(``client-id`` is 0 in the identify request). The consistency round is one more step.

Run config keys (all optional; the app's ``pyproject.toml`` must declare the ones it overrides):
``secagg-protocol`` ("secagg+", "secagg" or "ckks"), ``secagg-clip-bound``, ``secagg-fractional-bits``
(CKKS: the grid 2^-f; absent: the finest its noise bound allows), ``secagg-max-weight``; masking only:
``secagg-threat`` ("semi-honest" or "malicious"), ``secagg-corrupt-fraction``, ``secagg-dropout-fraction``;
CKKS only: ``secagg-ckks-preset`` ("addition-128", "precision-128"), ``secagg-ckks-committee`` (key
holders, default 3), ``secagg-ckks-min-contributors`` (the fewest uploads a key holder decrypts a sum
of, default 2); server only: ``secagg-num-nodes`` (wait for this many), ``secagg-node-timeout``,
``secagg-stage-timeout``, ``secagg-poll-interval``, ``secagg-rounds``, ``secagg-result-path``
(a JSON report of every round), ``secagg-registry`` (malicious only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .. import defaults
from ..encoding import FixedPoint, Schema
from ..errors import MalformedMessage, ParameterError, ProtocolAbort, SecAggError
from ..params import SecAggConfig, ThreatModel
from ..protocols.ckks import PRESETS, CkksConfig, CkksResult
from ..protocols.registry import PROTOCOLS, new_server, protocol_of
from ..protocols.secagg import AggregateResult
from ..wire import Header
from .ckksstate import CkksNodeStore
from .identity import DEFAULT_MIN_CORRUPT, MIN_CORRUPT, REGISTRY, NodeIdentity, Registry, admit, bind_registry, corrupt_floor
from .nodestate import NodeStore
from .roundstore import RoundSpec, RoundStore, SessionConfig

__all__ = [
    "MESSAGE_TYPE",
    "Envelope",
    "FlowerRound",
    "GridProxy",
    "make_client_app",
    "make_server_app",
    "pack",
    "round_context",
    "run_round",
    "serve",
    "session_config",
    "unpack",
]

MESSAGE_TYPE = "query.secagg"
ENVELOPE_VERSION = 1
STYPE = "secagg/wire-v1"
_META, _PAYLOAD, _ARRAY = "secagg.meta", "secagg.payload", "bytes"
_META_KEYS = {"version", "step", "round", "client-id", "num-clients"}
_STEPS = frozenset({"identify"} | {stage for protocol in PROTOCOLS.values() for stage in protocol.message_stages})
_STORES: dict[str, type[RoundStore]] = {name: store for store in (NodeStore, CkksNodeStore) for name in store.protocols}
_THREATS = {"semi-honest": ThreatModel.semi_honest, "malicious": ThreatModel.malicious}
_LOG = logging.getLogger("flwr").getChild("secagg")  # Flower streams its own logger's records

UpdateFn = Callable[[Context, int], "tuple[Any, int]"]
"""``(context, round_number) -> (update, integer weight)``, called once per round, at the step that
takes the input (SecAgg: mask; CKKS: upload)."""
RoundResult = Union[AggregateResult, CkksResult]
"""What a round releases: every protocol's result has ``weighted_sum``, ``weight_sum``, ``survivors``,
``error_bound`` and ``average()``."""


# -- message packing ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Envelope:
    """One secagg message and the routing fields the other side needs to find its session."""

    step: str
    round_number: int
    client_id: int
    num_clients: int
    payload: bytes

    def __post_init__(self) -> None:
        if self.step not in _STEPS:
            raise MalformedMessage(f"unknown secagg step {self.step!r}")
        if not (0 <= self.round_number < 2**63 and 0 <= self.client_id < self.num_clients < 2**31):
            raise MalformedMessage("round, client id or client count out of range")


def pack(envelope: Envelope) -> RecordDict:
    """The Flower content carrying ``envelope``; the payload bytes are stored as they are."""
    meta = ConfigRecord({
        "version": ENVELOPE_VERSION,
        "step": envelope.step,
        "round": envelope.round_number,
        "client-id": envelope.client_id,
        "num-clients": envelope.num_clients,
    })
    array = Array(dtype="uint8", shape=(len(envelope.payload),), stype=STYPE, data=bytes(envelope.payload))
    return RecordDict({_META: meta, _PAYLOAD: ArrayRecord({_ARRAY: array})})


def unpack(content: RecordDict) -> Envelope:
    """Parse content made by :func:`pack`; anything else is refused.

    Raises:
        MalformedMessage: missing or extra records or fields, wrong types, or a bad payload array.
    """
    if set(content.keys()) != {_META, _PAYLOAD}:
        raise MalformedMessage(f"expected records {sorted((_META, _PAYLOAD))}, got {sorted(content.keys())}")
    meta, payload = content[_META], content[_PAYLOAD]
    if not isinstance(meta, ConfigRecord) or set(meta.keys()) != _META_KEYS:
        raise MalformedMessage("the secagg meta record is malformed")
    if meta["version"] != ENVELOPE_VERSION:
        raise MalformedMessage(f"unsupported secagg envelope version {meta['version']!r}")
    step, numbers = meta["step"], [_integer(meta, k) for k in ("round", "client-id", "num-clients")]
    if not isinstance(step, str):
        raise MalformedMessage("the secagg step must be a string")
    if not isinstance(payload, ArrayRecord) or list(payload.keys()) != [_ARRAY]:
        raise MalformedMessage("the secagg payload record is malformed")
    array = payload[_ARRAY]
    data = array.data
    if (array.dtype, array.stype, tuple(array.shape)) != ("uint8", STYPE, (len(data),)):
        raise MalformedMessage("the secagg payload array has the wrong dtype, stype or shape")
    return Envelope(step, numbers[0], numbers[1], numbers[2], bytes(data))


def _integer(meta: ConfigRecord, key: str) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"secagg meta field {key!r} must be an integer")
    return value


# -- session parameters (identical on every party) ------------------------------------------------------
def _setting(run_config: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = run_config.get(key, default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ParameterError(f"run config {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def session_config(run_config: Mapping[str, Any], num_clients: int, template: Any) -> SessionConfig:
    """The session config both sides derive from the run config, ``n`` and the update template.

    For SecAgg / SecAgg+, ``secagg-threat`` picks the threat model ("semi-honest", the default, or
    "malicious"; the latter needs identities, see :mod:`secagg.adapters.identity`, and ``n`` is then the
    registry's size). For CKKS see :func:`_ckks_config`.
    Raises:
        ParameterError: a setting is invalid or unsafe, or the protocol is unknown.
    """
    protocol = _setting(run_config, "secagg-protocol", str, "secagg+")
    if protocol == "ckks":
        return _ckks_config(run_config, num_clients, template)
    threat_name = _setting(run_config, "secagg-threat", str, "semi-honest")
    if threat_name not in _THREATS:
        raise ParameterError(f"run config 'secagg-threat' must be one of {sorted(_THREATS)}, got {threat_name!r}")
    threat = _THREATS[threat_name](
        _setting(run_config, "secagg-corrupt-fraction", float, 0.1),
        _setting(run_config, "secagg-dropout-fraction", float, 0.2),
    )
    encoding = FixedPoint(
        clip_bound=_setting(run_config, "secagg-clip-bound", float, defaults.CLIP_BOUND),
        fractional_bits=_setting(run_config, "secagg-fractional-bits", int, defaults.FRACTIONAL_BITS),
        max_weight=_setting(run_config, "secagg-max-weight", int, 1),
        max_clients=num_clients,
    )
    return SecAggConfig.for_protocol(protocol, num_clients, Schema.of(template), threat, encoding)


def _ckks_config(run_config: Mapping[str, Any], num_clients: int, template: Any) -> CkksConfig:
    """The CKKS config: preset, committee (the first ``secagg-ckks-committee`` client ids, at most n),
    minimum contributors, clip bound, maximum weight and grid from the run config.

    The masking protocols' ``secagg-corrupt-fraction`` and ``secagg-dropout-fraction`` do not apply:
    CKKS's guarantee rests on no key holder colluding with the server (SECURITY.md, CKKS section).
    Raises:
        ParameterError: unknown preset, a committee of fewer than one, or unsafe parameters.
    """
    preset = _setting(run_config, "secagg-ckks-preset", str, defaults.CKKS_PRESET)
    if preset not in PRESETS:
        raise ParameterError(f"run config 'secagg-ckks-preset' must be one of {sorted(PRESETS)}, got {preset!r}")
    committee = _setting(run_config, "secagg-ckks-committee", int, defaults.CKKS_COMMITTEE_SIZE)
    if committee < 1:
        raise ParameterError(f"run config 'secagg-ckks-committee' must be at least 1, got {committee}")
    bits = run_config.get("secagg-fractional-bits")
    return CkksConfig(
        num_clients, Schema.of(template), PRESETS[preset], tuple(range(min(committee, num_clients))),
        clip_bound=_setting(run_config, "secagg-clip-bound", float, defaults.CLIP_BOUND),
        max_weight=_setting(run_config, "secagg-max-weight", int, 1),
        min_contributors=_setting(run_config, "secagg-ckks-min-contributors", int,
                                  min(num_clients, least_contributors(num_clients, DEFAULT_MIN_CORRUPT))),
        fractional_bits=None if bits is None else _setting(run_config, "secagg-fractional-bits", int, 0),
    )


def round_context(run_id: int, round_number: int, model: bytes = b"",
                  run_config: Mapping[str, Any] | None = None) -> bytes:
    """Bytes bound into the session: each party derives them itself from the run, the round, (when
    given) a digest of the model it trained from, and the run config it was given. So a node sent
    another model than the rest, or another run config (whose keys an app may read, e.g. a learning
    rate), is in another session and the round cannot complete with it (the model-inconsistency
    attack). The server passes the run config its ServerApp was given; Flower gives every party of a
    run the same one unless the SuperLink lies.

    Raises:
        ParameterError: a model digest over 64 bytes, or a run config that is not flat JSON-able scalars.
    """
    if len(model) > 64:
        raise ParameterError("the model digest is at most 64 bytes")
    try:
        config = json.dumps(dict(run_config or {}), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise ParameterError("the run config must hold finite numbers, booleans and strings only") from None
    return hashlib.sha256(b"secagg/v1/flower-round\x00" + struct.pack("<QQB", run_id, round_number, len(model))
                          + model + hashlib.sha256(config.encode()).digest()).digest()


class GridProxy(Grid):
    """A Grid that hands every call to ``inner``: subclass it to watch or reroute some messages
    (fedlm counts the bytes each node sends; the audit's hostile app answers for its own clients)."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


# -- server side ----------------------------------------------------------------------------------------
@dataclass
class FlowerRound:
    """One finished round of any protocol: the aggregate and what each Flower node did."""

    round_number: int
    result: RoundResult
    nodes: dict[int, int]
    dropped: dict[int, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def survivor_nodes(self) -> list[int]:
        return [self.nodes[c] for c in self.result.survivors]

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary (the contract of ``secagg-result-path``; fields are added, never renamed).

        Every protocol reports ``threshold`` (CKKS: the fewest uploads a key holder decrypts a sum of),
        ``degree`` (None for CKKS), ``survivors`` and ``dropped`` (node ids), ``weight_sum``,
        ``error_bound`` (of ``average``, against the exact weighted average of the survivors' clipped
        inputs) and ``average``; CKKS adds ``preset``, ``committee`` and ``decrypted_by`` (node ids)
        and ``grid_bits``.
        """
        result = self.result
        report: dict[str, Any] = {
            "round": self.round_number,
            "protocol": result.config.protocol,
            "num_clients": result.config.num_clients,
        }
        if isinstance(result, CkksResult):
            report |= {"threshold": result.config.min_contributors, "degree": None}
        else:
            report |= {"threshold": result.config.threshold, "degree": result.config.degree}
        report |= {
            "nodes": {str(c): n for c, n in self.nodes.items()},
            "survivors": self.survivor_nodes,
            "dropped": {str(n): s for n, s in self.dropped.items()},
            "weight_sum": result.weight_sum,
            "error_bound": result.error_bound,
            "average": result.average_vector().tolist(),
            "stage_seconds": self.stage_seconds,
        }
        if isinstance(result, CkksResult):
            cfg = result.config
            report |= {"preset": cfg.preset.name, "committee": [self.nodes[c] for c in cfg.committee],
                       "decrypted_by": self.nodes[result.decrypted_by], "grid_bits": cfg.grid_bits}
        return report


def _exchange(
    grid: Grid, outbox: Mapping[int, RecordDict], timeout: float, poll: float, group: str
) -> tuple[dict[int, RecordDict], dict[int, str]]:
    """Send one message per node; collect replies until all arrived or ``timeout`` passed."""
    messages = [Message(content, node, MESSAGE_TYPE, ttl=timeout, group_id=group) for node, content in outbox.items()]
    pending = {mid: msg.metadata.dst_node_id for mid, msg in zip(grid.push_messages(messages), messages) if mid}
    replies: dict[int, RecordDict] = {}
    failures = {node: "not delivered" for node in set(outbox) - set(pending.values())}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if reply.has_error():
                failures[node] = f"error {reply.error.code}: {reply.error.reason}"
            elif reply.metadata.src_node_id != node:
                failures[node] = "reply from another node"
            else:
                replies[node] = reply.content
        if pending:
            time.sleep(poll)
    failures.update({node: f"no reply within {timeout:g}s" for node in pending.values()})
    return replies, failures


def _deliver(server: Any, step: str, node: int, client: int, content: RecordDict) -> str | None:
    """Feed one reply to the server; the reason it was refused, or None."""
    try:
        envelope = unpack(content)
        if (envelope.step, envelope.client_id, envelope.round_number) != (step, client, server.round):
            return "reply for another step, client or round"
        if Header.decode(envelope.payload)[0].sender != client:
            return "the secagg header names another client"
        server.receive(envelope.payload)
    except SecAggError as exc:
        return f"rejected: {type(exc).__name__}: {exc}"
    return None


def _identify(
    grid: Grid, node_ids: list[int], registry: Registry, context: bytes, round_number: int, timeout: float, poll: float
) -> tuple[dict[int, int], dict[int, str]]:
    """The identify step: client id -> node for each node whose signed claim verifies, and failures.

    A client id claimed by two nodes (one key given to both) goes to neither.
    """
    n = len(registry)
    outbox = {node: pack(Envelope("identify", round_number, 0, n, b"")) for node in node_ids}
    replies, failures = _exchange(grid, outbox, timeout, poll, str(round_number))
    claims: dict[int, list[int]] = {}
    for node, content in sorted(replies.items()):
        try:
            envelope = unpack(content)
            if (envelope.step, envelope.round_number, envelope.num_clients) != ("identify", round_number, n):
                raise ProtocolAbort("reply for another step, round or population")
            registry.verify_claim(context, node, envelope.client_id, envelope.payload)
        except SecAggError as exc:
            failures[node] = f"rejected: {type(exc).__name__}: {exc}"
            continue
        claims.setdefault(envelope.client_id, []).append(node)
    for client, claimants in claims.items():
        if len(claimants) > 1:
            failures.update({node: f"client {client} is claimed by several nodes" for node in claimants})
    return {client: claimants[0] for client, claimants in claims.items() if len(claimants) == 1}, failures


def _drop(dropped: dict[int, str], failures: Mapping[int, str], round_number: int, step: str) -> None:
    for node, reason in sorted(failures.items()):
        _LOG.warning("secagg round %d: node %d dropped at %s (%s)", round_number, node, step, reason)
        dropped.setdefault(node, step)


def run_round(
    grid: Grid,
    node_ids: list[int],
    config: SessionConfig,
    *,
    round_number: int,
    context: bytes,
    stage_timeout: float = 30.0,
    poll_interval: float = 0.2,
    registry: Registry | None = None,
    server: Any = None,
) -> FlowerRound:
    """Run one secure-aggregation round of ``config``'s protocol with the ClientApps on ``node_ids``.

    Semi-honest ``config``: the sorted node ids become client ids 0..n-1. Malicious: ``registry``
    (of ``config.num_clients`` clients) is required, the identify step maps nodes to the registry's
    ids (a node without a valid claim is dropped there; a registry entry without a node is absent,
    which the thresholds count as a dropout), and ``context`` is bound to the registry
    (:func:`~secagg.adapters.identity.bind_registry`).
    ``server`` drives another server party instead of a new honest :class:`~secagg.SecAggServer`; it
    must be built for the same config, round and (bound) context. The audit harness's deviating
    server uses it to attack real nodes; nothing else should.
    Raises:
        ParameterError: ``config`` is not a registered protocol's, or the nodes or the registry do not fit it.
        InsufficientParties: fewer than the threshold survived a stage; nothing is released.
    """
    dropped: dict[int, str] = {}
    stage_seconds: dict[str, float] = {}
    if isinstance(config, SecAggConfig) and config.threat.is_malicious:
        if registry is None or len(registry) != config.num_clients:
            raise ParameterError(f"a malicious-model round needs the registry of its {config.num_clients} clients")
        start, context = time.monotonic(), bind_registry(context, registry)
        nodes, failures = _identify(grid, node_ids, registry, context, round_number, stage_timeout, poll_interval)
        _drop(dropped, failures, round_number, "identify")
        stage_seconds["identify"] = round(time.monotonic() - start, 3)
    else:
        if registry is not None:
            raise ParameterError("a registry is for malicious-model rounds (secagg-threat = \"malicious\")")
        nodes = {client: node for client, node in enumerate(sorted(node_ids))}
        if len(nodes) != config.num_clients:
            raise ParameterError(f"{len(nodes)} nodes for a session of {config.num_clients} clients")
    if server is None:
        options = {"registry": registry.as_dict()} if registry else {}
        server = new_server(config, round_number=round_number, context=context, **options)
    ids = {node: client for client, node in nodes.items()}
    step = "advertise"
    outbox = {c: b"" for c in nodes}
    while not server.done:  # the router's loop (secagg.router.run_round), over Flower messages
        start = time.monotonic()
        envelopes = {nodes[c]: pack(Envelope(step, round_number, c, config.num_clients, data)) for c, data in outbox.items()}
        replies, failures = _exchange(grid, envelopes, stage_timeout, poll_interval, str(round_number))
        for node, content in replies.items():
            refused = _deliver(server, step, node, ids[node], content)
            if refused:
                failures[node] = refused
        _drop(dropped, failures, round_number, step)
        outbox = dict(server.advance())  # every envelope is built at once below anyway
        # a stage can repeat (CKKS: another generator, another key holder): report its total time
        stage_seconds[step] = round(stage_seconds.get(step, 0.0) + time.monotonic() - start, 3)
        step = server.stage.value
    return FlowerRound(round_number, server.result(), nodes, dropped, stage_seconds)


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(set(grid.get_node_ids()))
        if len(found) >= minimum:
            return found
        if time.monotonic() > deadline:
            raise ParameterError(f"only {len(found)} of {minimum} SuperNodes connected within {timeout:g}s")
        time.sleep(0.5)


def _write_json(path: str, data: Any) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(temporary, path)


def serve(grid: Grid, context: Context, template: Any, on_result: Callable[[int, FlowerRound], None] | None = None) -> list[FlowerRound]:
    """The ServerApp body: wait for ``secagg-num-nodes`` nodes, then run ``secagg-rounds`` rounds.

    Every node connected once the minimum is reached takes part. After each round the JSON reports
    of all rounds so far are written to ``secagg-result-path`` (if set) and ``on_result`` is called.
    Malicious-model runs read the registry named by ``secagg-registry``; ``n`` is its size.
    Raises:
        ParameterError: a setting is invalid (e.g. the registry file).
        InsufficientParties: a round lost too many nodes (its report holds the error).
    """
    cfg = context.run_config
    nodes = _wait_for_nodes(grid, _setting(cfg, "secagg-num-nodes", int, 2), _setting(cfg, "secagg-node-timeout", float, 60.0))
    registry_path = _setting(cfg, REGISTRY, str, "")
    registry = Registry.read(registry_path) if registry_path else None
    result_path = _setting(cfg, "secagg-result-path", str, "")
    reports: list[dict[str, Any]] = []
    rounds = []
    for round_number in range(_setting(cfg, "secagg-rounds", int, 1)):
        config = session_config(cfg, len(registry) if registry else len(nodes), template)
        try:
            outcome = run_round(
                grid, nodes, config, round_number=round_number,
                context=round_context(context.run_id, round_number, run_config=cfg),
                stage_timeout=_setting(cfg, "secagg-stage-timeout", float, 30.0),
                poll_interval=_setting(cfg, "secagg-poll-interval", float, 0.2), registry=registry,
            )
        except SecAggError as exc:
            reports.append({"round": round_number, "error": f"{type(exc).__name__}: {exc}"})
            if result_path:
                _write_json(result_path, reports)
            raise
        report = outcome.report()
        reports.append(report)
        rounds.append(outcome)
        _LOG.info("secagg round %d: %d survivors, dropped %s", round_number, len(report["survivors"]), report["dropped"])
        if result_path:
            _write_json(result_path, reports)
        if on_result is not None:
            on_result(round_number, outcome)
    return rounds


def make_server_app(template: Any, on_result: Callable[[int, FlowerRound], None] | None = None) -> ServerApp:
    """A ServerApp running :func:`serve`; ``template`` has the shape of every client's update."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context, template, on_result)

    return app


# -- client side ----------------------------------------------------------------------------------------
def _state_directory(context: Context) -> Path:
    configured = context.node_config.get("secagg-state-dir")
    if configured:
        return Path(str(configured))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "secagg-flower" if runtime else Path.home() / ".cache" / "secagg" / "flower"


def least_contributors(num_clients: int, floor: float) -> int:
    """The fewest inputs a CKKS key holder may decrypt a sum of, against a server that keeps only the
    victim's upload and those of the up to ceil(floor * n) clients it corrupts: ceil(floor * n) + 2,
    so every released sum holds at least two honest inputs."""
    return math.ceil(floor * num_clients - 1e-9) + 2


def _admit_ckks(config: CkksConfig, node_config: Mapping[str, Any]) -> None:
    """A node's rule for CKKS rounds, whose minimum-contributors setting the run config (the server
    side) writes: refuse one that lets a decrypted sum single out a client."""
    floor = corrupt_floor(node_config)
    least = least_contributors(config.num_clients, floor)
    if config.min_contributors < least:
        raise ProtocolAbort(f"a CKKS round must decrypt sums of at least ceil(floor * n) + 2 = {least} inputs "
                            f"(node floor {MIN_CORRUPT} = {floor}); the run allows fewer")


def handle(message: Message, context: Context, template: Any, get_update: UpdateFn, *, model: bytes = b"",
           config_for: Callable[[int], SessionConfig] | None = None,
           run_config: Mapping[str, Any] | None = None) -> Message:
    """Answer one ``query.secagg`` message of any protocol (usable from any ClientApp that registers it).

    ``config_for(n)``: the session config for n clients when the app derives it itself (fedlm does:
    its distributed-DP encoding), else :func:`session_config` from the node's run config; either way
    the node derives it, never the server.
    ``run_config``: the run config Flower gave this node, bound into the session (default: the
    context's; an app that adds keys of its own to the context passes the one it was given).
    ``model``: a digest of the model this node trained its update from, bound into the session
    (:func:`round_context`); the server must bind the digest of the model it sent, so a node sent
    another model than the rest is in another session and drops out.

    The node's client for the round lives in its private write-ahead record (:data:`_STORES` picks
    the store for the run config's protocol); ``get_update`` is called once, for the upload or mask.

    A node with an identity (node config ``secagg-identity-key`` and ``secagg-registry``) answers the
    identify step and takes part only in malicious-model rounds, as its own registry entry
    (:func:`secagg.adapters.identity.admit`); a node without one, only in semi-honest rounds.
    Raises:
        SecAggError: the message is malformed or the client refused it; Flower turns the exception
            into an error reply, which the server treats as this node dropping out.
    """
    envelope = unpack(message.content)
    node = NodeIdentity.from_node_config(context.node_config)
    given = context.run_config if run_config is None else run_config
    session = round_context(context.run_id, envelope.round_number, model, given)
    if node is not None:
        session = bind_registry(session, node.registry)
    if envelope.step == "identify":
        if node is None or envelope.num_clients != len(node.registry) or envelope.payload:
            raise ProtocolAbort("identify needs this node's identity, its registry's size and no payload")
        claim = Envelope("identify", envelope.round_number, node.client_id, envelope.num_clients,
                         node.claim(session, context.node_id))
        return Message(pack(claim), reply_to=message)
    if config_for is not None:
        config = config_for(envelope.num_clients)
    else:
        config = session_config(context.run_config, envelope.num_clients, template)
    protocol = protocol_of(config)
    if envelope.step not in protocol.server_stages(config):
        raise MalformedMessage(f"{envelope.step!r} is not a step of a {protocol.name} round")
    if isinstance(config, SecAggConfig):
        admit(node, config, envelope.client_id, context.node_config)
    elif node is not None:
        raise ProtocolAbort("this node holds an identity key and joins malicious-model rounds only")
    else:
        _admit_ckks(config, context.node_config)
    spec = RoundSpec(config, envelope.client_id, envelope.round_number, session,
                     identity=node.key if node else None, registry=node.registry.as_dict() if node else None)
    store = _STORES[protocol.name](_state_directory(context), f"run{context.run_id}-node{context.node_id}",
                                   siblings=f"run*-node{context.node_id}")
    if envelope.step == "advertise":
        if envelope.payload:
            raise MalformedMessage("the advertise request carries no payload")
        reply = store.advertise(spec)
    else:
        reply = store.respond(spec, envelope.payload, lambda: get_update(context, envelope.round_number))
    answer = Envelope(envelope.step, envelope.round_number, envelope.client_id, envelope.num_clients, reply)
    return Message(pack(answer), reply_to=message)


def make_client_app(template: Any, get_update: UpdateFn) -> ClientApp:
    """A ClientApp answering ``query.secagg``; ``get_update(context, round)`` gives (update, weight)."""
    app = ClientApp()

    @app.query("secagg")
    def secagg_step(message: Message, context: Context) -> Message:
        return handle(message, context, template, get_update)

    return app
