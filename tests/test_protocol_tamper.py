"""Tamper tests: flip bytes of every message type; the receiver rejects it and keeps its state."""

from __future__ import annotations

import random as pyrandom

import numpy as np
import pytest

from secagg import IntegrityError, InsufficientParties, MalformedMessage, ProtocolAbort, SecAggError, ThreatModel
from secagg.protocols.secagg import Stage
from secagg.protocols.secagg.messages import Kind
from secagg.wire import HEADER_BYTES

from .helpers import encoded_inputs, make_parties, ring_sum, small_config

TYPED = (MalformedMessage, ProtocolAbort, IntegrityError)


def _config(malicious: bool = False):
    threat = ThreatModel.malicious(0.0, 0.0) if malicious else ThreatModel.semi_honest(0.0, 0.0)
    return small_config(5, 12, threshold=3 if not malicious else 4, threat=threat)


def _flip(data: bytes, position: int, bit: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


class Round:
    """Steps a round by hand so a test can intercept any single message."""

    def __init__(self, malicious: bool = False) -> None:
        self.config = _config(malicious)
        self.server, self.clients = make_parties(self.config)
        self.encoded = encoded_inputs(self.config, self.clients)

    def client_messages(self, outbox: dict[int, bytes] | None) -> dict[int, bytes]:
        if outbox is None:
            return {c: p.advertise() for c, p in self.clients.items()}
        return {c: self.clients[c].handle(d) for c, d in outbox.items()}

    def upload(self, messages: dict[int, bytes]) -> dict[int, bytes]:
        for data in messages.values():
            self.server.receive(data)
        return self.server.advance()


def _positions(data: bytes, count: int, rng: pyrandom.Random) -> list[int]:
    head = list(range(min(HEADER_BYTES, len(data))))
    rest = list(range(HEADER_BYTES, len(data)))
    return rng.sample(head, min(6, len(head))) + rng.sample(rest, min(count, len(rest)))


def _upload_kinds(malicious: bool) -> list[int]:
    kinds = [Kind.SHARES, Kind.MASKED_INPUT, Kind.UNMASK_RESPONSE]
    return kinds + [Kind.SURVIVOR_SIGNATURE] if malicious else kinds


@pytest.mark.parametrize("malicious", [False, True])
def test_flipped_client_messages_are_rejected_by_the_server(malicious: bool) -> None:
    rng = pyrandom.Random(1)
    for kind in _upload_kinds(malicious):
        r = Round(malicious)
        outbox = r.upload(r.client_messages(None))
        while True:
            messages = r.client_messages(outbox)
            sample = next(iter(messages.values()))
            if sample[6] == kind:
                break
            outbox = r.upload(messages)
        victim = min(messages)
        original = messages[victim]
        for pos in _positions(original, 12, rng):
            with pytest.raises(TYPED):
                r.server.receive(_flip(original, pos, rng.randrange(8)))
        with pytest.raises(TYPED):
            r.server.receive(original[:-1])
        with pytest.raises(TYPED):
            r.server.receive(original + b"\x00")
        # The genuine message is still accepted and the round still sums exactly.
        outbox = r.upload(messages)
        while r.server.stage is not Stage.DONE:
            outbox = r.upload(r.client_messages(outbox))
        assert np.array_equal(r.server.result().ring_sum, ring_sum(r.config, r.encoded, range(5)))


@pytest.mark.parametrize("malicious", [False, True])
def test_flipped_server_messages_are_rejected_by_clients(malicious: bool) -> None:
    rng = pyrandom.Random(2)
    r = Round(malicious)
    outbox = r.upload(r.client_messages(None))
    while r.server.stage is not Stage.DONE:
        victim = min(outbox)
        original = outbox[victim]
        client = r.clients[victim]
        stage_before = client.stage
        positions = _positions(original, 12, rng)
        if original[6] == Kind.KEY_LIST:
            positions = [p for p in positions if p < HEADER_BYTES]  # body flips are caught later, below
        for pos in positions:
            with pytest.raises(TYPED):
                client.handle(_flip(original, pos, rng.randrange(8)))
            assert client.stage is stage_before
        outbox = r.upload(r.client_messages(outbox))
    assert np.array_equal(r.server.result().ring_sum, ring_sum(r.config, r.encoded, range(5)))


def test_tampered_key_list_body_never_yields_a_wrong_sum() -> None:
    """The key list is not yet authenticated; tampering shows up as a session mismatch."""
    rng = pyrandom.Random(3)
    for trial in range(12):
        r = Round()
        outbox = r.upload(r.client_messages(None))
        victim = trial % 5
        data = outbox[victim]
        outbox[victim] = _flip(data, rng.randrange(HEADER_BYTES, len(data)), rng.randrange(8))
        replies, errors = {}, []
        try:
            while r.server.stage is not Stage.DONE:
                replies = {}
                for c, d in outbox.items():
                    try:
                        replies[c] = r.clients[c].handle(d)
                    except SecAggError as exc:
                        errors.append(exc)
                for d in replies.values():
                    try:
                        r.server.receive(d)
                    except SecAggError as exc:
                        errors.append(exc)
                outbox = r.server.advance()
        except InsufficientParties:
            assert errors
            continue
        assert errors, "a tampered key list went unnoticed"
        survivors = r.server.result().survivors
        assert victim not in survivors
        assert np.array_equal(r.server.result().ring_sum, ring_sum(r.config, r.encoded, survivors))


def test_messages_for_another_round_or_session_are_refused() -> None:
    config = _config()
    server0, clients0 = make_parties(config, round_number=0)
    server1, clients1 = make_parties(config, round_number=1)
    with pytest.raises(ProtocolAbort):
        server1.receive(clients0[0].advertise())
    other_context, _ = make_parties(config, round_number=0, context=b"other model")
    with pytest.raises(ProtocolAbort):
        other_context.receive(clients0[1].advertise())
    for c in clients1.values():
        server1.receive(c.advertise())
    outbox = server1.advance()
    with pytest.raises(ProtocolAbort):
        clients0[2].handle(outbox[2])  # client 2 of round 0 has not advertised these keys
    with pytest.raises(MalformedMessage):
        server1.receive(b"SAGG" + bytes(60))


def test_duplicate_and_out_of_stage_messages_are_refused() -> None:
    r = Round()
    adverts = r.client_messages(None)
    r.server.receive(adverts[0])
    with pytest.raises(ProtocolAbort):
        r.server.receive(adverts[0])
    for c, d in adverts.items():
        if c:
            r.server.receive(d)
    outbox = r.server.advance()
    with pytest.raises(ProtocolAbort):
        r.server.receive(adverts[1])  # an advertisement during the share stage
    shares = r.client_messages(outbox)
    with pytest.raises(ProtocolAbort):
        r.clients[0].handle(outbox[0])  # the key list again, now out of stage
    assert r.clients[0].stage is Stage.MASK
    r.upload(shares)
