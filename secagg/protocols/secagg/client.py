"""SecAgg / SecAgg+ client state machine (no I/O).

Drive it with :meth:`SecAggClient.advertise` and then :meth:`SecAggClient.handle` for each message
from the server; each call returns the bytes to send back. A malformed message or one for another
stage, round or session raises without changing state; a hostile or inconsistent one aborts the
client for good (stage ``ABORTED``). An honest client never reveals both the self-mask seed share and
the mask-key share of one user.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import InsufficientParties, IntegrityError, ParameterError, ProtocolAbort
from ...hazmat import shamir
from ...hazmat.keys import AgreementKeyPair, SigningKey, open_sealed, seal, verify_signature
from ...hazmat.random import RandomSource, system_random
from ...params import SecAggConfig
from ...wire import Header, Writer
from ..base import ClientParty
from . import messages as m
from .masking import mask_input
from .common import (
    LABEL_ADVERTISE_SIG,
    LABEL_SERVER_CHANNEL,
    channel_context,
    LABEL_SHARE_ENCRYPTION,
    LABEL_SURVIVORS_SIG,
    Stage,
    neighbours,
    neighbours_of,
    unrecoverable_seeds,
    protocol_id,
    seed_commitment,
    session_id,
    setup_id,
    share_context,
)

__all__ = ["SecAggClient", "advertise_signed_bytes", "survivors_signed_bytes"]

_SHARE_WORDS = 2 * (shamir.share_bytes(32) // 4)
_EXPECTED = {
    Stage.SHARE: (m.Kind.KEY_LIST,),
    Stage.MASK: (m.Kind.DELIVERY,),
    Stage.CONSISTENCY: (m.Kind.SURVIVORS,),
    Stage.UNMASK: (m.Kind.UNMASK_REQUEST,),
}


def advertise_signed_bytes(setup: bytes, client: int, encryption_key: bytes, mask_key: bytes) -> bytes:
    return setup + client.to_bytes(4, "little") + encryption_key + mask_key


def survivors_signed_bytes(session: bytes, survivors: tuple[int, ...]) -> bytes:
    return session + Writer().ids(survivors).body()


def _repeats_a_key(table: m.KeyTable, server_key: bytes) -> bool:
    """Whether the server key and the 2n listed keys hold a repeat: sorted 8-byte prefixes first,
    every full key compared only if two prefixes agree (for random keys, almost never)."""
    every = np.concatenate([np.frombuffer(server_key, dtype=np.uint8)[None, :], table.keys.reshape(-1, 32)])
    prefix = np.sort(np.ascontiguousarray(every[:, :8]).view("<u8").ravel())
    if not (prefix[1:] == prefix[:-1]).any():
        return False
    rows = [row.tobytes() for row in every]
    return len(set(rows)) != len(rows)


class SecAggClient(ClientParty[Stage]):
    """One client's view of one aggregation round.

    Args:
        config: the public session parameters (identical at every party).
        client_id: this client's id in ``[0, config.num_clients)``.
        round_number: the training round; masks are fresh for each round.
        context: caller bytes bound into the session, e.g. the SHA-256 of the global model.
        random: the randomness source (defaults to ``os.urandom``).
        identity: this client's long-term Ed25519 key (malicious threat model only).
        registry: client id -> Ed25519 public key of every client (malicious threat model only).
    """

    config: SecAggConfig
    _authenticated = m.AUTHENTICATED_KINDS
    _encode = staticmethod(m.encode)

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        *,
        round_number: int = 0,
        context: bytes = b"",
        random: RandomSource = system_random,
        identity: SigningKey | None = None,
        registry: Mapping[int, bytes] | None = None,
    ) -> None:
        self._start_client(config, client_id, round_number, setup_id(config, round_number, context), Stage.ADVERTISE,
                           protocol_id(config), _EXPECTED)
        if config.threat.is_malicious and (identity is None or registry is None):
            raise ParameterError("the malicious threat model needs an identity key and a registry (PKI)")
        if registry is not None and identity is not None and registry.get(client_id) != identity.public_bytes:
            raise ParameterError("the registry does not hold this client's identity key")
        self._random = random
        self._identity, self._registry = identity, dict(registry) if registry else None
        self._encryption: AgreementKeyPair | None = AgreementKeyPair.generate(random)
        self._masking: AgreementKeyPair | None = AgreementKeyPair.generate(random)
        self._values: np.ndarray | None = None
        self._weight = 1
        self._encoded: np.ndarray | None = None
        self._keys: dict[int, m.KeyEntry] = {}
        """The neighbours' entries of the key list."""
        self._listed = np.empty(0, dtype=np.uint32)
        """Every id in the key list (survivor sets and unmask requests are checked against it)."""
        self._neighbours: tuple[int, ...] = ()
        self._seed = b""
        self._held: dict[int, np.ndarray] = {}
        self._own_share = np.zeros((2, _SHARE_WORDS // 2), dtype=np.int64)
        self._survivors: tuple[int, ...] | None = None
        self._handlers = {
            Stage.SHARE: self._on_key_list,
            Stage.MASK: self._on_delivery,
            Stage.CONSISTENCY: self._on_survivors,
            Stage.UNMASK: self._on_unmask,
        }

    # -- inputs ---------------------------------------------------------------------------------
    def set_input(self, update: Any, weight: int = 1) -> None:
        """Provide this round's update (state dict, tensor list or array) and integer weight.

        Raises:
            ParameterError: the update does not match the session schema or is not finite.
        """
        self._weight = self.config.encoding.check_weight(weight)
        self._values = self.config.schema.flatten(update)
        self._encoded = None

    def set_encoded_input(self, words: np.ndarray) -> None:
        """Provide an input already encoded by ``config.encoding.encode`` (weight word last).

        Raises:
            ParameterError: wrong shape or dtype, or words that no clipped input encodes to (see
                :meth:`FixedPoint.check_encoded`): the no-overflow guarantee needs the clip.
        """
        enc = self.config.encoding
        words = np.array(words, copy=True, subok=False)  # a plain array: no mask or view hides a word
        if words.shape != (self.config.dim,) or words.dtype != enc.dtype:
            raise ParameterError(f"encoded input must be {self.config.dim} words of {enc.dtype}")
        self._weight = enc.check_encoded(words)
        self._encoded, self._values = words, None

    # -- protocol ---------------------------------------------------------------------------------
    def advertise(self) -> bytes:
        """Stage 0: the client's fresh public keys (signed in the malicious variant)."""
        if self._stage is not Stage.ADVERTISE:
            raise ProtocolAbort("keys were already advertised")
        enc, mask = self._encryption_key().public_bytes, self._masking_key().public_bytes
        sig = b""
        if self._identity is not None:
            sig = self._identity.sign(LABEL_ADVERTISE_SIG, advertise_signed_bytes(self._setup, self.client_id, enc, mask))
        self._stage = Stage.SHARE
        return self._send(m.Kind.ADVERTISE, self._setup, m.Advertise(enc, mask, sig))

    def _decode(self, data: bytes) -> tuple[Header, m.Body]:
        return m.decode(data, max_parties=self.config.num_clients, tag_key=self._tag_key)

    def _expected_session(self) -> bytes:
        return self._setup if self._stage is Stage.SHARE else self._session

    def _forget(self) -> None:
        """Drop every secret: input, seed, held and own shares, key pairs, channel."""
        self._values = self._encoded = None
        self._held = {}
        self._seed = b""
        self._own_share = np.zeros((2, _SHARE_WORDS // 2), dtype=np.int64)
        self._encryption = self._masking = None
        self._channel = b""

    def _secrets(self) -> tuple[object, ...]:
        own = self._own_share if self._own_share.any() else None
        return (self._values, self._encoded, self._held, self._seed, own, self._encryption, self._masking,
                self._channel)

    def _encryption_key(self) -> AgreementKeyPair:
        if self._encryption is None:
            raise ProtocolAbort("this client's keys were dropped (round closed or aborted)")
        return self._encryption

    def _masking_key(self) -> AgreementKeyPair:
        if self._masking is None:
            raise ProtocolAbort("this client's keys were dropped (round closed or aborted)")
        return self._masking

    # -- stage handlers ---------------------------------------------------------------------------
    def _on_key_list(self, body: m.Body) -> bytes:
        assert isinstance(body, m.KeyList)
        if not body.entries:
            raise ProtocolAbort("the key list does not carry this client's own keys")
        table = body.table()
        self._validate_key_list(table, body.server_key)
        session = session_id(self._setup, body.body_bytes())
        channel = self._encryption_key().agree(body.server_key, LABEL_SERVER_CHANNEL, channel_context(session, self.client_id))
        mine = neighbours_of(self.client_id, table.ids, self.config.degree, self._setup, self.config.num_clients)
        if len(mine) + 1 < self.config.threshold:
            raise InsufficientParties(f"only {len(mine)} neighbours advertised keys; threshold is {self.config.threshold}")
        # Only the neighbours' keys are kept (O(k) per client), and the listed ids (4 bytes each).
        keys = table.entries_of(mine)
        seed = self._random(32)
        # Shares go to every neighbour and to the client itself (as in Bonawitz et al.): its own
        # seed share helps unmask it while it is alive; it never releases its own key share.
        holders = [v + 1 for v in mine] + [self.client_id + 1]
        shares = shamir.split([seed, self._masking_key().private_bytes()], self.config.threshold, holders, self._random)
        self._own_share = shares[-1]
        ciphertexts = []
        for i, peer in enumerate(mine):
            ctx = share_context(session, self.round, self.client_id, peer)
            key = self._encryption_key().agree(keys[peer].encryption_key, LABEL_SHARE_ENCRYPTION, ctx)
            ciphertexts.append(seal(key, shares[i].astype("<u4").tobytes(), ctx, self._random))
        self._session, self._keys, self._neighbours, self._seed = session, keys, mine, seed
        self._listed = table.ids
        self._channel = channel
        self._stage = Stage.MASK
        commitment = seed_commitment(session, self.client_id, seed)
        return self._send(m.Kind.SHARES, session, m.ShareBundle(mine, tuple(ciphertexts), commitment))

    def _validate_key_list(self, table: m.KeyTable, server_key: bytes) -> None:
        me = table.entry(self.client_id)
        if me is None or (me.encryption_key, me.mask_key) != (
            self._encryption_key().public_bytes,
            self._masking_key().public_bytes,
        ):
            raise ProtocolAbort("the key list does not carry this client's own keys")
        if int(table.ids[-1]) >= self.config.num_clients:
            raise ProtocolAbort("the key list names an unknown client")
        if _repeats_a_key(table, server_key):
            raise ProtocolAbort("the key list repeats a public key")
        needed = max(self.config.threshold, self.config.quorum)
        if len(table) < needed:
            raise InsufficientParties(f"{len(table)} clients advertised keys; need {needed}")
        if self._registry is not None:
            for e in table:
                identity = self._registry.get(e.client)
                if identity is None:
                    raise IntegrityError("key list names a client outside the registry")
                signed = advertise_signed_bytes(self._setup, e.client, e.encryption_key, e.mask_key)
                verify_signature(identity, e.signature, LABEL_ADVERTISE_SIG, signed)

    def _on_delivery(self, body: m.Body) -> bytes:
        assert isinstance(body, m.ShareDelivery)
        if not set(body.peers) <= set(self._neighbours):
            raise ProtocolAbort("shares delivered from a client that is not a neighbour")
        if len(body.peers) + 1 < self.config.threshold:
            raise InsufficientParties(f"only {len(body.peers)} neighbours shared keys; threshold is {self.config.threshold}")
        if self._values is None and self._encoded is None:
            raise ParameterError("no input was set for this round")
        held = {self.client_id: self._own_share}
        for peer, ciphertext in zip(body.peers, body.ciphertexts):
            ctx = share_context(self._session, self.round, peer, self.client_id)
            key = self._encryption_key().agree(self._keys[peer].encryption_key, LABEL_SHARE_ENCRYPTION, ctx)
            plain = open_sealed(key, ciphertext, ctx)
            if len(plain) != 4 * _SHARE_WORDS:
                raise IntegrityError("decrypted share is malformed")
            words = np.frombuffer(plain, dtype="<u4")
            if (words >= shamir.PRIME).any():
                raise IntegrityError("decrypted share is malformed")
            held[peer] = words.reshape(2, -1)
        vector = self._masked_vector(body.peers)
        self._held = held
        self._values = self._encoded = None
        self._stage = Stage.CONSISTENCY if self.config.threat.is_malicious else Stage.UNMASK
        return self._send(m.Kind.MASKED_INPUT, self._session, m.MaskedInput(vector, self.config.encoding.modulus_bits))

    def _masked_vector(self, peers: tuple[int, ...]) -> np.ndarray:
        peer_keys = {peer: self._keys[peer].mask_key for peer in peers}
        dp = self.config.dp
        if dp is not None and self._encoded is None:
            assert self._values is not None  # checked by the caller
            self._encoded, self._values = dp.encode(self._values, self._setup, self._random), None
        return mask_input(self.config, self._session, self.client_id, self._seed, self._masking_key(), peer_keys,
                          values=self._values, weight=self._weight, encoded=self._encoded, random=self._random)

    def _on_survivors(self, body: m.Body) -> bytes:
        assert isinstance(body, m.SurvivorList) and self._identity is not None
        survivors = body.survivors
        listed = np.isin(np.asarray(survivors, dtype=np.int64), self._listed.astype(np.int64))
        if self.client_id not in survivors or not listed.all():
            raise ProtocolAbort("the survivor set omits this client or names unknown clients")
        if len(survivors) < self.config.quorum:
            raise InsufficientParties(f"{len(survivors)} survivors; the quorum is {self.config.quorum}")
        graph = neighbours(survivors, self.config.degree, self._setup, self.config.num_clients)
        lacking = unrecoverable_seeds(survivors, graph, self.config.threshold)
        if lacking:
            raise ProtocolAbort(
                f"survivors {lacking[:8]} have fewer than t = {self.config.threshold} of their share holders in the "
                "survivor set; no honest server offers such a set (SECURITY.md, lemma 'isolation')")
        self._survivors = survivors
        signature = self._identity.sign(LABEL_SURVIVORS_SIG, survivors_signed_bytes(self._session, survivors))
        self._stage = Stage.UNMASK
        return self._send(m.Kind.SURVIVOR_SIGNATURE, self._session, m.SurvivorSignature(signature))

    def _on_unmask(self, body: m.Body) -> bytes:
        assert isinstance(body, m.UnmaskRequest)
        alive, dropped = set(body.alive), set(body.dropped)
        if alive & dropped:
            raise ProtocolAbort("the server lists a client as both surviving and dropped")
        if self.client_id not in alive:
            raise ProtocolAbort("the server lists this client, which sent its input, as not surviving")
        named = np.fromiter(alive | dropped, dtype=np.int64, count=len(alive | dropped))
        if not np.isin(named, self._listed.astype(np.int64)).all():
            raise ProtocolAbort("the unmask request names a client outside the key list")
        if len(alive) < self.config.threshold:
            raise InsufficientParties(f"{len(alive)} survivors; threshold is {self.config.threshold}")
        dp = self.config.dp
        if dp is not None:
            # Complete graph: every survivor shared with this client, so only those count (a server
            # cannot pad the set with clients whose inputs are not in the sum). SecAgg+: a client sees
            # only its neighbours; against a deviating server the floor then needs the malicious
            # variant's signed survivor set, and the accountant uses min(F - c, l) (SECURITY.md).
            counted = len(alive & set(self._held)) if self.config.degree is None else len(alive)
            if counted < dp.min_survivors:
                raise InsufficientParties(f"{counted} survivors; a DP sum is released with at least "
                                          f"{dp.min_survivors} (their noise is the guarantee)")
        if self.config.threat.is_malicious:
            self._check_consistency(body)
        owners, kinds, shares = [], [], []
        for owner in sorted(self._held):
            if owner in alive:
                kind, row = m.ShareKind.SELF_MASK_SEED, 0
            elif owner in dropped:
                kind, row = m.ShareKind.MASK_KEY, 1
            else:
                continue
            owners.append(owner)
            kinds.append(int(kind))
            shares.append(self._held[owner][row].astype("<u4").tobytes())
        self._held, self._seed = {}, b""
        self._stage = Stage.DONE
        return self._send(m.Kind.UNMASK_RESPONSE, self._session, m.UnmaskResponse(tuple(owners), tuple(kinds), tuple(shares)))

    def _check_consistency(self, body: m.UnmaskRequest) -> None:
        assert self._registry is not None
        if self._survivors is None or body.alive != self._survivors:
            raise ProtocolAbort("the unmask request's survivor set differs from the one this client signed")
        if not set(body.signers) <= set(body.alive) or len(body.signers) < self.config.quorum:
            raise ProtocolAbort(f"need >= {self.config.quorum} survivor signatures, got {len(body.signers)}")
        signed = survivors_signed_bytes(self._session, self._survivors)
        for signer, signature in zip(body.signers, body.signatures):
            verify_signature(self._registry[signer], signature, LABEL_SURVIVORS_SIG, signed)
