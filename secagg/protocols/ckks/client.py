"""CKKS client state machine (no I/O): one upload per client; committee members also hold the key.

Drive it like every party (:mod:`secagg.protocols.base`): :meth:`CkksClient.advertise` (every client:
its channel key; a committee member also receives the secret context on it) and then :meth:`handle`
for each server message; each call returns the bytes to send back. A malformed message (including a
decryption request with a ciphertext that does not parse as one of the session's) or one for another
stage, round or session raises without changing state: a key holder keeps its key. A hostile or
inconsistent one aborts the client for good (stage ``ABORTED``).

Between two messages a client can be handed to another process: :meth:`CkksClient.export_state`
and :meth:`CkksClient.import_state` (canonical bytes, :mod:`.state`; they hold the round's secrets
unencrypted). Whoever does so must make sure one state is resumed at most once per message, or the
client could answer a stage twice (:mod:`secagg.adapters.nodestate` does this on disk).

Threat model. The server is honest-but-curious: it relays messages faithfully and never holds the
secret key, so alone it learns only ciphertexts and the released aggregate. Key holders (the
committee) are clients that receive the secret context end-to-end encrypted (X25519 + AES-GCM,
bound to session, round, sender and recipient). *The server together with any one key holder can
decrypt every individual update*; so can a key holder that sees a client's ciphertext in transit.
A key holder decrypts at most one ciphertext per key (one decryption per session), refuses sums of
fewer than ``min_contributors`` inputs, and releases only the sum rounded to the quantisation grid
after checking the decryption lies within the proven noise bound of that grid: the release is then
a deterministic function of the inputs and reveals nothing about the noise, which is what
IND-CPA-D key-recovery attacks (Li-Micciancio, Eurocrypt'21) need. A decryption that is off-grid,
out of range or has non-zero padding (a crafted or corrupted ciphertext) is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import (
    InsufficientParties,
    IntegrityError,
    MalformedMessage,
    ParameterError,
    ProtocolAbort,
)
from ...hazmat.keys import AgreementKeyPair, open_sealed, seal
from ...hazmat.prg import MaskStream
from ...hazmat.random import RandomSource, system_random
from ...wire import Header
from ..base import ClientParty
from ..channel import LABEL_SERVER_CHANNEL, channel_context
from . import he
from . import messages as m
from . import state as st
from .common import (LABEL_SECRET_CONTEXT, PROTOCOL_ID, Stage, check_grid_sum, limits_for, seal_context, session_id,
                     setup_id)
from .config import CkksConfig
from .parallel import ChunkPool, default_pool

__all__ = ["CkksClient"]

_EXPECTED: dict[Stage, tuple[int, ...]] = {
    Stage.GENERATE: (m.Kind.KEY_LIST, m.Kind.CONTEXT),
    Stage.CONTEXT: (m.Kind.CONTEXT,),
    Stage.DECRYPT: (m.Kind.DECRYPT_REQUEST,),
}


class CkksClient(ClientParty[Stage]):
    """One client's view of one CKKS aggregation round.

    Args:
        config: the public session parameters (identical at every party).
        client_id: this client's id in ``[0, config.num_clients)``.
        round_number: the training round; every round uses a fresh CKKS key.
        context: caller bytes bound into the session, e.g. the SHA-256 of the global model.
        random: randomness for X25519, AEAD nonces and stochastic rounding (default ``os.urandom``).
        pool: process pool for large inputs (default: the process-wide :func:`default_pool`).
    """

    config: CkksConfig
    _authenticated = m.AUTHENTICATED_KINDS
    _encode = staticmethod(m.encode)

    def __init__(
        self,
        config: CkksConfig,
        client_id: int,
        *,
        round_number: int = 0,
        context: bytes = b"",
        random: RandomSource = system_random,
        pool: ChunkPool | None = None,
    ) -> None:
        self._start_client(config, client_id, round_number, setup_id(config, round_number, context), Stage.ADVERTISE,
                           PROTOCOL_ID, _EXPECTED)
        self._random, self._pool = random, pool
        self._limits = limits_for(config)
        self._member = client_id in config.committee
        self._keypair: AgreementKeyPair | None = AgreementKeyPair.generate(random)
        self._server_key = b""
        self._values: np.ndarray | None = None
        self._weight = 1
        self._generated: tuple[bytes, bytes] | None = None
        self._secret: bytes | None = None
        self._request_ctx: Any = None
        self._handlers = {
            Stage.GENERATE: self._on_key_list_or_context,
            Stage.CONTEXT: self._on_context_message,
            Stage.DECRYPT: self._on_decrypt,
        }

    # -- inputs -----------------------------------------------------------------------------------
    def set_input(self, update: Any, weight: int = 1) -> None:
        """Provide this round's update (state dict, tensor list or array) and integer weight.

        Raises:
            ParameterError: the update does not match the session schema, is not finite, or the
                weight is outside ``[1, config.max_weight]``.
        """
        self._weight = self.config.encoding.check_weight(weight)
        self._values = self.config.schema.flatten(update)

    @property
    def holds_key(self) -> bool:
        """True while this client holds the secret context and can decrypt."""
        return self._secret is not None

    # -- handing the round to another process ---------------------------------------------------
    def export_state(self) -> st.CkksClientState:
        """Everything this client needs to go on with the round, as canonical bytes (:mod:`.state`).

        The bytes hold the round's secrets unencrypted; the input is never part of them (set it on
        the imported client before the message that uploads). Exporting changes nothing here: resume
        *either* this client or one imported from the state, never both, or a stage could be
        answered twice.

        Raises:
            ProtocolAbort: the client is done or aborted: there is nothing to resume.
        """
        if self.done or self.aborted or self._keypair is None:
            raise ProtocolAbort(f"client {self.client_id} is in stage {self._stage.value}: nothing to resume")
        generated_secret, generated_public = self._generated or (b"", b"")
        return st.CkksClientState(st.encode(st.Snapshot(
            self.config.digest(), self.client_id, self.round, self._setup, self._stage, self._session,
            self._server_key, self._keypair.private_bytes(), generated_secret, generated_public,
            self._secret or b"", self.sent_bytes,
        )))

    @classmethod
    def import_state(
        cls,
        config: CkksConfig,
        client_id: int,
        state: st.CkksClientState,
        *,
        round_number: int = 0,
        context: bytes = b"",
        random: RandomSource = system_random,
        pool: ChunkPool | None = None,
    ) -> CkksClient:
        """The client :meth:`export_state` saved, ready for its next message (arguments as for the
        constructor, which must be those of the exported client).

        Guarantees the state is one of this config, client, round and context, that the fields it
        holds are exactly those of its stage, and that every context in it parses as the session's.
        Not guaranteed: that the bytes are the latest state exported (the caller's storage decides).

        Raises:
            MalformedMessage: not a state of this session, client and round, or not a consistent one.
            IntegrityError: a key or context in the state is invalid for the session.
        """
        client = cls(config, client_id, round_number=round_number, context=context, random=random, pool=pool)
        snap = st.decode(state.data, client._limits.max_context)
        if (snap.config_digest, snap.client_id, snap.round_number, snap.setup) != (
            config.digest(), client_id, round_number, client._setup
        ):
            raise MalformedMessage("the CKKS client state belongs to another session, client or round")
        client._restore(snap)
        return client

    def _restore(self, snap: st.Snapshot) -> None:
        """Take over a decoded state whose fields fit its stage (MalformedMessage otherwise)."""
        fields = (snap.session, snap.server_key, snap.private_key, snap.generated_secret, snap.generated_public,
                  snap.secret)
        present = tuple(bool(f) for f in fields)
        fresh = (False, False, True, False, False, False)
        allowed = {
            Stage.ADVERTISE: {fresh},
            Stage.GENERATE: {fresh} if self._member else set(),
            Stage.CONTEXT: {fresh, (False, True, True, True, True, False)} if self._member else {fresh},
            Stage.DECRYPT: {(True, True, True, False, False, True)} if self._member else set(),
        }
        if present not in allowed[snap.stage]:
            raise MalformedMessage(f"the CKKS client state does not fit its stage {snap.stage.value}")
        cfg = self.config
        for blob, secret in ((snap.generated_secret, True), (snap.generated_public, False), (snap.secret, True)):
            if blob:
                he.load_context(blob, cfg.preset, cfg.log_scale, secret=secret)
        self._keypair = AgreementKeyPair.from_private_bytes(snap.private_key)
        if snap.server_key:
            self._open_channel(snap.server_key)
        self._stage, self._session, self.sent_bytes = snap.stage, snap.session, snap.sent_bytes
        self._generated = (snap.generated_secret, snap.generated_public) if snap.generated_secret else None
        self._secret = snap.secret or None

    # -- protocol ---------------------------------------------------------------------------------
    def advertise(self) -> bytes:
        """Stage 0: a fresh X25519 key (the channel with the server; a committee member's secret
        context is sealed to it)."""
        if self._stage is not Stage.ADVERTISE:
            raise ProtocolAbort("the key was already advertised")
        assert self._keypair is not None
        self._stage = Stage.GENERATE if self._member else Stage.CONTEXT
        return self._send(m.Kind.ADVERTISE, self._setup, m.Advertise(self._keypair.public_bytes))

    def _decode(self, data: bytes) -> tuple[Header, m.Body]:
        return m.decode(data, self._limits, self._tag_key)

    def _expected_session(self) -> bytes:
        return self._session if self._stage is Stage.DECRYPT else self._setup

    def _inspect(self, body: m.Body) -> None:
        self._request_ctx = self._parse_request(body) if isinstance(body, m.DecryptRequest) else None

    def _on_key_list_or_context(self, body: m.Body) -> bytes:
        if isinstance(body, m.KeyList):
            return self._on_key_list(body)
        return self._on_context_message(body)

    def _on_context_message(self, body: m.Body) -> bytes:
        assert isinstance(body, m.ContextBroadcast)
        return self._on_context(body)

    def _open_channel(self, server_key: bytes) -> None:
        """Derive the authenticated channel from the server's key (the same key all round)."""
        if self._server_key and server_key != self._server_key:
            raise ProtocolAbort("the server changed its channel key within the round")
        assert self._keypair is not None
        self._channel = self._keypair.agree(server_key, LABEL_SERVER_CHANNEL, channel_context(self._setup, self.client_id))
        self._server_key = server_key

    def _parse_request(self, body: m.DecryptRequest) -> Any:
        """Parse every ciphertext of a decryption request before the key is spent on it.

        Parsing (layout, TenSEAL's parser, the session's parameters) depends on public bytes only,
        so refusing here reveals nothing about the key. Chunks are parsed one at a time and
        dropped; decryption parses them again, possibly in worker processes.

        Returns:
            The secret context.
        Raises:
            MalformedMessage: a ciphertext is malformed (state unchanged, key kept).
        """
        cfg = self.config
        assert self._secret is not None  # stage DECRYPT is reached only with a key
        ctx = he.load_context(self._secret, cfg.preset, cfg.log_scale, secret=True)
        try:
            for blob in body.chunks:
                he.load_ciphertexts(ctx, [blob], cfg.preset, cfg.log_scale)
        except IntegrityError:
            raise MalformedMessage("the decryption request holds a malformed ciphertext") from None
        return ctx

    def _secrets(self) -> tuple[object, ...]:
        return (self._values, self._secret, self._generated, self._request_ctx, self._keypair, self._channel)

    def _forget(self) -> None:
        """Drop every secret: input, secret context, key pair, channel."""
        self._values = None
        self._secret = self._generated = self._request_ctx = None
        self._keypair = None
        self._channel = b""

    # -- key setup --------------------------------------------------------------------------------
    def _check_key_list(self, key_list: m.KeyList) -> None:
        if not set(key_list.members) <= set(self.config.committee):
            raise ProtocolAbort("the key list names a client outside the committee")
        every_key = [key_list.server_key, *key_list.keys]
        if len(set(every_key)) != len(every_key):
            raise ProtocolAbort("the key list repeats a public key")
        if self._member and self.client_id in key_list.members:
            mine = key_list.keys[key_list.members.index(self.client_id)]
            if self._keypair is None or mine != self._keypair.public_bytes:
                raise ProtocolAbort("the key list does not carry this client's own key")

    def _on_key_list(self, body: m.KeyList) -> bytes:
        """The designated generator: make the key, seal the secret context to every other member."""
        self._check_key_list(body)
        if body.generator != self.client_id or self.client_id not in body.members:
            raise ProtocolAbort("a key list was sent to a client that is not the designated generator")
        assert self._keypair is not None
        self._open_channel(body.server_key)
        secret, public = he.generate_context(self.config.preset, self.config.log_scale)
        session = session_id(self._setup, body.body_bytes(), public)
        recipients, sealed = [], []
        for member, key in zip(body.members, body.keys):
            if member == self.client_id:
                continue
            ad = seal_context(session, self.round, self.client_id, member)
            shared = self._keypair.agree(key, LABEL_SECRET_CONTEXT, ad)
            recipients.append(member)
            sealed.append(seal(shared, secret, ad, self._random))
        self._generated = (secret, public)
        self._stage = Stage.CONTEXT
        return self._send(m.Kind.KEY_PACKAGE, self._setup, m.KeyPackage(public, tuple(recipients), tuple(sealed)))

    def _on_context(self, body: m.ContextBroadcast) -> bytes:
        """Every client: check the public context, take the secret one if addressed, then upload."""
        key_list = body.key_list
        self._check_key_list(key_list)
        if self._keypair is None or body.recipient_key != self._keypair.public_bytes:
            raise ProtocolAbort("the server holds another key for this client's id (taken over by another "
                                "party, or a server that swapped it)")
        self._open_channel(key_list.server_key)
        cfg = self.config
        public_ctx = he.load_context(body.public_context, cfg.preset, cfg.log_scale, secret=False)
        session = session_id(self._setup, key_list.body_bytes(), body.public_context)
        secret = self._receive_secret(key_list, body, session)
        if self._values is None:
            raise ParameterError("no input was set for this round")
        upload = self._encrypt(public_ctx, body.public_context)
        self._session, self._secret, self._generated = session, secret, None
        self._stage = Stage.DECRYPT if secret is not None else Stage.DONE
        return self._send(m.Kind.UPLOAD, session, upload)

    def _receive_secret(self, key_list: m.KeyList, body: m.ContextBroadcast, session: bytes) -> bytes | None:
        if self._generated is not None and key_list.generator == self.client_id:
            if body.sealed or body.public_context != self._generated[1]:
                raise IntegrityError("the server altered the public context this client generated")
            return self._generated[0]
        if not self._member or self.client_id not in key_list.members:
            if body.sealed:
                raise ProtocolAbort("a secret context was sent to a client outside the key list")
            return None
        if not body.sealed:
            raise ProtocolAbort("a key-list member received no secret context")
        assert self._keypair is not None
        generator_key = key_list.keys[key_list.members.index(key_list.generator)]
        ad = seal_context(session, self.round, key_list.generator, self.client_id)
        secret = open_sealed(self._keypair.agree(generator_key, LABEL_SECRET_CONTEXT, ad), body.sealed, ad)
        ctx = he.load_context(secret, self.config.preset, self.config.log_scale, secret=True)
        if ctx.serialize(**he.SAVE_PUBLIC) != body.public_context:
            raise IntegrityError("the public context does not belong to the delivered secret key")
        return secret

    def _encrypt(self, public_ctx: Any, public_bytes: bytes) -> m.Upload:
        """Clip, weight and stochastically round onto the grid; encrypt slot-sized chunks."""
        cfg = self.config
        assert self._values is not None
        words = np.zeros(cfg.chunks * cfg.slots, dtype=np.int64)
        d = cfg.schema.size
        cfg.encoding.quantize_into(self._values, self._weight, MaskStream(self._random(32)), words[:d])
        words[d] = self._weight << cfg.grid_bits
        self._values = None
        pool = self._pool or default_pool()
        blobs = pool.encrypt(public_ctx, public_bytes, cfg.grid_bits, words.reshape(cfg.chunks, cfg.slots))
        return m.Upload(tuple(blobs))

    # -- decryption -------------------------------------------------------------------------------
    def _on_decrypt(self, body: m.Body) -> bytes:
        """The key holder: decrypt the sum once, check it against the noise bound, round, release.

        Uses the secret context :meth:`_parse_request` loaded after parsing every chunk.
        """
        assert isinstance(body, m.DecryptRequest)
        ctx, self._request_ctx = self._request_ctx, None
        cfg, n = self.config, len(body.contributors)
        if body.contributors and body.contributors[-1] >= cfg.num_clients:
            raise ProtocolAbort("the decryption request names an unknown client")
        if n < cfg.min_contributors:
            raise InsufficientParties(f"{n} contributors; a key holder decrypts sums of at least {cfg.min_contributors}")
        assert self._secret is not None
        secret, self._secret = self._secret, None  # one decryption per key, whatever happens next
        pool = self._pool or default_pool()
        slots = pool.decrypt(ctx, secret, body.chunks, cfg.preset, cfg.log_scale).reshape(-1)
        grid = self._round_to_grid(slots, n)
        self._stage = Stage.DONE
        return self._send(m.Kind.DECRYPT_RESPONSE, self._session, m.DecryptResponse(body.contributors, grid))

    def _round_to_grid(self, slots: np.ndarray, n: int) -> np.ndarray:
        """Round to the grid, refusing anything an honest sum of ``n`` inputs cannot decrypt to."""
        cfg, g = self.config, self.config.grid_bits
        scaled = slots * 2.0**g
        grid = np.rint(scaled)
        if float(np.max(np.abs(scaled - grid))) > cfg.noise_bound(n) * 2.0**g:
            raise IntegrityError("the decrypted sum is off the grid: not a sum of honest ciphertexts")
        if grid[cfg.dim :].any():
            raise IntegrityError("the decrypted sum has non-zero padding")
        out = grid[: cfg.dim].astype(np.int64)
        check_grid_sum(cfg, out, n)
        return out
