"""CKKS client state export/import: a round whose clients move to a new object before every message
is exact, and anything but a consistent state of the same session is refused with a typed error."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from ckks_helpers import make_session

from secagg.encoding import Schema
from secagg.errors import IntegrityError, MalformedMessage, ProtocolAbort
from secagg.protocols.ckks import CkksClient, CkksClientState, CkksConfig, CkksServer, Stage
from secagg.protocols.ckks import state as st
from secagg.router import run_round

CTX = b"model"


class Hopping:
    """A client that is exported and imported into a new object before every message it handles."""

    def __init__(self, config: CkksConfig, cid: int, update: np.ndarray, weight: int) -> None:
        self.config, self.cid, self.update, self.weight = config, cid, update, weight
        self.client = CkksClient(config, cid, round_number=2, context=CTX)
        self.stages: list[Stage] = []

    def advertise(self) -> bytes:
        return self.client.advertise()

    def handle(self, data: bytes) -> bytes | None:
        state = self.client.export_state()
        self.client.close()  # the old object is gone, as its process would be
        self.client = CkksClient.import_state(self.config, self.cid, state, round_number=2, context=CTX)
        self.stages.append(self.client.stage)
        if self.client.stage in (Stage.GENERATE, Stage.CONTEXT):
            self.client.set_input(self.update, self.weight)
        return self.client.handle(data)

    def close(self) -> None:
        self.client.close()


@pytest.mark.parametrize("dropouts", [{}, {0: "generate"}, {0: "after-upload", 4: "before-upload"}])
def test_a_round_of_imported_clients_is_exact(dropouts) -> None:
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.5, 40) for _ in range(5)]
    config = CkksConfig(5, Schema.of(updates[0]), max_weight=5)
    clients = {c: Hopping(config, c, updates[c], c + 1) for c in range(5)}
    result = run_round(CkksServer(config, round_number=2, context=CTX), clients, dropouts).result
    survivors = [c for c in range(5) if dropouts.get(c) not in ("generate", "before-upload")]
    assert list(result.survivors) == survivors
    expected = sum((c + 1) * updates[c] for c in survivors) / sum(c + 1 for c in survivors)
    assert np.abs(result.average_vector() - expected).max() <= result.error_bound
    holder = clients[result.decrypted_by]
    assert holder.stages[-1] is Stage.DECRYPT  # the key holder decrypted from an imported secret context


def _states() -> tuple[CkksConfig, dict[str, CkksClientState]]:
    """States of one session: a fresh client, a generator after key generation, a key holder and a
    client outside the committee after its key setup, each exported before its next message."""
    s = make_session(n=4, d=30)
    states = {"fresh": CkksClient(s.config, 3).export_state()}
    for cid in sorted(s.clients):
        s.server.receive(s.clients[cid].advertise())
    states["member"] = s.clients[1].export_state()
    ((generator, key_list),) = s.server.advance().items()
    s.server.receive(s.clients[generator].handle(key_list))
    states["generator"] = s.clients[generator].export_state()
    contexts = s.server.advance()
    s.clients[1].handle(contexts[1])
    states["holder"] = s.clients[1].export_state()
    states["outsider"] = s.clients[3].export_state()
    return s.config, states


CLIENT_OF = {"fresh": 3, "member": 1, "generator": 0, "holder": 1, "outsider": 3}


def test_every_stage_round_trips_byte_for_byte() -> None:
    config, states = _states()
    stages = {}
    for name, state in states.items():
        client = CkksClient.import_state(config, CLIENT_OF[name], state)
        assert client.export_state().data == state.data
        stages[name] = client.stage
    assert stages == {"fresh": Stage.ADVERTISE, "member": Stage.GENERATE, "generator": Stage.CONTEXT,
                      "holder": Stage.DECRYPT, "outsider": Stage.CONTEXT}
    assert CkksClient.import_state(config, 1, states["holder"]).holds_key


def test_a_state_of_another_session_client_or_round_is_refused() -> None:
    config, states = _states()
    other = CkksConfig(4, config.schema, clip_bound=config.clip_bound / 2)
    for args, kwargs in [((config, 0), {}), ((other, 1), {}), ((config, 1), {"round_number": 1}),
                         ((config, 1), {"context": b"another model"})]:
        with pytest.raises(MalformedMessage, match="another session"):
            CkksClient.import_state(*args, states["holder"], **kwargs)


def _reencoded(state: CkksClientState, **fields: object) -> CkksClientState:
    snapshot = st.decode(state.data, 1 << 24)
    return CkksClientState(st.encode(replace(snapshot, **fields)))


def test_inconsistent_or_damaged_states_are_refused() -> None:
    config, states = _states()
    holder = states["holder"].data
    broken = {
        "truncated": holder[:-1],
        "trailing": holder + b"\x00",
        "magic": b"XXXX" + holder[4:],
        "version": holder[:4] + b"\x09" + holder[5:],
        "stage code": holder[:81] + b"\x07" + holder[82:],  # after magic, version, digest, id, round, setup
    }
    for name, data in broken.items():
        with pytest.raises(MalformedMessage):
            CkksClient.import_state(config, 1, CkksClientState(data))
    snapshot = st.decode(holder, 1 << 24)
    unfitting = [
        _reencoded(states["holder"], secret=b""),                 # a key holder without its key
        _reencoded(states["holder"], session=b""),                # no session in the decrypt stage
        _reencoded(states["outsider"], secret=snapshot.secret),   # a key outside the committee
        _reencoded(states["holder"], stage=Stage.GENERATE),       # secrets a generate stage has not
        _reencoded(states["fresh"], private_key=b""),             # no channel key
    ]
    for state in unfitting:
        with pytest.raises(MalformedMessage, match="does not fit"):
            CkksClient.import_state(config, st.decode(state.data, 1 << 24).client_id, state)
    cut = _reencoded(states["holder"], secret=snapshot.secret[: len(snapshot.secret) // 2])
    with pytest.raises(IntegrityError):
        CkksClient.import_state(config, 1, cut)
    swapped = _reencoded(states["generator"],
                         generated_public=st.decode(states["generator"].data, 1 << 24).generated_secret)
    with pytest.raises(IntegrityError):
        CkksClient.import_state(config, 0, swapped)  # a secret context where the public one belongs


def test_exporting_changes_nothing_and_a_finished_client_has_nothing_to_export() -> None:
    s = make_session(n=3, d=20)
    result = run_round(s.server, {c: _Exporting(client) for c, client in s.clients.items()}).result
    assert np.abs(result.average_vector() - s.exact_average(result.survivors)).max() <= result.error_bound
    for client in s.clients.values():
        with pytest.raises(ProtocolAbort, match="nothing to resume"):
            client.export_state()


class _Exporting:
    """Exports before every message and goes on with the same object."""

    def __init__(self, client: CkksClient) -> None:
        self.client = client

    def advertise(self) -> bytes:
        self.client.export_state()
        return self.client.advertise()

    def handle(self, data: bytes) -> bytes | None:
        self.client.export_state()
        return self.client.handle(data)

    def close(self) -> None:
        self.client.close()


def test_a_state_never_shows_or_pickles_its_secrets() -> None:
    _, states = _states()
    state = states["holder"]
    assert repr(state) == f"CkksClientState({len(state.data)} bytes)"
    with pytest.raises(TypeError):
        pickle.dumps(state)
    with pytest.raises(TypeError):
        pickle.dumps(st.decode(state.data, 1 << 24))
