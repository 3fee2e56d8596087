"""Core fixes found by the harness: the malicious quorum (SecAgg+) and semi-honest registries."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import InsufficientParties, SigningKey
from secagg.audit.adversary import CONTEXT, AdversarialServer, cast, play, plain_sum
from secagg.audit.harness import harness_config
from secagg.protocols.secagg import SecAggServer, Stage
from secagg.protocols.secagg import messages as m
from secagg.router import run_round


def test_quorum_is_t_for_semi_honest_and_complete_graphs() -> None:
    assert harness_config("secagg+", False).quorum == harness_config("secagg+", False).threshold
    complete = harness_config("secagg", True)
    assert complete.quorum == complete.threshold == 12
    plus = harness_config("secagg+", True)
    # fcp's semi-malicious rule gave (8, 6): isolatable (issue 8). 2t >= k + t1 + 3 with t1 = 2 gives (10, 8).
    assert (plus.degree, plus.threshold, plus.quorum) == (10, 8, 12)


def test_malicious_client_refuses_a_key_list_below_the_quorum() -> None:
    config = harness_config("secagg+", True)
    parties = cast(config, range(11))  # 11 >= t + 1 = 7 but < quorum 12: a server splitting the clients
    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry)
    log = play(server, parties.clients)
    assert log.result is None
    assert all("InsufficientParties" in r and "need 12" in r for r in log.refusals.values())
    assert len(log.refusals) == 11


def test_honest_server_will_not_send_a_key_list_below_the_quorum() -> None:
    config = harness_config("secagg+", True)
    parties = cast(config, range(11))
    server = SecAggServer(config, context=CONTEXT, registry=parties.registry)
    for c in parties.clients.values():
        server.receive(c.advertise())
    with pytest.raises(InsufficientParties, match="12 are needed"):
        server.advance()


def test_malicious_secagg_plus_round_with_dropouts_still_completes() -> None:
    config = harness_config("secagg+", True)
    parties = cast(config, range(20))
    server = SecAggServer(config, context=CONTEXT, registry=parties.registry)
    trace = run_round(server, parties.clients, {3: "advertise", 11: "consistency"})
    assert np.array_equal(trace.result.ring_sum, plain_sum(config, parties.inputs, trace.result.survivors))


def test_unmask_request_needs_a_quorum_of_signatures() -> None:
    config = harness_config("secagg+", True)
    parties = cast(config, range(20))

    def few(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        def cut(body: m.Body) -> m.Body:
            assert isinstance(body, m.UnmaskRequest)
            return m.UnmaskRequest(body.alive, body.dropped, body.signers[:11], body.signatures[:11])

        return server.rewrite(outbox, set(outbox), cut)

    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry, script={"consistency": few})
    log = play(server, parties.clients)
    assert len(log.refusals) == 20
    assert all("need >= 12 survivor signatures, got 11" in r for r in log.refusals.values())
    assert server.responses == []


def test_semi_honest_clients_with_a_registry_finish_and_check_signatures() -> None:
    config = harness_config("secagg", False)
    identities = {i: SigningKey.generate() for i in range(20)}
    registry = {i: k.public_bytes for i, k in identities.items()}
    parties = cast(config, range(20), registry=registry, identities=identities)
    server = SecAggServer(config, context=CONTEXT, registry=registry)
    trace = run_round(server, parties.clients, {2: "mask"})
    assert np.array_equal(trace.result.ring_sum, plain_sum(config, parties.inputs, trace.result.survivors))
    assert all(c.stage is Stage.DONE for i, c in parties.clients.items() if i != 2)
    with pytest.raises(ValueError, match="registry does not hold"):
        cast(config, [5], registry=registry, identities={5: SigningKey.generate()})


def test_semi_honest_registry_client_refuses_unsigned_keys() -> None:
    config = harness_config("secagg", False)
    identities = {i: SigningKey.generate() for i in range(20)}
    registry = {i: k.public_bytes for i, k in identities.items()}
    honest = cast(config, [0], registry=registry, identities={0: identities[0]})
    others = cast(config, range(1, 20))  # no identities: their advertisements carry no signature
    server = AdversarialServer(config, context=CONTEXT)
    log = play(server, {**honest.clients, **others.clients})
    assert log.refusals[0].startswith("key-list: IntegrityError")
    assert log.result is None or 0 not in log.result.survivors
