"""Helpers for the CKKS tests: small sessions with random numpy updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import hashlib

from secagg.audit.adversary import ReplayableRandom
from secagg.encoding import Schema
from secagg.hazmat.keys import AgreementKeyPair
from secagg.protocols.channel import LABEL_SERVER_CHANNEL, TO_CLIENT, TO_SERVER, channel_context, message_key
from secagg.protocols.ckks import CkksClient, CkksConfig, CkksServer
from secagg.protocols.ckks import messages as m
from secagg.protocols.ckks.common import limits_for, setup_id
from secagg.wire import SERVER_ID, Header

SERVER_PRIVATE = hashlib.sha256(b"test server channel key").digest()


# A client whose keys the test knows (a hostile client's own view): the audit's replayable stream.
KnownRandom = ReplayableRandom


def _client_seed(i: int) -> bytes:
    return b"test client %d" % i


@dataclass
class Session:
    config: CkksConfig
    server: CkksServer
    clients: dict[int, CkksClient]
    updates: list[np.ndarray]
    weights: list[int]

    def tag_key(self, client: int, direction: int, kind: int) -> bytes:
        """The one-time tag key of ``client``'s channel: what that client (or the server) can compute."""
        private = KnownRandom(_client_seed(client))(32)
        server_public = AgreementKeyPair.from_private_bytes(SERVER_PRIVATE).public_bytes
        setup = setup_id(self.config, 0, b"")
        secret = AgreementKeyPair.from_private_bytes(private).agree(
            server_public, LABEL_SERVER_CHANNEL, channel_context(setup, client))
        return message_key(secret, direction, kind)

    def _key_for(self, header: Header) -> bytes:
        if header.sender == SERVER_ID:
            return self.tag_key(header.recipient, TO_CLIENT, header.kind)
        return self.tag_key(header.sender, TO_SERVER, header.kind)

    def open(self, data: bytes) -> tuple[Header, m.Body]:
        """Decode any message of this session, checking its tag as its recipient would."""
        return m.decode(data, limits_for(self.config), self._key_for)

    def seal(self, header: Header, body: m.Body) -> bytes:
        """Encode a (possibly altered) message with a valid tag: what its sender can always do."""
        key = self._key_for(header) if header.kind in m.AUTHENTICATED_KINDS else None
        return m.encode(header, body, key)

    def to_upload_stage(self) -> dict[int, bytes]:
        """Every client advertises and the key is set up; returns the context broadcast per client."""
        for cid in sorted(self.clients):
            self.server.receive(self.clients[cid].advertise())
        ((generator, key_list),) = self.server.advance().items()
        self.server.receive(self.clients[generator].handle(key_list))
        return dict(self.server.advance())

    def exact_average(self, survivors: tuple[int, ...]) -> np.ndarray:
        c = self.config.clip_bound
        total = sum(np.clip(self.updates[i], -c, c) * self.weights[i] for i in survivors)
        return total / sum(self.weights[i] for i in survivors)


def make_session(
    n: int = 4, d: int = 300, *, seed: int = 0, weights: list[int] | None = None, **config: Any
) -> Session:
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0.0, 0.5, d) for _ in range(n)]
    weights = weights or [1] * n
    cfg = CkksConfig(n, Schema.of(updates[0]), max_weight=max(weights), **config)
    clients = {i: CkksClient(cfg, i, random=KnownRandom(_client_seed(i))) for i in range(n)}
    for i, client in clients.items():
        client.set_input(updates[i], weights[i])
    return Session(cfg, CkksServer(cfg, random=lambda _: SERVER_PRIVATE), clients, updates, weights)
