"""SecAgg / SecAgg+ server state machine (no I/O), with O(d) streaming aggregation.

Feed every client message to :meth:`SecAggServer.receive`; when the caller decides a stage is over
(all arrived, or a deadline passed) call :meth:`SecAggServer.advance` for the messages to send.
A malformed, duplicate, misaddressed or out-of-stage message raises and leaves the server's state
untouched, so one hostile client cannot corrupt the round. Masked inputs are added to one
accumulator as they arrive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, MutableMapping

import numpy as np

from ...errors import InsufficientParties, IntegrityError, MalformedMessage, ParameterError, ProtocolAbort
from ...hazmat import shamir
from ...hazmat.keys import verify_signature
from ...encoding import FixedPoint
from ...params import SecAggConfig
from ...hazmat.random import RandomSource, system_random
from ...results import WeightedSum
from ...wire import SERVER_ID, Header
from ..base import Outbox, ServerParty
from . import messages as m
from .client import advertise_signed_bytes, survivors_signed_bytes
from .common import (
    LABEL_ADVERTISE_SIG,
    LABEL_KEY_CHECK,
    LABEL_SERVER_CHANNEL,
    TO_CLIENT,
    channel_context,
    message_key,
    LABEL_SURVIVORS_SIG,
    Stage,
    apply_masks,
    neighbours,
    unrecoverable_seeds,
    protocol_id,
    session_id,
    setup_id,
)
from .unmask import mask_key_verifier, pairwise_corrections, reconstruct_secrets, seed_verifier, self_mask

__all__ = ["SecAggServer", "AggregateResult", "ServerView"]

_DOWNLINK = frozenset({m.Kind.KEY_LIST, m.Kind.DELIVERY, m.Kind.SURVIVORS, m.Kind.UNMASK_REQUEST})
_EXPECTED: dict[Stage, int] = {
    Stage.ADVERTISE: m.Kind.ADVERTISE,
    Stage.SHARE: m.Kind.SHARES,
    Stage.MASK: m.Kind.MASKED_INPUT,
    Stage.CONSISTENCY: m.Kind.SURVIVOR_SIGNATURE,
    Stage.UNMASK: m.Kind.UNMASK_RESPONSE,
}


@dataclass(frozen=True)
class AggregateResult(WeightedSum):
    """What the server learns: the survivors' weighted sum, their weight sum and the survivor set."""

    config: SecAggConfig
    ring_sum: np.ndarray
    weighted_sum: np.ndarray
    weight_sum: int
    survivors: tuple[int, ...]
    dropped: dict[int, str] = field(default_factory=dict)
    """Client id -> the stage at which the server stopped hearing from it."""


@dataclass(frozen=True)
class ServerView:
    """What the server of a round legitimately knows, read-only: public keys, the graph, commitments
    and who took part. It holds no client secret and no key of the server's own.

    For embedders and auditors (transcripts, the adversarial harness); reading it says nothing about
    whether the server behaves honestly.
    """

    setup: bytes
    """The setup id (config, round and caller context), bound before any key is seen."""
    session: bytes
    """The session id (the setup id until the key list is sent)."""
    stage: Stage
    server_key: bytes
    """The server's public channel key, as sent in the key list."""
    keys: Mapping[int, m.KeyEntry]
    """Client -> its advertised keys (and signature), for the clients in the key list."""
    graph: Mapping[int, tuple[int, ...]]
    """The share/mask graph over the key list (empty before it)."""
    commitments: Mapping[int, bytes]
    """Client -> the seed commitment it sent with its shares."""
    shared: tuple[int, ...]
    """Clients whose share bundles were delivered."""
    survivors: tuple[int, ...]
    """Clients whose masked inputs are in the sum (empty before the mask stage closes)."""


