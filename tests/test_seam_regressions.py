"""Regressions of the red-team review of the protocol seam (each finding stays a test).

1. CKKS: a party that advertises first under another client's id is detected by that client.
2. CKKS: the server refuses a released sum no honest inputs add up to (a poisoning key holder).
3. Every client drops every secret when the router ends the round, dropped ones included.
4. ``SecAggServer.seal`` refuses to reuse a one-time tag key unless told it is an attacker.
5. ``set_encoded_input`` cannot be fooled by a masked array hiding an oversized word.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

import secagg
from secagg.errors import IntegrityError, ParameterError, ProtocolAbort
from secagg.protocols.ckks import messages as ckks_m
from secagg.protocols.secagg import messages as m

from .helpers import encoded_inputs, make_parties, small_config

sys.path.insert(0, str(Path(__file__).parent / "ckks"))
from ckks_helpers import make_session  # noqa: E402


def test_a_ckks_id_taken_over_at_advertise_is_detected_by_its_owner() -> None:
    s = make_session(n=5, d=16)
    mallory = secagg.CkksClient(s.config, 4)
    mallory.set_input(np.full(16, 7.0))
    s.server.receive(mallory.advertise())  # first come, first served: the server binds id 4 to her key
    with pytest.raises(ProtocolAbort):
        s.server.receive(s.clients[4].advertise())
    for cid in range(4):
        s.server.receive(s.clients[cid].advertise())
    (generator, key_list), = s.server.advance().items()
    s.server.receive(s.clients[generator].handle(key_list))
    contexts = s.server.advance()
    with pytest.raises(ProtocolAbort, match="another key for this client's id"):
        s.clients[4].handle(contexts[4])
    assert s.clients[4].aborted and not s.clients[4].holds_secrets


def test_the_ckks_server_refuses_a_poisoned_decryption() -> None:
    s = make_session(n=3, d=16)
    for cid in range(3):
        s.server.receive(s.clients[cid].advertise())
    (generator, key_list), = s.server.advance().items()
    s.server.receive(s.clients[generator].handle(key_list))
    contexts = s.server.advance()
    for cid in range(3):
        s.server.receive(s.clients[cid].handle(contexts[cid]))
    (holder, request), = s.server.advance().items()
    honest = s.clients[holder].handle(request)
    header, body = s.open(honest)
    assert isinstance(body, ckks_m.DecryptResponse)
    too_big = body.grid_sum.copy()
    too_big[0] = 3 * s.config.encoding.scaled_bound + 1
    heavy = body.grid_sum.copy()
    heavy[s.config.schema.size] = (3 * s.config.max_weight + 1) << s.config.grid_bits
    for grid in (too_big, heavy):
        with pytest.raises(IntegrityError):
            s.server.receive(s.seal(header, dataclasses.replace(body, grid_sum=grid)))
    s.server.receive(honest)  # state untouched: the honest release is still taken
    s.server.advance()
    assert s.server.done


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_every_client_drops_its_secrets_when_the_router_ends_the_round(protocol: str) -> None:
    if protocol == "ckks":
        s = make_session(n=5, d=16)
        server, clients, dropouts = s.server, s.clients, {1: "after-upload", 4: "before-upload"}
    else:
        config = small_config(6, 8)
        server, clients = make_parties(config)
        encoded_inputs(config, clients, seed=1)
        dropouts = {2: "unmask", 5: "mask"}
    assert all(c.holds_secrets for c in clients.values())
    secagg.run_round(server, clients, dropouts)
    assert not any(c.holds_secrets for c in clients.values())


def test_seal_refuses_to_reuse_a_one_time_tag_key() -> None:
    config = small_config(5, 8)
    server, clients = make_parties(config)
    encoded_inputs(config, clients, seed=2)
    for cid, client in clients.items():
        server.receive(client.advertise())
    key_lists = server.advance()
    for cid, data in key_lists.items():
        server.receive(clients[cid].handle(data))
    deliveries = server.advance()
    body = server.open(deliveries[0])[1]
    assert isinstance(body, m.ShareDelivery)
    with pytest.raises(ProtocolAbort, match="one-time"):
        server.seal(0, body)
    assert server.seal(0, body, reuse_key=True)  # what only an attacker asks for


def test_a_masked_array_cannot_hide_an_oversized_encoded_word() -> None:
    config = small_config(4, 8)
    _, clients = make_parties(config)
    words = encoded_inputs(config, clients, seed=3)[0].copy()
    words[0] = config.encoding.ring_mask // 2  # far beyond the clip
    hidden = np.ma.array(words, mask=[True] + [False] * (len(words) - 1))
    with pytest.raises(ParameterError):
        clients[0].set_encoded_input(hidden)


def test_a_holder_id_outside_the_fields_points_is_an_integrity_error() -> None:
    """Red-team finding on the batched reconstruction: a holder of -1 (x = 0) raised ParameterError,
    which does not abort the round; it is an inconsistent share like any other."""
    from secagg.protocols.secagg.unmask import reconstruct_secrets

    held = {0: {-1: b"\0" * 64, 1: b"\0" * 64}}
    with pytest.raises(IntegrityError, match="outside the field"):
        reconstruct_secrets([0], held, 2, lambda owner, secret: True)
