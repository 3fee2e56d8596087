"""Building blocks of the adversarial-server harness.

:class:`AdversarialServer` runs the honest server code, lets a script rewrite what it is about to
send at each stage, keeps everything clients reveal, and tries to unmask individual inputs with it.
:func:`play` drives one round like :func:`secagg.router.run_round`, but records who refused what
instead of stopping, so an attack's outcome can be judged. :func:`cast` builds the honest clients.

This module attacks our own protocol on purpose: nothing here belongs in a production server.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import IntegrityError, SecAggError
from ..hazmat.keys import AgreementKeyPair, SigningKey, derive_key
from ..hazmat.random import RandomSource
from ..hazmat.prg import MaskStream
from ..params import SecAggConfig
from ..protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
from ..protocols.secagg import messages as m
from ..protocols.secagg.common import (
    LABEL_PAIRWISE_MASK, LABEL_SELF_MASK, TO_CLIENT, TO_SERVER, apply_masks, message_key, pairwise_context,
    protocol_id,
)
from ..wire import HEADER_BYTES, SERVER_ID, Header

__all__ = ["AdversarialServer", "Cast", "Play", "Deviation", "ACCEPTED", "replace_body", "cast", "play", "kind_name", "plain_sum", "ReplayableRandom"]

Deviation = Callable[["AdversarialServer", dict[int, bytes]], dict[int, bytes]]
Preparation = Callable[["AdversarialServer"], None]
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


class AdversarialServer(SecAggServer):
    """A scriptable server that deviates from the protocol.

    Args:
        config, round_number, context, registry, random: as for :class:`SecAggServer`.
        before: stage name -> function run on the server just before that stage is closed
            (e.g. drop a client from the inbox to claim it never answered).
        script: stage name -> function mapping the honest outbox of that stage to the sent one.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        before: Mapping[str, Preparation] | None = None,
        script: Mapping[str, Deviation] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.before, self.script = dict(before or {}), dict(script or {})
        self.masked: dict[int, np.ndarray] = {}
        self.signatures: dict[int, bytes] = {}
        self.responses: list[tuple[int, m.UnmaskResponse]] = []
        self.aggregate_error = ""

    # -- the script -------------------------------------------------------------------------------
    def advance(self) -> dict[int, bytes]:
        closing = self._stage.value
        if closing in self.before:
            self.before[closing](self)
        outbox = super().advance()
        deviation = self.script.get(closing)
        return deviation(self, outbox) if deviation else outbox

    def forge(self, kind: m.Kind, client: int, body: m.Body) -> bytes:
        """A message of this session to ``client``, tagged with its channel key (the server can)."""
        session = self._setup if kind == m.Kind.KEY_LIST else self._session
        return self._send(kind, session, client, body)

    @property
    def setup(self) -> bytes:
        return self._setup

    def read_uplink(self, client: int, data: bytes) -> m.Body:
        """Decode a message ``client`` sent to this server (the server holds the channel key)."""
        words = (self.config.encoding.dtype.itemsize, self.config.dim)
        return m.decode(data, max_parties=self.config.num_clients, vector_words=words, tag_key=self._tag_key)[1]

    def forge_uplink(self, client: int, body: m.Body) -> bytes:
        """A message of this session from ``client``, tagged with its channel key: what a corrupt
        client (which shares that key with the server) can send."""
        header = Header(body.KIND, protocol_id(self.config), self.round, self._session, client, SERVER_ID)
        return m.encode(header, body, message_key(self._channels[client], TO_SERVER, body.KIND))

    def read(self, client: int, data: bytes) -> m.Body:
        """Decode a message this server addressed to ``client``."""
        def key(header: Header) -> bytes:
            return message_key(self._channels[client], TO_CLIENT, header.kind)

        return m.decode(data, max_parties=self.config.num_clients, tag_key=key)[1]

    def rewrite(self, outbox: dict[int, bytes], clients: set[int], change: Callable[[m.Body], m.Body]) -> dict[int, bytes]:
        """Replace the bodies sent to ``clients`` by ``change(body)``, keeping valid tags."""
        out = dict(outbox)
        for c in clients & set(outbox):
            body = change(self.read(c, outbox[c]))
            out[c] = self.forge(body.KIND, c, body)
        return out

    @property
    def survivors(self) -> tuple[int, ...]:
        return self._survivors

    @property
    def shared(self) -> tuple[int, ...]:
        return self._shared

    def _require(self, count: int, what: str, needed: int = 1) -> None:
        """The attacker never holds itself back: clients must do the refusing."""
        if count == 0:
            super()._require(count, what, 1)

    def _check_recoverable(self) -> None:
        """The attacker offers any survivor set; clients must refuse it."""

    # -- keep everything --------------------------------------------------------------------------
    def _accept_masked(self, sender: int, vector: np.ndarray) -> None:
        super()._accept_masked(sender, vector)
        self.masked[sender] = vector.copy()

    def _check_signature(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.SurvivorSignature)
        self.signatures[sender] = body.signature  # whatever set the client signed: kept, not checked

    def _check_unmask(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.UnmaskResponse)
        self.responses.append((sender, body))

    def forget_masked(self, clients: Iterable[int]) -> None:
        """Pretend these clients' masked inputs never arrived (``masked`` keeps them for the attacker)."""
        for c in clients:
            if c in self._inbox:
                del self._inbox[c]
                np.subtract(self._accumulator, self.masked[c], out=self._accumulator)

    def keep_response(self, data: bytes) -> None:
        """Decode and keep an unmask response that arrived outside the normal flow."""
        words = (self.config.encoding.dtype.itemsize, self.config.dim)
        header, body = m.decode(data, max_parties=self.config.num_clients, vector_words=words, tag_key=self._tag_key)
        assert isinstance(body, m.UnmaskResponse)
        self.responses.append((header.sender, body))

    def _close_unmask(self) -> dict[int, bytes]:
        try:
            return super()._close_unmask()
        except SecAggError as exc:
            self.aggregate_error = f"{type(exc).__name__}: {exc}"
            self._stage = Stage.ABORTED
            return {}

    # -- the attacker's goal ----------------------------------------------------------------------
    def released(self, owner: int) -> dict[int, dict[int, bytes]]:
        """Share kind -> {holder: share} that clients released for ``owner``."""
        out: dict[int, dict[int, bytes]] = defaultdict(dict)
        for holder, body in self.responses:
            for o, kind, share in zip(body.owners, body.kinds, body.shares):
                if o == owner:
                    out[kind][holder] = share
        return out

    def recover(self, owner: int) -> np.ndarray | None:
        """Try to unmask ``owner``'s individual input from what clients released; None if impossible."""
        if owner not in self.masked or not self._commitments.get(owner):
            return None
        shares = self.released(owner)
        seed = self._secret(owner, shares.get(m.ShareKind.SELF_MASK_SEED, {}), self._seed_matches)
        key = self._secret(owner, shares.get(m.ShareKind.MASK_KEY, {}), self._mask_key_matches)
        if seed is None or key is None:
            return None
        out = self.masked[owner].copy()
        streams = [(MaskStream(derive_key(seed, LABEL_SELF_MASK, self._session)), -1)]
        pair = AgreementKeyPair.from_private_bytes(key)
        for v in self._graph[owner]:
            if v in self._shared_set:
                peer_key = self._keys[v].mask_key
                context = pairwise_context(self._session, owner, pair.public_bytes, v, peer_key)
                mask = pair.agree(peer_key, LABEL_PAIRWISE_MASK, context)
                streams.append((MaskStream(mask), -1 if owner < v else +1))
        apply_masks(out, streams, self.config.chunk_size)
        unmasked: np.ndarray = out & out.dtype.type(self.config.encoding.ring_mask)
        return unmasked

    def recover_isolated(self, owner: int, shown: tuple[int, ...], known: Mapping[int, bytes]) -> np.ndarray | None:
        """Unmask ``owner``, who masked only with ``shown``: its seed from released seed shares, each
        peer's mask key from ``known`` (corrupt clients) or from released mask-key shares."""
        if owner not in self.masked:
            return None
        seed = self._secret(owner, self.released(owner).get(m.ShareKind.SELF_MASK_SEED, {}), self._seed_matches)
        if seed is None:
            return None
        keys = {}
        for peer in shown:
            key = known.get(peer) or self._secret(peer, self.released(peer).get(m.ShareKind.MASK_KEY, {}),
                                                  self._mask_key_matches)
            if key is None:
                return None
            keys[peer] = key
        out = self.masked[owner].copy()
        saved, self._survivors = self._survivors, (owner,)
        try:  # the server's own correction streams, for a survivor set of just the owner
            streams = [(MaskStream(derive_key(seed, LABEL_SELF_MASK, self._session)), -1)]
            streams += self._pairwise_corrections(keys)
        finally:
            self._survivors = saved
        apply_masks(out, streams, self.config.chunk_size)
        unmasked: np.ndarray = out & out.dtype.type(self.config.encoding.ring_mask)
        return unmasked

    def _secret(self, owner: int, held: dict[int, bytes], verify: Callable[[int, bytes], bool]) -> bytes | None:
        """The verified secret behind ``held`` shares, or None without t consistent shares."""
        if len(held) < self.config.threshold:
            return None
        table = {owner: held}
        try:
            first = self._interpolate(tuple(sorted(held)[: self.config.threshold]), [owner], table)[0]
        except IntegrityError:
            first = b""
        if first and verify(owner, first):
            return first
        try:
            return self._retry(owner, table, verify)
        except IntegrityError:
            return None


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


def _deliver(server: SecAggServer, cid: int, data: bytes, log: Play, uplink: Uplink | None, tap: Tap | None) -> None:
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
    server: SecAggServer,
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