class SecAggServer(ServerParty[Stage, AggregateResult]):
    """The aggregator's view of one round. It never sees an individual input in the clear."""

    config: SecAggConfig
    _authenticated = m.AUTHENTICATED_KINDS
    _encode = staticmethod(m.encode)

    def __init__(
        self,
        config: SecAggConfig,
        *,
        round_number: int = 0,
        context: bytes = b"",
        registry: dict[int, bytes] | None = None,
        random: RandomSource = system_random,
    ) -> None:
        self._start_server(config, round_number, setup_id(config, round_number, context), Stage.ADVERTISE,
                           protocol_id(config), _EXPECTED, random)
        self._registry = registry
        self._session = self._setup
        self._inbox: dict[int, m.Body | None] = {}
        self._shared_set: set[int] = set()
        self._commitments: dict[int, bytes] = {}
        self._keys: dict[int, m.KeyEntry] = {}
        self._graph: dict[int, tuple[int, ...]] = {}
        self._shared: tuple[int, ...] = ()
        self._survivors: tuple[int, ...] = ()
        self._survivor_set: frozenset[int] = frozenset()
        self._eligible_set: frozenset[int] = frozenset()  # who may send in the current stage
        self._format = m.VectorFormat(config.encoding.modulus_bits, config.dim, config.encoding.dtype)
        self._accumulator = np.zeros(config.dim, dtype=config.encoding.dtype)
        self._unpacked = np.empty(config.dim, dtype=config.encoding.dtype)  # each masked input, in turn
        self._signatures: dict[int, bytes] = {}
        self._closers = {
            Stage.ADVERTISE: self._close_advertise,
            Stage.SHARE: self._close_shares,
            Stage.MASK: self._close_masked,
            Stage.CONSISTENCY: self._close_consistency,
            Stage.UNMASK: self._close_unmask,
        }

    # -- intake -----------------------------------------------------------------------------------
    def _decode(self, data: bytes) -> tuple[Header, m.Body]:
        return m.decode(data, max_parties=self.config.num_clients, vector=self._vector_format(),
                        tag_key=self._tag_key, vector_out=self._unpacked)

    def _vector_format(self) -> m.VectorFormat:
        return self._format

    def _take(self, sender: int, body: m.Body) -> None:
        if self._stage is Stage.MASK:
            assert isinstance(body, m.MaskedInput)
            self._accept_masked(sender, body.vector)
            self._inbox[sender] = None  # the vector itself is consumed into the accumulator
            return
        check = {
            Stage.ADVERTISE: self._check_advertise,
            Stage.SHARE: self._check_shares,
            Stage.CONSISTENCY: self._check_signature,
            Stage.UNMASK: self._check_unmask,
        }[self._stage]
        check(sender, body)
        self._inbox[sender] = body

    @property
    def graph(self) -> dict[int, tuple[int, ...]]:
        """The public share/mask graph over the clients that advertised keys (empty before)."""
        return dict(self._graph)

    def _check_sender(self, sender: int) -> None:
        if sender in self._inbox:
            raise ProtocolAbort(f"duplicate message from client {sender}")
        if self._stage is not Stage.ADVERTISE and sender not in self._eligible_set:
            raise ProtocolAbort(f"client {sender} is not part of this stage")

    # -- public knowledge and channels (for embedders and auditors) -------------------------------
    @property
    def view(self) -> ServerView:
        """A snapshot of what this server knows (:class:`ServerView`); later stages do not change it."""
        return ServerView(
            setup=self._setup, session=self._session, stage=self._stage,
            server_key=self._channel_key.public_bytes, keys=MappingProxyType(dict(self._keys)),
            graph=MappingProxyType(dict(self._graph)), commitments=MappingProxyType(dict(self._commitments)),
            shared=self._shared, survivors=self._survivors,
        )

    def open(self, data: bytes) -> tuple[Header, m.Body]:
        """Decode and authenticate a message on a channel this server holds, without storing it.

        Opens a client's message to the server, or one of the server's own messages to a client
        (it holds both directions of every channel). Unlike :meth:`receive` it checks no stage,
        session or duplicate and changes no state: an auditor's or embedder's read of the traffic.

        Raises:
            MalformedMessage, IntegrityError: the bytes are not an authentic, canonical message.
            ProtocolAbort: the message is tagged on a channel this server does not have.
        """
        return m.decode(data, max_parties=self.config.num_clients, vector=self._vector_format(),
                        tag_key=self._open_key)

    def _open_key(self, header: Header) -> bytes:
        if header.sender != SERVER_ID:
            return self._tag_key(header)
        channel = self._channels.get(header.recipient)
        if channel is None:
            raise ProtocolAbort(f"no authenticated channel with client {header.recipient}")
        return message_key(channel, TO_CLIENT, header.kind)

    def seal(self, client: int, body: m.Body, *, reuse_key: bool = False) -> bytes:
        """Encode a server-to-client message of this round for ``client``, tagged with its channel key.

        The key list is bound to the setup id, every later message to the session id. Any server can
        do this with its own channel keys; a sealed body is not checked against the protocol, so this
        says nothing about honesty (the audit harness uses it to deviate).

        Each authenticated kind has one one-time Poly1305 key per client: a second message of a kind
        already sent to ``client`` (by :meth:`advance` or here) is refused, since two tags under one
        key let anyone on the path forge a third. ``reuse_key=True`` sends it anyway: for the audit
        harness only, which plays a server that does not care.

        Raises:
            ParameterError: ``body`` is not a server-to-client message.
            ProtocolAbort: the message needs a channel this server does not have with ``client``, or
                would reuse a one-time key.
        """
        kind = m.Kind(body.KIND)
        if kind not in _DOWNLINK:
            raise ParameterError(f"{kind.name} is not a message the server sends")
        if kind in m.AUTHENTICATED_KINDS and client not in self._channels:
            raise ProtocolAbort(f"no authenticated channel with client {client}")
        session = self._setup if kind is m.Kind.KEY_LIST else self._session
        return self._send(kind, session, client, body, reuse_key=reuse_key)

    def _eligible(self) -> tuple[int, ...]:
        return {
            Stage.SHARE: tuple(self._keys),
            Stage.MASK: self._shared,
            Stage.CONSISTENCY: self._survivors,
            Stage.UNMASK: self._survivors,
        }[self._stage]

    def _check_advertise(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.Advertise)
        if body.encryption_key == body.mask_key:
            raise ProtocolAbort("a client advertised the same key twice")
        for key in (body.encryption_key, body.mask_key):
            self._channel_key.agree(key, LABEL_KEY_CHECK, b"")  # IntegrityError for low-order points
        if self._registry is not None:
            identity = self._registry.get(sender)
            if identity is None:
                raise IntegrityError("advertisement from a client outside the registry")
            signed = advertise_signed_bytes(self._setup, sender, body.encryption_key, body.mask_key)
            verify_signature(identity, body.signature, LABEL_ADVERTISE_SIG, signed)

    def _check_shares(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.ShareBundle)
        if body.peers != self._graph[sender]:
            raise ProtocolAbort(f"client {sender} must send exactly one share ciphertext per neighbour")

    def _accept_masked(self, sender: int, vector: np.ndarray) -> None:
        # In the ring by construction: the wire carries modulus_bits bits per word (wire.Reader.packed).
        np.add(self._accumulator, vector, out=self._accumulator)

    def _check_signature(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.SurvivorSignature) and self._registry is not None
        signed = survivors_signed_bytes(self._session, self._survivors)
        verify_signature(self._registry[sender], body.signature, LABEL_SURVIVORS_SIG, signed)

    def _check_unmask(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.UnmaskResponse)
        alive, peers = self._survivor_set, self._graph.get(sender, ())
        for owner, kind in zip(body.owners, body.kinds):
            holds = owner == sender or owner in peers
            if not holds or owner not in self._shared_set:
                raise ProtocolAbort(f"client {sender} returned a share it cannot hold")
            wanted = m.ShareKind.SELF_MASK_SEED if owner in alive else m.ShareKind.MASK_KEY
            if kind != wanted:
                raise ProtocolAbort(f"client {sender} returned the wrong kind of share")
        size = shamir.share_bytes(32)
        if any(len(share) != size for share in body.shares):
            raise MalformedMessage("share of the wrong size")
        if (np.frombuffer(b"".join(body.shares), dtype="<u4") >= shamir.PRIME).any():
            raise MalformedMessage("share word outside the field")

    # -- stage transitions ------------------------------------------------------------------------
    def _require(self, count: int, what: str, needed: int) -> None:
        if count < needed:
            raise InsufficientParties(f"only {count} clients {what}; {needed} are needed")

    def _close_advertise(self) -> MutableMapping[int, bytes]:
        self._require(len(self._inbox), "advertised keys", self.config.quorum)
        entries = []
        for client in sorted(self._inbox):
            body = self._inbox[client]
            assert isinstance(body, m.Advertise)
            entries.append(m.KeyEntry(client, body.encryption_key, body.mask_key, body.signature))
        key_list = m.KeyList(self._channel_key.public_bytes, tuple(entries))
        self._keys = {e.client: e for e in entries}
        self._session = session_id(self._setup, key_list.body_bytes())
        self._channels = {
            e.client: self._channel_key.agree(e.encryption_key, LABEL_SERVER_CHANNEL, channel_context(self._session, e.client))
            for e in entries
        }
        self._graph = neighbours(sorted(self._keys), self.config.degree, self._setup, self.config.num_clients)
        self._dropped["advertise"] = ()
        self._next(Stage.SHARE)
        encoded = key_list.body_bytes()  # identical for everyone: encode once, not n times
        protocol = protocol_id(self.config)

        def message(client: int) -> bytes:  # built when read: n copies of an O(n) list are O(n^2) bytes
            return Header(m.Kind.KEY_LIST, protocol, self.round, self._setup, SERVER_ID, client).encode() + encoded

        return Outbox(self._keys, message)

    def _close_shares(self) -> dict[int, bytes]:
        bundles = {c: b for c, b in self._inbox.items() if isinstance(b, m.ShareBundle)}
        self._require(len(bundles), "shared their keys", self.config.threshold)
        self._shared = tuple(sorted(bundles))
        self._commitments = {c: b.seed_commitment for c, b in bundles.items()}
        self._shared_set = set(self._shared)
        self._dropped["share"] = tuple(sorted(set(self._keys) - self._shared_set))
        inbound: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for sender in self._shared:
            for peer, ciphertext in zip(bundles[sender].peers, bundles[sender].ciphertexts):
                inbound[peer].append((sender, ciphertext))
        self._next(Stage.MASK)
        out = {}
        for client in self._shared:
            pairs = sorted(inbound[client])
            delivery = m.ShareDelivery(tuple(p for p, _ in pairs), tuple(c for _, c in pairs))
            out[client] = self._send(m.Kind.DELIVERY, self._session, client, delivery)
        return out

    def _close_masked(self) -> dict[int, bytes]:
        dp = self.config.dp
        self._require(len(self._inbox), "sent masked inputs", max(self.config.quorum, dp.min_survivors if dp else 0))
        self._survivors = tuple(sorted(self._inbox))
        self._survivor_set = frozenset(self._survivors)
        self._check_recoverable()
        self._dropped["mask"] = tuple(sorted(self._shared_set - self._survivor_set))
        if self.config.threat.is_malicious:
            self._next(Stage.CONSISTENCY)
            return self._broadcast(m.Kind.SURVIVORS, self._session, self._survivors, m.SurvivorList(self._survivors))
        return self._unmask_requests(m.UnmaskRequest(self._survivors, self._dropped["mask"]))

    def _check_recoverable(self) -> None:
        """Abort now if some survivor's self-mask seed cannot be reconstructed at the unmask stage."""
        lacking = unrecoverable_seeds(self._survivors, self._graph, self.config.threshold)
        if lacking:
            raise InsufficientParties(
                f"survivors {lacking[:8]} have fewer than t = {self.config.threshold} of their share holders alive")

    def _close_consistency(self) -> dict[int, bytes]:
        self._require(len(self._inbox), "signed the survivor set", self.config.quorum)
        signers = tuple(sorted(self._inbox))
        sigs = []
        for c in signers:
            body = self._inbox[c]
            assert isinstance(body, m.SurvivorSignature)
            sigs.append(body.signature)
        self._dropped["consistency"] = tuple(sorted(self._survivor_set - set(signers)))
        return self._unmask_requests(m.UnmaskRequest(self._survivors, self._dropped["mask"], signers, tuple(sigs)))

    def _unmask_requests(self, request: m.UnmaskRequest) -> dict[int, bytes]:
        targets = request.signers or request.alive
        self._next(Stage.UNMASK)
        return self._broadcast(m.Kind.UNMASK_REQUEST, self._session, targets, request)

    def _close_unmask(self) -> dict[int, bytes]:
        responders = sorted(self._inbox)
        self._dropped["unmask"] = tuple(sorted(self._survivor_set - set(responders)))
        held: dict[int, dict[int, bytes]] = defaultdict(dict)
        for holder in responders:
            body = self._inbox[holder]
            assert isinstance(body, m.UnmaskResponse)
            for owner, share in zip(body.owners, body.shares):
                held[owner][holder] = share
        t, mask_public = self.config.threshold, {c: e.mask_key for c, e in self._keys.items()}
        seeds = reconstruct_secrets(self._survivors, held, t, seed_verifier(self._session, self._commitments))
        mask_keys = reconstruct_secrets(self._dropped["mask"], held, t, mask_key_verifier(mask_public))
        streams = [(self_mask(seeds[u], self._session), -1) for u in self._survivors]
        streams += pairwise_corrections(self._session, mask_keys, self._graph, mask_public, self._survivor_set)
        apply_masks(self._accumulator, streams, self.config.chunk_size)
        self._finish()
        return {}

    def _finish(self) -> None:
        encoding = self.config.encoding
        weighted, weight_sum = encoding.decode(self._accumulator, self._setup)
        n = len(self._survivors)
        # A client masks any ring words it likes; what no valid encodings sum to is refused, as CKKS's
        # check_grid_sum refuses a grid sum out of range: weights lie in [1, W], values in [-c, c].
        out_of_range = not n <= weight_sum <= n * encoding.max_weight
        if not out_of_range and isinstance(encoding, FixedPoint) and weighted.size:
            out_of_range = float(np.abs(weighted).max()) > weight_sum * encoding.clip_bound + n / 2.0**encoding.fractional_bits
        if out_of_range:
            self._stage = Stage.ABORTED
            raise IntegrityError("the unmasked sum is not a sum of valid inputs (a client masked an invalid "
                                 "encoding); nothing is released")
        ring = self._accumulator & self._accumulator.dtype.type(self.config.encoding.ring_mask)
        self._result = AggregateResult(self.config, ring, weighted, weight_sum, self._survivors, self.dropped)
        self._stage = Stage.DONE

    def _next(self, stage: Stage) -> None:
        self._inbox = {}
        self._stage = stage
        self._eligible_set = frozenset(self._eligible()) if stage in (Stage.SHARE, Stage.MASK, Stage.CONSISTENCY,
                                                                     Stage.UNMASK) else frozenset()
