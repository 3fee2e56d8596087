"""Shared test helpers: building parties and predicting a round's outcome from the public graph."""

from __future__ import annotations

import dataclasses

import numpy as np

from secagg import FixedPoint, Schema, SecAggClient, SecAggConfig, SecAggServer, SigningKey, ThreatModel
from secagg.audit.adversary import ReplayableRandom
from secagg.hazmat.keys import AgreementKeyPair
from secagg.protocols.secagg import Stage
from secagg.protocols.secagg import messages as m
from secagg.protocols.secagg.common import LABEL_SERVER_CHANNEL, TO_SERVER, channel_context, message_key
from secagg.wire import Header


def make_parties(config: SecAggConfig, round_number: int = 0, context: bytes = b"ctx"):
    registry = identities = None
    if config.threat.is_malicious:
        identities = {i: SigningKey.generate() for i in range(config.num_clients)}
        registry = {i: k.public_bytes for i, k in identities.items()}
    server = SecAggServer(config, round_number=round_number, context=context, registry=registry)
    clients = {
        i: SecAggClient(config, i, round_number=round_number, context=context,
                        identity=identities[i] if identities else None, registry=registry)
        for i in range(config.num_clients)
    }
    return server, clients


def encoded_inputs(config: SecAggConfig, clients, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, client in clients.items():
        values = rng.normal(size=config.schema.size)
        out[i] = config.encoding.encode(values)
        client.set_encoded_input(out[i])
    return out


def ring_sum(config: SecAggConfig, encoded: dict[int, np.ndarray], members) -> np.ndarray:
    total = np.zeros(config.dim, dtype=np.uint64)
    for i in members:
        total += encoded[i]
    return (total & np.uint64(config.encoding.ring_mask)).astype(config.encoding.dtype)


def small_config(n: int, dim: int, protocol: str = "secagg", threat: ThreatModel | None = None,
                 threshold: int | None = None, degree: int | None = None) -> SecAggConfig:
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    threat = threat or ThreatModel.semi_honest(0.1, 0.2)
    encoding = FixedPoint(clip_bound=4.0, fractional_bits=12, max_clients=n)
    if threshold is not None:
        return SecAggConfig(n, threshold, schema, encoding, degree, threat=threat, chunk_size=1024)
    maker = SecAggConfig.secagg if protocol == "secagg" else SecAggConfig.secagg_plus
    return maker(n, schema, threat, encoding)


def predict(graph: dict[int, tuple[int, ...]], t: int, n: int, drops: dict[int, str]):
    """Survivor set the protocol must produce, or None if it must raise InsufficientParties.

    Mirrors the protocol's set logic: clients with fewer than t neighbours abort, survivors need t
    share holders among the unmask responders, and so on.
    """
    u1 = [c for c in range(n) if drops.get(c) != "advertise"]
    if len(u1) < t:
        return None
    u2 = {c for c in u1 if drops.get(c) != "share" and len(graph[c]) + 1 >= t}
    if len(u2) < t:
        return None
    u3 = {c for c in u2 if drops.get(c) not in ("mask",) and len(set(graph[c]) & u2) + 1 >= t}
    if len(u3) < t:
        return None
    u4 = {c for c in u3 if drops.get(c) not in ("unmask", "consistency")}
    for owner in u2:  # shares are held by the owner's neighbours and by the owner itself
        if len((set(graph[owner]) | {owner}) & u4) < t:
            return None
    return sorted(u3)


class CorruptClient:
    """A corrupt client built from public pieces, not by reaching into a SecAggClient.

    An honest client runs with randomness the test can replay (so the test knows its encryption
    key, the first key it draws); its unmask response is rewritten with ``corrupt(share)`` and
    re-tagged with its own channel key, as any corrupt client can.
    """

    def __init__(self, config: SecAggConfig, client_id: int, *, corrupt, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._seed = b"corrupt-client-%d" % client_id
        self.client = SecAggClient(config, client_id, random=ReplayableRandom(self._seed), **kwargs)
        self.config, self.client_id, self._corrupt, self._server_key = config, client_id, corrupt, b""

    @property
    def stage(self):  # type: ignore[no-untyped-def]
        return self.client.stage

    def set_encoded_input(self, words: np.ndarray) -> None:
        self.client.set_encoded_input(words)

    def advertise(self) -> bytes:
        return self.client.advertise()

    def close(self) -> None:
        self.client.close()

    def handle(self, data: bytes) -> bytes | None:
        header, _ = Header.decode(data)
        if header.kind == m.Kind.KEY_LIST:
            key_list = m.decode(data, max_parties=self.config.num_clients)[1]
            assert isinstance(key_list, m.KeyList)
            self._server_key = key_list.server_key
        reply = self.client.handle(data)
        if reply is None or self.client.stage is not Stage.DONE:
            return reply
        encryption = AgreementKeyPair.generate(ReplayableRandom(self._seed))
        context = channel_context(self.client.session, self.client_id)
        channel = encryption.agree(self._server_key, LABEL_SERVER_CHANNEL, context)
        key = message_key(channel, TO_SERVER, m.Kind.UNMASK_RESPONSE)
        header, body = m.decode(reply, max_parties=self.config.num_clients, tag_key=lambda _: key)
        assert isinstance(body, m.UnmaskResponse)
        return m.encode(header, dataclasses.replace(body, shares=tuple(self._corrupt(s) for s in body.shares)), key)
