"""The deviating server of the audit harness: an honest server behind interceptors on the message path.

:class:`AdversarialServer` is the server side of a router. It holds an honest
:class:`~secagg.protocols.secagg.SecAggServer` (composition: it reads nothing private of it) and
sees every client message first:

- it opens each one with the honest server's public :meth:`~SecAggServer.open` and keeps what
  clients reveal (masked inputs, survivor signatures, unmask responses);
- it delivers the message to the honest server, or keeps it back (a masked input it pretends never
  arrived, :meth:`AdversarialServer.forget_masked`);
- when a stage closes it lets a script rewrite the honest outbox, re-sealing bodies with the public
  :meth:`~SecAggServer.seal`;
- when the honest server refuses to go on (too few clients, a survivor set it could not unmask), the
  attacker does not hold itself back: it builds the next messages itself from public message types
  and the server's public :class:`~secagg.protocols.secagg.ServerView`, and clients must do the
  refusing. From then on it runs the round alone; it keeps what clients reveal but computes no
  aggregate. If it goes alone from the key list on (the honest server never derived a channel), it
  uses a channel key of its own, so it can open and seal everything clients send after that.

Afterwards it tries to unmask individual inputs from what it kept, with the same public functions
(:mod:`secagg.protocols.secagg.unmask`) the honest server unmasks the sum with.

This module attacks our own protocol on purpose: nothing here belongs in a production server.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import InsufficientParties, IntegrityError, ProtocolAbort, SecAggError
from ..hazmat.keys import AgreementKeyPair
from ..hazmat.random import RandomSource, system_random
from ..protocols.channel import LABEL_SERVER_CHANNEL, TO_CLIENT, TO_SERVER, channel_context, message_key
from ..params import SecAggConfig
from ..protocols.secagg import AggregateResult, SecAggServer, ServerView, Stage
from ..protocols.secagg import messages as m
from ..hazmat.prg import MaskStream
from ..protocols.secagg.common import apply_masks, neighbours, protocol_id, session_id
from ..protocols.secagg.unmask import (
    Verifier, mask_key_verifier, pairwise_corrections, reconstruct_secret, seed_verifier, self_mask,
)
from ..wire import SERVER_ID, Header

__all__ = ["AdversarialServer", "Deviation"]

Deviation = Callable[["AdversarialServer", dict[int, bytes]], dict[int, bytes]]
"""script[stage](server, outbox) -> the messages actually sent when that stage closes."""

# What the honest server says when it refuses to close a stage; the attacker refuses only with none.
_WHAT = {
    Stage.ADVERTISE: "advertised keys",
    Stage.SHARE: "shared their keys",
    Stage.MASK: "sent masked inputs",
    Stage.CONSISTENCY: "signed the survivor set",
}
# Stages at which the attacker accepts every authentic message, whatever the honest server makes of
# it: a signature on another survivor set, a share the honest server thinks the client cannot hold.
_KEEP_ALL = (Stage.CONSISTENCY, Stage.UNMASK)


@dataclass
class _OwnChannels:
    """The attacker's own server key and the channels and session it fixed with its key list."""

    key: AgreementKeyPair
    session: bytes
    keys: dict[int, m.KeyEntry]
    channels: dict[int, bytes]
    graph: dict[int, tuple[int, ...]]


def _claimed_sender(data: bytes) -> int:
    """The sender a header names, unauthenticated (it only picks a path; open() checks it), or -1."""
    try:
        return Header.decode(data)[0].sender
    except SecAggError:
        return -1


