"""A deviating server or client: honest parties refuse to leak and never produce a wrong sum."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import IntegrityError, ProtocolAbort, ThreatModel
from secagg.protocols.secagg import SecAggServer, Stage
from secagg.protocols.secagg import messages as m

from .helpers import encoded_inputs, make_parties, small_config


class OverlapServer(SecAggServer):
    """Lists a surviving client as dropped too, hoping to collect both kinds of its shares."""

    def _close_masked(self):  # type: ignore[override]
        self._survivors = tuple(sorted(self._inbox))
        self._dropped["mask"] = (self._survivors[0],)
        return self._unmask_requests(m.UnmaskRequest(self._survivors, self._dropped["mask"]))


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

    class ClaimDropped(SecAggServer):
        """Claims client 0 dropped although its masked input arrived (a false dropout claim)."""

        def _close_masked(self):  # type: ignore[override]
            self._survivors = tuple(sorted(self._inbox))
            request = m.UnmaskRequest(self._survivors[1:], (0,))
            self._next(Stage.UNMASK)
            return {c: self._send(m.Kind.UNMASK_REQUEST, self._session, c, request) for c in self._survivors}

    _, clients = make_parties(config)
    server = ClaimDropped(config, context=b"ctx")
    encoded_inputs(config, clients)
    outbox = _drive(server, clients)
    with pytest.raises(ProtocolAbort, match="not surviving"):
        clients[0].handle(outbox[0])
    # The others reveal only the mask-KEY share of client 0, never its self-mask seed share, so
    # client 0's masked input stays hidden behind its self mask (double masking).
    for c in range(1, 5):
        _, body = m.decode(outbox[c], max_parties=5, tag_key=clients[c]._tag_key)
        reply = clients[c].handle(outbox[c])
        _, response = m.decode(reply, max_parties=5, tag_key=lambda h: server._tag_key(h))
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

    class CopyKeys(SecAggServer):
        def _close_advertise(self):  # type: ignore[override]
            first = self._inbox[0]
            self._inbox[1] = first
            return super()._close_advertise()

    _, clients = make_parties(config)
    server = CopyKeys(config, context=b"ctx")
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
    encoded = encoded_inputs(config, clients)
    liar = clients[2]
    honest_held = liar._on_unmask

    def lie(body):  # type: ignore[no-untyped-def]
        liar._held = {o: (s + 1) % 2147483647 for o, s in liar._held.items()}
        return honest_held(body)

    liar._on_unmask = lie  # type: ignore[method-assign]
    trace = run_round(server, clients, {5: "mask"})
    assert np.array_equal(trace.result.ring_sum, ring_sum(config, encoded, [0, 1, 2, 3, 4]))
