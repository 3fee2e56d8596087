"""A deviating server or client: honest parties refuse to leak and never produce a wrong sum."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import IntegrityError, ProtocolAbort, ThreatModel
from secagg.protocols.secagg import Stage
from secagg.protocols.secagg import messages as m

from secagg.audit.adversary import AdversarialServer, replace_body

from .helpers import CorruptClient, encoded_inputs, make_parties, small_config


def _unmask_lie(change):  # type: ignore[no-untyped-def]
    """A deviating server (the audit's router around an honest one) whose unmask requests are
    rewritten by ``change``."""
    def script(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        return server.rewrite(outbox, set(outbox), change)

    return {"mask": script}


def OverlapServer(config, **kwargs) -> AdversarialServer:  # type: ignore[no-untyped-def]
    """Lists a surviving client as dropped too, hoping to collect both kinds of its shares."""
    return AdversarialServer(config, script=_unmask_lie(lambda body: replace_body(body, dropped=(body.alive[0],))),
                             **kwargs)


def _drive(server, clients, drop=()):
    for c, p in clients.items():
        if c not in drop:
            server.receive(p.advertise())
    outbox = server.advance()
    while server.stage is not Stage.UNMASK:
        for c, d in outbox.items():
            server.receive(clients[c].handle(d))
        outbox = server.advance()
    return outbox


def test_client_refuses_a_survivor_listed_as_dropped() -> None:
    config = small_config(5, 8, threshold=3, threat=ThreatModel.semi_honest(0.0, 0.0))
    _, clients = make_parties(config)
    server = OverlapServer(config, context=b"ctx")
    encoded_inputs(config, clients)
    outbox = _drive(server, clients)
    for c, data in outbox.items():
        with pytest.raises(ProtocolAbort, match="both surviving and dropped"):
            clients[c].handle(data)
        assert clients[c].stage is Stage.ABORTED


def test_client_refuses_to_unmask_when_itself_listed_as_dropped() -> None:
    config = small_config(5, 8, threshold=3, threat=ThreatModel.semi_honest(0.0, 0.0))

    # Claims client 0 dropped although its masked input arrived (a false dropout claim).
    _, clients = make_parties(config)
    server = AdversarialServer(config, context=b"ctx",
                               script=_unmask_lie(lambda body: m.UnmaskRequest(body.alive[1:], (0,))))
    encoded_inputs(config, clients)
    outbox = _drive(server, clients)
    with pytest.raises(ProtocolAbort, match="not surviving"):
        clients[0].handle(outbox[0])
    # The others reveal only the mask-KEY share of client 0, never its self-mask seed share, so
    # client 0's masked input stays hidden behind its self mask (double masking).
    for c in range(1, 5):
        reply = clients[c].handle(outbox[c])
        _, response = server.open(reply)
        kinds = dict(zip(response.owners, response.kinds))
        assert kinds[0] == m.ShareKind.MASK_KEY


def test_server_rejects_low_order_and_repeated_keys() -> None:
    config = small_config(4, 8, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    server, clients = make_parties(config)
    genuine = clients[0].advertise()
    from secagg.wire import HEADER_BYTES

    zero_key = genuine[:HEADER_BYTES] + bytes(32) + genuine[HEADER_BYTES + 32 :]
    with pytest.raises(IntegrityError):
        server.receive(zero_key)
    same = genuine[:HEADER_BYTES] + genuine[HEADER_BYTES : HEADER_BYTES + 32] * 2 + genuine[HEADER_BYTES + 64 :]
    with pytest.raises(ProtocolAbort):
        server.receive(same)
    server.receive(genuine)  # state untouched by the rejected messages


def test_client_rejects_key_list_with_duplicated_keys() -> None:
    config = small_config(4, 8, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))

    def copy_keys(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        """Client 1's key-list entry carries client 0's keys."""
        def change(body):  # type: ignore[no-untyped-def]
            first = body.entries[0]
            return replace_body(body, entries=(first, replace_body(first, client=1)) + body.entries[2:])

        return server.rewrite(outbox, set(outbox), change)

    _, clients = make_parties(config)
    server = AdversarialServer(config, context=b"ctx", script={"advertise": copy_keys})
    for p in clients.values():
        server.receive(p.advertise())
    outbox = server.advance()
    with pytest.raises(ProtocolAbort):
        clients[2].handle(outbox[2])


def test_malicious_variant_rejects_unsigned_or_foreign_keys() -> None:
    config = small_config(5, 8, threat=ThreatModel.malicious(0.0, 0.1))
    server, clients = make_parties(config)
    outsider_server, outsiders = make_parties(config)  # a different registry: Sybils
    with pytest.raises(IntegrityError):
        server.receive(outsiders[0].advertise())
    for p in clients.values():
        server.receive(p.advertise())
    assert len(server.advance()) == 5


def test_vector_outside_the_ring_is_rejected() -> None:
    config = small_config(4, 8, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    _, clients = make_parties(config)
    bad = np.full(config.dim, config.encoding.ring_mask + 1, dtype=config.encoding.dtype)
    from secagg import ParameterError

    with pytest.raises(ParameterError):
        clients[0].set_encoded_input(bad)


def test_a_client_sending_a_crafted_bad_share_cannot_corrupt_the_sum() -> None:
    """A small, well-formed error in one share passes Shamir's range check; verification catches it
    and the server reconstructs from another subset of holders."""
    from secagg.router import run_round

    from .helpers import ring_sum

    config = small_config(6, 8, threshold=3, threat=ThreatModel.semi_honest(0.0, 0.0))
    server, clients = make_parties(config)

    def plus_one(share: bytes) -> bytes:
        return ((np.frombuffer(share, dtype="<u4").astype(np.int64) + 1) % 2147483647).astype("<u4").tobytes()

    clients[2] = CorruptClient(config, 2, context=b"ctx", corrupt=plus_one)  # every share it releases is off by one
    encoded = encoded_inputs(config, clients)
    trace = run_round(server, clients, {5: "mask"})
    assert np.array_equal(trace.result.ring_sum, ring_sum(config, encoded, [0, 1, 2, 3, 4]))


# -- a client masking an invalid encoding: the server refuses the released sum --------------------------
def _hostile_words(config, word_of):  # type: ignore[no-untyped-def]
    words = np.zeros(config.dim, dtype=config.encoding.dtype)
    word_of(words, config.encoding)
    return words


@pytest.mark.parametrize("name, word_of", [
    ("weight above W", lambda w, e: w.__setitem__(-1, e.max_weight + 1)),
    ("negative weight", lambda w, e: w.__setitem__(-1, (1 << e.modulus_bits) - 1)),
    ("value beyond the clip", lambda w, e: (w.__setitem__(-1, 1), w.__setitem__(0, (1 << (e.modulus_bits - 1)) - 1))),
])
def test_a_sum_no_valid_encodings_add_up_to_is_refused(monkeypatch, name, word_of) -> None:
    """The hostile program skips its own check_encoded; the server's range check on the unmasked sum
    (weights in [|S|, |S| W], values within weight_sum * c) refuses it, and releases nothing."""
    from secagg import run_round
    from secagg.encoding import FixedPoint

    config = small_config(5, 8)
    server, clients = make_parties(config)
    for i in range(4):  # honest inputs at 0: the hostile word alone decides the range
        clients[i].set_encoded_input(config.encoding.encode(np.zeros(8)))
    monkeypatch.setattr(FixedPoint, "check_encoded", lambda self, words: 1)
    clients[4].set_encoded_input(_hostile_words(config, word_of))
    with pytest.raises(IntegrityError, match="not a sum of valid inputs"):
        run_round(server, clients)
    assert server.aborted and not server.done


def test_a_sum_of_valid_encodings_at_the_bounds_is_released() -> None:
    """The control just inside the bounds: every client at weight W and every value at +c."""
    from secagg import run_round
    from secagg.encoding import FixedPoint

    schema_config = small_config(5, 8)
    encoding = FixedPoint(clip_bound=4.0, fractional_bits=12, max_weight=3, max_clients=5)
    config = type(schema_config).secagg(5, schema_config.schema, schema_config.threat, encoding)
    server, clients = make_parties(config)
    for client in clients.values():
        client.set_encoded_input(encoding.encode(np.full(8, 4.0), weight=3))
    trace = run_round(server, clients)
    assert trace.result.weight_sum == 15 and np.allclose(trace.result.average_vector(), 4.0)
