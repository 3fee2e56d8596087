"""Building blocks of the adversarial-server harness.

:class:`~secagg.audit.adversarial_server.AdversarialServer` (re-exported here) is the deviating
server side of a router around an honest server: it sees every client message, keeps what clients
reveal, lets a script rewrite what is sent at each stage, and tries to unmask individual inputs.
:func:`play` drives one round like :func:`secagg.router.run_round`, but records who refused what
instead of stopping, so an attack's outcome can be judged. :func:`cast` builds the honest clients.

This module attacks our own protocol on purpose: nothing here belongs in a production server.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

import numpy as np

from ..encoding import FixedPoint
from ..errors import ParameterError, SecAggError
from ..hazmat.keys import SigningKey
from ..hazmat.random import RandomSource
from ..params import SecAggConfig
from ..protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
from ..protocols.secagg import messages as m
from ..wire import HEADER_BYTES, SERVER_ID
from .adversarial_server import AdversarialServer, Deviation

__all__ = ["AdversarialServer", "Cast", "Play", "Deviation", "ACCEPTED", "replace_body", "cast", "play", "kind_name", "plain_sum", "ReplayableRandom"]

Server = Union[SecAggServer, AdversarialServer]
"""What :func:`play` drives: the honest server, or the adversarial one around it."""
# intercept(client, message) -> the messages to hand that client instead, each flagged "probe": a
# probe's rejection is recorded as a refusal of the attack, not as the end of the client's round.
Intercept = Callable[[int, bytes], list[tuple[bytes, bool]]]
Uplink = Callable[[int, bytes], bytes]
Tap = Callable[[int, int, bytes], None]
ACCEPTED = "accepted"
CONTEXT = b"global-model-digest"  # what honest parties bind, e.g. the SHA-256 of the global model


def kind_name(data: bytes) -> str:
    """The message kind named in a header, for reports (``"?"`` if the bytes are too short)."""
    if len(data) < HEADER_BYTES:
        return "?"
    try:
        return m.Kind(data[6]).name.lower().replace("_", "-")
    except ValueError:
        return f"kind-{data[6]}"


class ReplayableRandom:
    """SHA-256(seed || counter) bytes: a replayable randomness source (the attacker's own clients,
    seeded searches). Deterministic by design: never a party's real randomness."""

    def __init__(self, seed: bytes) -> None:
        self._seed, self._counter, self._buffer = seed, 0, b""

    def __call__(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._counter += 1
            self._buffer += hashlib.sha256(self._seed + self._counter.to_bytes(8, "little")).digest()
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out


@dataclass
class Cast:
    """Honest clients of one scenario and the inputs they hold (encoded ring words)."""

    config: SecAggConfig
    clients: dict[int, SecAggClient]
    inputs: dict[int, np.ndarray]
    registry: dict[int, bytes] | None


def cast(
    config: SecAggConfig,
    ids: list[int] | range,
    *,
    round_number: int = 0,
    context: bytes | Mapping[int, bytes] = CONTEXT,
    registry: dict[int, bytes] | None = None,
    identities: Mapping[int, SigningKey] | None = None,
    seed: int = 0,
    randoms: Mapping[int, RandomSource] | None = None,
) -> Cast:
    """Clients ``ids`` with random inputs; identity keys and a registry when given (or malicious).

    ``context`` may differ per client (e.g. the digest of the model each one received).
    ``randoms`` gives some clients a randomness source the attacker can replay (corrupt clients).
    """
    if identities is None and (registry is not None or config.threat.is_malicious):
        identities = {i: SigningKey.generate() for i in ids}
    if registry is None and identities is not None:
        registry = {i: k.public_bytes for i, k in identities.items()}
    rng = np.random.default_rng(seed)  # ok: synthetic inputs, not secrets
    clients, inputs = {}, {}
    for i in ids:
        ctx = context[i] if isinstance(context, Mapping) else context
        extra = {"random": randoms[i]} if randoms and i in randoms else {}
        clients[i] = SecAggClient(config, i, round_number=round_number, context=ctx,
                                  identity=identities[i] if identities else None, registry=registry, **extra)
        if not isinstance(config.encoding, FixedPoint):
            raise ParameterError("the attack harness casts clients with fixed-point inputs (no DP)")
        inputs[i] = config.encoding.encode(rng.normal(size=config.schema.size))
        clients[i].set_encoded_input(inputs[i])
    return Cast(config, clients, inputs, registry)


def plain_sum(config: SecAggConfig, inputs: Mapping[int, np.ndarray], members: list[int] | tuple[int, ...]) -> np.ndarray:
    """The modular sum of some clients' encoded inputs, as the protocol should output it."""
    total = np.zeros(config.dim, dtype=np.uint64)
    for i in members:
        total += inputs[i].astype(np.uint64)
    return (total & np.uint64(config.encoding.ring_mask)).astype(config.encoding.dtype)


@dataclass
class Play:
    """What happened in one round: who refused which message, and the result if any."""

    refusals: dict[int, str] = field(default_factory=dict)
    probes: list[tuple[int, str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    server_error: str = ""
    result: AggregateResult | None = None

    def refused_kinds(self) -> set[str]:
        return {r.split(":", 1)[0] for r in self.refusals.values()}


def _deliver(server: Server, cid: int, data: bytes, log: Play, uplink: Uplink | None, tap: Tap | None) -> None:
    if uplink is not None:
        data = uplink(cid, data)
    if tap is not None:
        tap(cid, SERVER_ID, data)
    try:
        server.receive(data)
    except SecAggError as exc:
        log.rejected.append(f"server rejected {kind_name(data)} from client {cid}: {type(exc).__name__}")


def _hand(client: SecAggClient, cid: int, data: bytes, log: Play, intercept: Intercept | None) -> bytes | None:
    """Hand the client the planned messages in order until one is accepted; return its reply."""
    plan = intercept(cid, data) if intercept is not None else [(data, False)]
    for message, probe in plan:
        if client.stage in (Stage.ABORTED, Stage.DONE):
            return None
        try:
            reply = client.handle(message)
        except SecAggError as exc:
            what = f"{kind_name(message)}: {type(exc).__name__}: {exc}"
            if probe:
                log.probes.append((cid, kind_name(message), what))
            else:
                log.refusals[cid] = what
            continue
        if probe:
            log.probes.append((cid, kind_name(message), ACCEPTED))
        return reply
    return None


def play(
    server: Server,
    clients: Mapping[int, SecAggClient],
    *,
    intercept: Intercept | None = None,
    uplink: Uplink | None = None,
    tap: Tap | None = None,
    opened: Mapping[int, bytes] | None = None,
) -> Play:
    """Run a round to its end, recording refusals instead of raising.

    Args:
        intercept: rewrites what a client is handed (see :data:`Intercept`).
        uplink: rewrites what a client sends before the server sees it.
        tap: sees (sender, recipient, bytes) of every message, as in the router.
        opened: the key-list outbox of a server whose advertise stage the caller already closed
            (clients have advertised); the round resumes from there.
    """
    log = Play()
    if opened is None:
        for cid in sorted(clients):
            data = clients[cid].advertise()
            _deliver(server, cid, data, log, uplink, tap)
    outbox: Mapping[int, bytes] | None = opened
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        if outbox is None:
            try:
                outbox = server.advance()
            except SecAggError as exc:
                log.server_error = f"{type(exc).__name__}: {exc}"
                return log
        sending, outbox = outbox, None
        for cid, data in sorted(sending.items()):
            if tap is not None:
                tap(SERVER_ID, cid, data)
            reply = _hand(clients[cid], cid, data, log, intercept) if cid in clients else None
            if reply is not None:
                _deliver(server, cid, reply, log, uplink, tap)
    if server.stage is Stage.DONE:
        log.result = server.result()
    return log


def replace_body(body: m.Body, **changes: object) -> m.Body:
    """A copy of a frozen message body with some fields changed."""
    return dataclasses.replace(body, **changes)  # type: ignore[arg-type]
