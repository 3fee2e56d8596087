"""SecAggServer's public, read-only surface (view, open, seal) and the pure unmask module."""

from __future__ import annotations

import pytest

from secagg import InsufficientParties, IntegrityError, ParameterError, ProtocolAbort, ThreatModel
from secagg.hazmat import shamir
from secagg.hazmat.keys import AgreementKeyPair
from secagg.protocols.secagg import Stage
from secagg.protocols.secagg import messages as m
from secagg.protocols.secagg.common import seed_commitment
from secagg.protocols.secagg.unmask import mask_key_verifier, reconstruct_secret, seed_verifier

from .helpers import encoded_inputs, make_parties, small_config


class _Seeded:
    def __init__(self, seed: int) -> None:
        import numpy as np

        self._rng = np.random.default_rng(seed)  # ok: test shares, not secrets

    def __call__(self, n: int) -> bytes:
        return self._rng.bytes(n)


def test_view_open_and_seal_follow_the_round() -> None:
    config = small_config(4, 8, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    server, clients = make_parties(config)
    encoded_inputs(config, clients)
    for c in clients.values():
        server.receive(c.advertise())
    before = server.view
    assert before.keys == {} and before.session == before.setup
    key_lists = server.advance()
    view = server.view
    assert sorted(view.keys) == [0, 1, 2, 3] and view.session != view.setup and before.keys == {}
    header, body = server.open(key_lists[1])
    assert isinstance(body, m.KeyList) and body.server_key == view.server_key and header.recipient == 1
    replies = {c: clients[c].handle(d) for c, d in key_lists.items()}
    header, bundle = server.open(replies[2])
    assert header.sender == 2 and isinstance(bundle, m.ShareBundle)
    assert server.stage is Stage.SHARE and server.view.commitments == {}  # open() stored nothing
    for data in replies.values():
        server.receive(data)
    deliveries = server.advance()
    with pytest.raises(ProtocolAbort, match="one-time"):  # the delivery's tag key is spent
        server.seal(3, server.open(deliveries[3])[1])
    resealed = server.seal(3, server.open(deliveries[3])[1], reuse_key=True)
    assert resealed == deliveries[3]
    with pytest.raises(ParameterError):
        server.seal(3, m.SurvivorSignature(bytes(64)))
    with pytest.raises(IntegrityError):
        server.open(resealed[:-1] + bytes([resealed[-1] ^ 1]))


def test_reconstruct_secret_decodes_past_a_wrong_share_and_verifies() -> None:
    seed, session = bytes(range(32)), bytes(32)
    verify = seed_verifier(session, {7: seed_commitment(session, 7, seed)})
    xs = list(range(1, 8))
    table = shamir.split([seed], 3, xs, _Seeded(1))
    shares = {x - 1: table[i][0].astype("<u4").tobytes() for i, x in enumerate(xs)}
    shares[0] = bytes([shares[0][0] ^ 1]) + shares[0][1:]  # the first holder (in every first-t subset) lies
    assert reconstruct_secret(7, shares, 3, verify) == seed  # found by Berlekamp-Welch, then verified
    with pytest.raises(InsufficientParties):
        reconstruct_secret(7, {1: shares[1], 2: shares[2]}, 3, verify)
    with pytest.raises(IntegrityError):
        reconstruct_secret(8, shares, 3, verify)  # nothing verifies for an owner without a commitment
    key = AgreementKeyPair.generate()
    with pytest.raises(IntegrityError):
        mask_key_verifier({7: key.public_bytes})(7, bytes(32))