class AdversarialServer:
    """A scriptable server that deviates from the protocol around an honest one.

    Args:
        config, round_number, context, registry, random: as for :class:`SecAggServer`.
        script: stage name -> function mapping the outbox of that stage to the one sent.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        script: Mapping[str, Deviation] | None = None,
        round_number: int = 0,
        context: bytes = b"",
        registry: dict[int, bytes] | None = None,
        random: RandomSource = system_random,
    ) -> None:
        self.config = config
        self.honest = SecAggServer(config, round_number=round_number, context=context, registry=registry,
                                   random=random)
        self.script = dict(script or {})
        self.kept: dict[Stage, dict[int, m.Body]] = defaultdict(dict)
        """Stage -> sender -> every authentic body received in it (delivered or not)."""
        self.masked: dict[int, np.ndarray] = {}
        self.signatures: dict[int, bytes] = {}
        self.responses: list[tuple[int, m.UnmaskResponse]] = []
        self.aggregate_error = ""
        self.survivors: tuple[int, ...] = ()
        self._withheld: set[int] = set()
        self._delivered: dict[Stage, set[int]] = defaultdict(set)
        self._own: Stage | None = None  # the stage, once the attacker runs the round without the honest server
        self._alone: _OwnChannels | None = None
        self._random = random
        self._own_dropped: dict[int, str] = {}
        self._shared: tuple[int, ...] = ()

    # -- what the router sees of a server ---------------------------------------------------------
    @property
    def stage(self) -> Stage:
        if self.aggregate_error:
            return Stage.ABORTED
        return self._own if self._own is not None else self.honest.stage

    @property
    def done(self) -> bool:
        """True once the round is over for the attacker: finished, or aborted (``result()`` then raises)."""
        return self.stage in (Stage.DONE, Stage.ABORTED)

    @property
    def round(self) -> int:
        return self.honest.round

    @property
    def graph(self) -> dict[int, tuple[int, ...]]:
        return dict(self.view.graph)

    @property
    def view(self) -> ServerView:
        """What the server knows: the honest server's, or the attacker's own once it fixed the key list."""
        own = self._alone
        if own is None:
            return self.honest.view
        commitments = {c: b.seed_commitment for c, b in self.kept[Stage.SHARE].items() if isinstance(b, m.ShareBundle)}
        return ServerView(setup=self.setup, session=own.session, stage=self.stage, server_key=own.key.public_bytes,
                          keys=MappingProxyType(dict(own.keys)), graph=MappingProxyType(dict(own.graph)),
                          commitments=MappingProxyType(commitments), shared=self._shared, survivors=self.survivors)

    @property
    def setup(self) -> bytes:
        return self.honest.view.setup

    @property
    def dropped(self) -> dict[int, str]:
        """Client id -> the stage at which the server claims it stopped hearing from it."""
        return {**self.honest.dropped, **self._own_dropped}

    def result(self) -> AggregateResult:
        return self.honest.result()

    def receive(self, data: bytes) -> int:
        """Open a client message, keep what it reveals, and deliver it to the honest server (or not).

        Raises:
            MalformedMessage, ProtocolAbort, IntegrityError: the attacker rejects the message too.
        """
        stage = self.stage
        peek = _claimed_sender(data)
        if self._own is None and not (stage is Stage.MASK and peek in self._withheld):
            try:
                self.honest.receive(data)
                self._delivered[stage].add(peek)
            except SecAggError:
                if stage not in _KEEP_ALL:
                    raise
                if peek in self.kept[stage]:
                    raise
        elif peek in self.kept[stage]:
            raise ProtocolAbort(f"duplicate message from client {peek}")
        header, body = self.open(data)
        self._keep(stage, header.sender, body)
        return header.sender

    def _keep(self, stage: Stage, sender: int, body: m.Body) -> None:
        self.kept[stage][sender] = body
        if isinstance(body, m.MaskedInput):
            self.masked[sender] = body.vector.copy()
        elif isinstance(body, m.SurvivorSignature):
            self.signatures[sender] = body.signature  # whatever set the client signed: kept, not checked
        elif isinstance(body, m.UnmaskResponse):
            self.responses.append((sender, body))

    def advance(self) -> dict[int, bytes]:
        """Close the current stage (honestly while the honest server goes on), then apply the script.

        Raises:
            InsufficientParties: nobody at all answered in this stage; the round is over.
        """
        closing = self.stage
        if self._own is not None:
            outbox = self._close_alone(closing)
        else:
            try:
                outbox = dict(self.honest.advance())
            except SecAggError as exc:
                if closing is Stage.UNMASK:  # the honest server's own unmasking failed
                    self.aggregate_error = f"{type(exc).__name__}: {exc}"
                    return {}
                if not isinstance(exc, InsufficientParties):
                    raise
                outbox = self._close_alone(closing)  # the attacker never holds itself back
            if closing is Stage.MASK and self._own is None:
                self.survivors = self.honest.view.survivors
        deviation = self.script.get(closing.value)
        return deviation(self, outbox) if deviation else outbox

    # -- channels ---------------------------------------------------------------------------------
    def open(self, data: bytes) -> tuple[Header, m.Body]:
        """Decode a message on one of the server's channels (either direction)."""
        if self._alone is None:
            return self.honest.open(data)
        enc = self.config.encoding
        vector = m.VectorFormat(enc.modulus_bits, self.config.dim, enc.dtype)
        return m.decode(data, max_parties=self.config.num_clients, vector=vector, tag_key=self._own_tag)

    def _own_tag(self, header: Header) -> bytes:
        assert self._alone is not None
        outgoing = header.sender == SERVER_ID
        client = header.recipient if outgoing else header.sender
        channel = self._alone.channels.get(client)
        if channel is None:
            raise ProtocolAbort(f"no authenticated channel with client {client}")
        return message_key(channel, TO_CLIENT if outgoing else TO_SERVER, header.kind)

    def read(self, data: bytes) -> m.Body:
        """The body of a message on one of the server's channels."""
        return self.open(data)[1]

    def seal(self, client: int, body: m.Body) -> bytes:
        """A server message of this round for ``client``, tagged with its channel key (the server can;
        an attacker reuses one-time keys freely)."""
        own = self._alone
        if own is None:
            return self.honest.seal(client, body, reuse_key=True)
        kind = m.Kind(body.KIND)
        session = self.setup if kind is m.Kind.KEY_LIST else own.session
        header = Header(kind, protocol_id(self.config), self.honest.round, session, SERVER_ID, client)
        tag = message_key(own.channels[client], TO_CLIENT, kind) if kind in m.AUTHENTICATED_KINDS else None
        return m.encode(header, body, tag)

    def rewrite(self, outbox: dict[int, bytes], clients: set[int], change: Callable[[m.Body], m.Body]) -> dict[int, bytes]:
        """Replace the bodies sent to ``clients`` by ``change(body)``, keeping valid tags."""
        out = dict(outbox)
        for c in clients & set(outbox):
            out[c] = self.seal(c, change(self.read(outbox[c])))
        return out

    def forget_masked(self, clients: Iterable[int]) -> None:
        """Pretend these clients' masked inputs never arrive: they are kept (``masked``), not delivered.

        Raises:
            ProtocolAbort: a masked input of one of them was already delivered.
        """
        chosen = set(clients)
        if chosen & self._delivered[Stage.MASK]:
            raise ProtocolAbort("a masked input to forget was already delivered to the honest server")
        self._withheld |= chosen

    def keep_response(self, data: bytes) -> None:
        """Open and keep an unmask response that arrived outside the normal flow."""
        header, body = self.open(data)
        assert isinstance(body, m.UnmaskResponse)
        self.responses.append((header.sender, body))

    # -- going on alone ---------------------------------------------------------------------------
    def _close_alone(self, stage: Stage) -> dict[int, bytes]:
        """Close ``stage`` with whatever arrived, where the honest server refused to.

        Only an empty stage stops the attacker; what it sends is built from public message types.
        """
        arrived = self._arrived(stage)
        if not arrived and stage in _WHAT:
            self._own = Stage.ABORTED
            raise InsufficientParties(f"only 0 clients {_WHAT[stage]}; 1 are needed")
        if stage is Stage.UNMASK:
            self.aggregate_error = "the honest server refused to finish this round; the attacker computes no aggregate"
            self._own = Stage.ABORTED
            return {}
        build = {Stage.ADVERTISE: self._key_list, Stage.SHARE: self._deliveries, Stage.MASK: self._after_mask,
                 Stage.CONSISTENCY: self._unmask_request}[stage]
        return build(arrived)

    def _arrived(self, stage: Stage) -> dict[int, m.Body]:
        """Bodies of ``stage`` that count: delivered to the honest server, or (alone) every kept one."""
        kept = self.kept[stage]
        if self._own is not None or stage in _KEEP_ALL:
            chosen = set(kept) - (self._withheld if stage is Stage.MASK else set())
        else:
            chosen = self._delivered[stage]
        return {c: kept[c] for c in sorted(chosen)}

    def _key_list(self, arrived: dict[int, m.Body]) -> dict[int, bytes]:
        entries = []
        for client, body in arrived.items():
            assert isinstance(body, m.Advertise)
            entries.append(m.KeyEntry(client, body.encryption_key, body.mask_key, body.signature))
        # The honest server derived no channel: the attacker fixes the key list with a key of its own.
        own = AgreementKeyPair.generate(self._random)
        key_list = m.KeyList(own.public_bytes, tuple(entries))
        session = session_id(self.setup, key_list.body_bytes())
        channels = {e.client: own.agree(e.encryption_key, LABEL_SERVER_CHANNEL, channel_context(session, e.client))
                    for e in entries}
        keys = {e.client: e for e in entries}
        graph = neighbours(sorted(keys), self.config.degree, self.setup, self.config.num_clients)
        self._alone = _OwnChannels(own, session, keys, channels, graph)
        self._own = Stage.SHARE
        return {e.client: self.seal(e.client, key_list) for e in entries}

    def _deliveries(self, arrived: dict[int, m.Body]) -> dict[int, bytes]:
        inbound: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for sender, body in arrived.items():
            assert isinstance(body, m.ShareBundle)
            for peer, ciphertext in zip(body.peers, body.ciphertexts):
                inbound[peer].append((sender, ciphertext))
        self._shared = tuple(arrived)
        self._own = Stage.MASK
        out = {}
        for client in self._shared:
            pairs = sorted(inbound[client])
            out[client] = self.seal(client, m.ShareDelivery(tuple(p for p, _ in pairs), tuple(c for _, c in pairs)))
        return out

    def _after_mask(self, arrived: dict[int, m.Body]) -> dict[int, bytes]:
        self.survivors = tuple(arrived)
        shared = self._shared or self.view.shared
        self._own_dropped.update({c: "mask" for c in shared if c not in arrived})
        if self.config.threat.is_malicious:
            self._own = Stage.CONSISTENCY
            return {c: self.seal(c, m.SurvivorList(self.survivors)) for c in self.survivors}
        self._own = Stage.UNMASK
        request = m.UnmaskRequest(self.survivors, self._dropped_at_mask())
        return {c: self.seal(c, request) for c in self.survivors}

    def _unmask_request(self, arrived: dict[int, m.Body]) -> dict[int, bytes]:
        signers = tuple(arrived)
        survivors = self.survivors
        self._own_dropped.update({c: "consistency" for c in survivors if c not in arrived and c not in self.dropped})
        request = m.UnmaskRequest(survivors, self._dropped_at_mask(), signers, tuple(self.signatures[c] for c in signers))
        self._own = Stage.UNMASK
        return {c: self.seal(c, request) for c in signers}

    def _dropped_at_mask(self) -> tuple[int, ...]:
        return tuple(sorted(c for c, s in self.dropped.items() if s == "mask"))

    # -- the attacker's goal ----------------------------------------------------------------------
    def released(self, owner: int) -> dict[int, dict[int, bytes]]:
        """Share kind -> {holder: share} that clients released for ``owner``."""
        out: dict[int, dict[int, bytes]] = defaultdict(dict)
        for holder, body in self.responses:
            for o, kind, share in zip(body.owners, body.kinds, body.shares):
                if o == owner:
                    out[kind][holder] = share
        return out

    def _verifiers(self) -> tuple[ServerView, dict[int, bytes], Verifier, Verifier]:
        view = self.view
        public = {c: e.mask_key for c, e in view.keys.items()}
        return view, public, seed_verifier(view.session, view.commitments), mask_key_verifier(public)

    def _secret(self, owner: int, shares: dict[int, bytes], verify: Verifier) -> bytes | None:
        """The verified secret behind ``shares``, or None without t consistent shares."""
        try:
            return reconstruct_secret(owner, shares, self.config.threshold, verify)
        except (InsufficientParties, IntegrityError):
            return None

    def _unmask(self, owner: int, streams: list[tuple[MaskStream, int]]) -> np.ndarray:
        out = self.masked[owner].copy()
        apply_masks(out, streams, self.config.chunk_size)
        unmasked: np.ndarray = out & out.dtype.type(self.config.encoding.ring_mask)
        return unmasked

    def recover(self, owner: int) -> np.ndarray | None:
        """Try to unmask ``owner``'s individual input from what clients released; None if impossible."""
        view, public, seed_ok, key_ok = self._verifiers()
        if owner not in self.masked or not view.commitments.get(owner):
            return None
        shares = self.released(owner)
        seed = self._secret(owner, shares.get(m.ShareKind.SELF_MASK_SEED, {}), seed_ok)
        key = self._secret(owner, shares.get(m.ShareKind.MASK_KEY, {}), key_ok)
        if seed is None or key is None:
            return None
        # The owner's own pairwise masks are the corrections for it, with every sign negated.
        pairs = pairwise_corrections(view.session, {owner: key}, view.graph, public, set(view.shared))
        return self._unmask(owner, [(self_mask(seed, view.session), -1)] + [(s, -sign) for s, sign in pairs])

    def recover_isolated(self, owner: int, shown: tuple[int, ...], known: Mapping[int, bytes]) -> np.ndarray | None:
        """Unmask ``owner``, who masked only with ``shown``: its seed from released seed shares, each
        peer's mask key from ``known`` (corrupt clients) or from released mask-key shares."""
        if owner not in self.masked:
            return None
        view, public, seed_ok, key_ok = self._verifiers()
        seed = self._secret(owner, self.released(owner).get(m.ShareKind.SELF_MASK_SEED, {}), seed_ok)
        if seed is None:
            return None
        keys = {}
        for peer in shown:
            key = known.get(peer) or self._secret(peer, self.released(peer).get(m.ShareKind.MASK_KEY, {}), key_ok)
            if key is None:
                return None
            keys[peer] = key
        # The corrections a server applies for a survivor set of just the owner.
        pairs = pairwise_corrections(view.session, keys, view.graph, public, {owner})
        return self._unmask(owner, [(self_mask(seed, view.session), -1)] + pairs)
