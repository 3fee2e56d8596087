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
from typing import Callable

import numpy as np

from ...errors import InsufficientParties, IntegrityError, MalformedMessage, ProtocolAbort
from ...hazmat import shamir
from ...hazmat.keys import AgreementKeyPair, derive_key, verify_signature
from ...hazmat.prg import MaskStream
from ...params import SecAggConfig
from ...hazmat.random import RandomSource, system_random
from ...results import WeightedSum, first_drops
from ...wire import SERVER_ID, Header
from ..base import ServerParty
from . import messages as m
from .client import advertise_signed_bytes, survivors_signed_bytes
from .common import (
    LABEL_ADVERTISE_SIG,
    LABEL_KEY_CHECK,
    LABEL_SERVER_CHANNEL,
    TO_CLIENT,
    TO_SERVER,
    channel_context,
    message_key,
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_SURVIVORS_SIG,
    Stage,
    apply_masks,
    check_binding,
    neighbours,
    pairwise_context,
    unrecoverable_seeds,
    protocol_id,
    seed_commitment,
    session_id,
    setup_id,
)

__all__ = ["SecAggServer", "AggregateResult"]

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
        self._keys: dict[int, m.KeyEntry] = {}
        self._graph: dict[int, tuple[int, ...]] = {}
        self._shared: tuple[int, ...] = ()
        self._survivors: tuple[int, ...] = ()
        self._accumulator = np.zeros(config.dim, dtype=config.encoding.dtype)
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
        words = (self.config.encoding.dtype.itemsize, self.config.dim)
        return m.decode(data, max_parties=self.config.num_clients, vector_words=words, tag_key=self._tag_key)

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
        if self._stage is not Stage.ADVERTISE and sender not in self._eligible():
            raise ProtocolAbort(f"client {sender} is not part of this stage")

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
        enc = self.config.encoding
        if enc.modulus_bits < 8 * vector.dtype.itemsize and (vector > enc.ring_mask).any():
            raise MalformedMessage("masked input holds values outside the ring")
        np.add(self._accumulator, vector, out=self._accumulator)

    def _check_signature(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.SurvivorSignature) and self._registry is not None
        signed = survivors_signed_bytes(self._session, self._survivors)
        verify_signature(self._registry[sender], body.signature, LABEL_SURVIVORS_SIG, signed)

    def _check_unmask(self, sender: int, body: m.Body) -> None:
        assert isinstance(body, m.UnmaskResponse)
        alive = set(self._survivors)
        for owner, kind in zip(body.owners, body.kinds):
            holds = owner == sender or owner in self._graph.get(sender, ())
            if not holds or owner not in self._shared_set:
                raise ProtocolAbort(f"client {sender} returned a share it cannot hold")
            wanted = m.ShareKind.SELF_MASK_SEED if owner in alive else m.ShareKind.MASK_KEY
            if kind != wanted:
                raise ProtocolAbort(f"client {sender} returned the wrong kind of share")
        for share in body.shares:
            if len(share) != shamir.share_bytes(32):
                raise MalformedMessage("share of the wrong size")
            if (np.frombuffer(share, dtype="<u4") >= shamir.PRIME).any():
                raise MalformedMessage("share word outside the field")

    # -- stage transitions ------------------------------------------------------------------------
    def _require(self, count: int, what: str, needed: int) -> None:
        if count < needed:
            raise InsufficientParties(f"only {count} clients {what}; {needed} are needed")

    def _close_advertise(self) -> dict[int, bytes]:
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
        return {
            c: Header(m.Kind.KEY_LIST, protocol, self.round, self._setup, SERVER_ID, c).encode() + encoded
            for c in self._keys
        }

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
        self._require(len(self._inbox), "sent masked inputs", self.config.quorum)
        self._survivors = tuple(sorted(self._inbox))
        self._check_recoverable()
        self._dropped["mask"] = tuple(sorted(self._shared_set - set(self._survivors)))
        if self.config.threat.is_malicious:
            self._next(Stage.CONSISTENCY)
            body: m.Body = m.SurvivorList(self._survivors)
            return {c: self._send(m.Kind.SURVIVORS, self._session, c, body) for c in self._survivors}
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
        self._dropped["consistency"] = tuple(sorted(set(self._survivors) - set(signers)))
        return self._unmask_requests(m.UnmaskRequest(self._survivors, self._dropped["mask"], signers, tuple(sigs)))

    def _unmask_requests(self, request: m.UnmaskRequest) -> dict[int, bytes]:
        targets = request.signers or request.alive
        self._next(Stage.UNMASK)
        return {c: self._send(m.Kind.UNMASK_REQUEST, self._session, c, request) for c in targets}

    def _close_unmask(self) -> dict[int, bytes]:
        responders = sorted(self._inbox)
        self._dropped["unmask"] = tuple(sorted(set(self._survivors) - set(responders)))
        held: dict[int, dict[int, bytes]] = defaultdict(dict)
        for holder in responders:
            body = self._inbox[holder]
            assert isinstance(body, m.UnmaskResponse)
            for owner, share in zip(body.owners, body.shares):
                held[owner][holder] = share
        seeds = self._reconstruct(self._survivors, held, self._seed_matches)
        mask_keys = self._reconstruct(self._dropped["mask"], held, self._mask_key_matches)
        streams = [(MaskStream(derive_key(seeds[u], LABEL_SELF_MASK, self._session)), -1) for u in self._survivors]
        streams += self._pairwise_corrections(mask_keys)
        apply_masks(self._accumulator, streams, self.config.chunk_size)
        self._finish()
        return {}

    def _seed_matches(self, owner: int, secret: bytes) -> bool:
        return seed_commitment(self._session, owner, secret) == self._commitments[owner]

    def _mask_key_matches(self, owner: int, secret: bytes) -> bool:
        return AgreementKeyPair.from_private_bytes(secret).public_bytes == self._keys[owner].mask_key

    def _reconstruct(
        self, owners: tuple[int, ...], held: dict[int, dict[int, bytes]], verify: Callable[[int, bytes], bool]
    ) -> dict[int, bytes]:
        """Recover and verify one 32-byte secret per owner from t shares.

        Owners whose first t holders coincide are reconstructed in one batch. A secret that fails
        verification (a bad share) is retried with other subsets of t holders before giving up.
        """
        t = self.config.threshold
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for owner in owners:
            holders = sorted(held.get(owner, {}))
            if len(holders) < t:
                raise InsufficientParties(f"only {len(holders)} shares for client {owner}; threshold is {t}")
            groups[tuple(holders[:t])].append(owner)
        secrets: dict[int, bytes] = {}
        for first_holders, batch in groups.items():
            try:
                recovered = self._interpolate(first_holders, batch, held)
            except IntegrityError:
                recovered = [b""] * len(batch)
            for owner, secret in zip(batch, recovered):
                secrets[owner] = secret if secret and verify(owner, secret) else self._retry(owner, held, verify)
        return secrets

    @staticmethod
    def _interpolate(holders: tuple[int, ...], owners: list[int], held: dict[int, dict[int, bytes]]) -> list[bytes]:
        stacked = np.stack([[np.frombuffer(held[o][h], dtype="<u4") for o in owners] for h in holders])
        return shamir.reconstruct([h + 1 for h in holders], stacked.astype(np.int64))

    def _retry(self, owner: int, held: dict[int, dict[int, bytes]], verify: Callable[[int, bytes], bool]) -> bytes:
        """Find and leave out wrong shares (Berlekamp-Welch over every held share), then verify.

        Succeeds whenever the honest shares outnumber the wrong ones by at least t (the unique
        decoding radius); a random retry would almost never avoid every wrong share.
        """
        holders, t = sorted(held[owner]), self.config.threshold
        table = np.stack([np.frombuffer(held[owner][h], dtype="<u4") for h in holders]).astype(np.int64)
        good = [holders[i] for i in shamir.consistent_holders([h + 1 for h in holders], table[:, None, :], t)]
        if len(good) >= t:
            try:
                secret = self._interpolate(tuple(good[:t]), [owner], held)[0]
            except IntegrityError:
                secret = b""
            if secret and verify(owner, secret):
                return secret
        raise IntegrityError(f"no consistent set of {t} shares reconstructs client {owner}'s secret")

    def _pairwise_corrections(self, mask_keys: dict[int, bytes]) -> list[tuple[MaskStream, int]]:
        """Streams that cancel the masks survivors added with clients that dropped after sharing."""
        alive = set(self._survivors)
        streams = []
        for u, private in mask_keys.items():
            keypair = AgreementKeyPair.from_private_bytes(private)
            for v in self._graph[u]:
                if v in alive:
                    peer_key = self._keys[v].mask_key
                    context = pairwise_context(self._session, u, keypair.public_bytes, v, peer_key)
                    key = keypair.agree(peer_key, LABEL_PAIRWISE_MASK, context)
                    # v added +p if v < u and -p otherwise; undo it.
                    streams.append((MaskStream(key), -1 if v < u else +1))
        return streams

    def _finish(self) -> None:
        weighted, weight_sum = self.config.encoding.decode(self._accumulator)
        ring = self._accumulator & self._accumulator.dtype.type(self.config.encoding.ring_mask)
        self._result = AggregateResult(self.config, ring, weighted, weight_sum, self._survivors, self.dropped)
        self._stage = Stage.DONE

    def _next(self, stage: Stage) -> None:
        self._inbox = {}
        self._stage = stage
