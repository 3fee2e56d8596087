"""CkksNodeStore: a CKKS client resumed from its write-ahead record for every message runs the real
protocol, answers retries with the recorded bytes, never answers a stage twice, and refuses a
corrupted record with a typed error."""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable

import numpy as np
import pytest

from secagg import MalformedMessage, ParameterError, ProtocolAbort, SecAggError
from secagg.adapters.ckksstate import CkksNodeStore
from secagg.adapters.nodestate import NodeStore
from secagg.adapters.roundstore import RoundSpec, _Record
from secagg.encoding import Schema
from secagg.params import SecAggConfig, ThreatModel
from secagg.protocols.ckks import CkksConfig, CkksServer, Stage
from secagg.protocols.ckks.messages import Kind
from secagg.wire import Header

CTX = b"model-digest"
N = 5


def _config() -> CkksConfig:
    return CkksConfig(N, Schema.of(np.zeros(5)), clip_bound=4.0, max_weight=N)


def _inputs() -> dict[int, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(3)
    return {c: (rng.uniform(-2, 2, size=5), c + 1) for c in range(N)}


def _store(tmp_path, client: int) -> CkksNodeStore:
    # A new object for every step: nothing survives in memory, as with one process per message.
    return CkksNodeStore(tmp_path / f"node{client}", f"run1-node{client}")


def _spec(config: CkksConfig, client: int, round_number: int = 0) -> RoundSpec:
    return RoundSpec(config, client, round_number, CTX)


def _state(tmp_path, c: int, round_number: int = 0) -> bytes:
    return _store(tmp_path, c)._path(round_number).read_bytes()


def _no_input() -> Any:
    pytest.fail("a recorded answer must not ask for the input again")


Resend = Callable[[int, list[tuple[bytes | None, bytes]]], list[tuple[bytes | None, bytes]]]


def _run(tmp_path, config: CkksConfig, inputs, drops: dict[int, str] | None = None,
         resend: Resend | None = None, asked: list[int] | None = None):
    """Drive a round through fresh stores; ``drops``: client -> the server stage it never answers
    from on; ``resend(c, history)`` picks earlier messages to deliver again after each answer."""
    drops = drops or {}
    server = CkksServer(config, round_number=0, context=CTX)
    history: dict[int, list[tuple[bytes | None, bytes]]] = {}
    gone = {c for c, s in drops.items() if s == "advertise"}
    for c in range(N):
        if c not in gone:
            advertisement = _store(tmp_path, c).advertise(_spec(config, c))
            history[c] = [(None, advertisement)]
            server.receive(advertisement)

    def get_input(c: int) -> Callable[[], tuple[np.ndarray, int]]:
        def read() -> tuple[np.ndarray, int]:
            if asked is not None:
                asked.append(c)
            return inputs[c]
        return read

    while not server.done:
        outbox = server.advance()
        for c, data in sorted(outbox.items()):
            if c in gone or drops.get(c) == server.stage.value:
                gone.add(c)
                continue
            reply = _store(tmp_path, c).respond(_spec(config, c), data, get_input(c))
            history[c].append((data, reply))
            for message, first in (resend(c, history[c]) if resend else []):
                before = _state(tmp_path, c)
                again = (_store(tmp_path, c).advertise(_spec(config, c)) if message is None
                         else _store(tmp_path, c).respond(_spec(config, c), message, _no_input))
                assert again == first
                assert _state(tmp_path, c) == before  # answered from the record, nothing changed
            server.receive(reply)
    return server.result()


def _assert_exact(result, inputs, survivors: list[int]) -> None:
    assert list(result.survivors) == survivors
    weights = sum(inputs[c][1] for c in survivors)
    expected = sum(inputs[c][1] * inputs[c][0] for c in survivors) / weights
    assert result.weight_sum == weights
    assert np.abs(result.average_vector() - expected).max() <= result.error_bound


@pytest.mark.parametrize("drop, survivors, decrypted_by", [
    (None, [0, 1, 2, 3, 4], 0),
    ((0, "advertise"), [1, 2, 3, 4], 1),
    ((0, "generate"), [1, 2, 3, 4], 1),
    ((3, "upload"), [0, 1, 2, 4], 0),
    ((0, "decrypt"), [0, 1, 2, 3, 4], 1),
])
def test_round_through_fresh_stores_is_exact(tmp_path, drop, survivors, decrypted_by) -> None:
    config, inputs = _config(), _inputs()
    asked: list[int] = []
    result = _run(tmp_path, config, inputs, dict([drop]) if drop else {}, asked=asked)
    _assert_exact(result, inputs, survivors)
    assert result.decrypted_by == decrypted_by
    assert sorted(asked) == survivors  # each survivor's input was read once, for its one upload
    done = set(survivors) - ({0, 1, 2} - {decrypted_by})  # holders that did not decrypt still hold the key
    for c in done:
        assert _store(tmp_path, c).status(0) == "closed"
        assert _Record.decode(_state(tmp_path, c)).secret == b""


def test_a_retried_message_gets_the_same_reply_and_the_round_completes(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    retried: list[int] = []

    def twice(c, history):
        retried.append(c)
        return history[-1:] * 2

    result = _run(tmp_path, config, inputs, resend=twice)
    _assert_exact(result, inputs, list(range(N)))
    # the generator's key list, every context broadcast (the upload), the one decryption request
    assert sorted(retried) == sorted([0] + list(range(N)) + [0])
    record = _Record.decode(_state(tmp_path, 0))  # the last request can still be retried; the key is gone
    assert record.secret == b"" and record.steps[-1][1]
    assert _store(tmp_path, 0).respond(_spec(config, 0), record.steps[-1][0], _no_input) == record.steps[-1][1]


def test_stale_duplicates_of_earlier_stages_are_answered_from_the_record(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    counted: list[int] = []

    def earlier(c, history):
        counted.extend([c] * (len(history) - 1))
        return history[:-1]

    result = _run(tmp_path, config, inputs, resend=earlier)
    _assert_exact(result, inputs, list(range(N)))
    assert len(counted) == 1 + 2 + N + 2  # generator: 1 then 2 earlier; uploads: the advertise; holder: 2


def _mutated(message: bytes) -> bytes:
    return message[:-1] + bytes([message[-1] ^ 1])  # same header, same kind, other content


def test_a_different_message_for_an_answered_stage_is_refused_without_a_state_change(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    refused: list[int] = []

    def hostile(c, history):
        for message, _ in history[1:]:  # the current stage and every earlier one
            before = _state(tmp_path, c)
            with pytest.raises(ProtocolAbort, match="already answered|closed"):  # closed: complete
                _store(tmp_path, c).respond(_spec(config, c), _mutated(message), _no_input)
            assert _state(tmp_path, c) == before
            refused.append(c)
        return []

    result = _run(tmp_path, config, inputs, resend=hostile)
    _assert_exact(result, inputs, list(range(N)))
    assert len(refused) == (1 + 2 + 3) + N - 1  # client 0: key list, context, decrypt; the rest: context


def _to_context_stage(tmp_path, config) -> dict[int, bytes]:
    """Every node advertises and the key is set up through the stores; the context broadcasts."""
    server = CkksServer(config, round_number=0, context=CTX)
    for c in range(N):
        server.receive(_store(tmp_path, c).advertise(_spec(config, c)))
    ((generator, key_list),) = server.advance().items()
    server.receive(_store(tmp_path, generator).respond(_spec(config, generator), key_list, _no_input))
    return dict(server.advance())


@pytest.mark.parametrize("client, refusal", [(2, "already answered"), (3, "closed")])  # holder; done
def test_another_clients_context_is_refused_once_the_upload_is_sent(tmp_path, client, refusal) -> None:
    config, inputs = _config(), _inputs()
    contexts = _to_context_stage(tmp_path, config)
    spec = _spec(config, client)
    upload = _store(tmp_path, client).respond(spec, contexts[client], lambda: inputs[client])
    before = _state(tmp_path, client)
    with pytest.raises(ProtocolAbort, match=refusal):
        _store(tmp_path, client).respond(spec, contexts[4], _no_input)
    assert _state(tmp_path, client) == before
    assert _store(tmp_path, client).respond(spec, contexts[client], _no_input) == upload  # the same ciphertext


def test_a_rejected_message_for_the_current_stage_closes_the_round(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    contexts = _to_context_stage(tmp_path, config)
    spec = _spec(config, 1)
    with pytest.raises(SecAggError):  # the broadcast names another key for this client
        _store(tmp_path, 1).respond(spec, contexts[2], lambda: inputs[1])
    assert _store(tmp_path, 1).status(0) == "closed"
    record = _Record.decode(_state(tmp_path, 1))
    assert (record.secret, record.steps, record.advertisement) == (b"", (), b"")  # a tombstone
    with pytest.raises(ProtocolAbort, match="closed"):
        _store(tmp_path, 1).respond(spec, contexts[1], _no_input)


@pytest.mark.parametrize("damage", [
    lambda data: data[:-1] + bytes([data[-1] ^ 0x40]),               # the checksum
    lambda data: data[:200] + bytes([data[200] ^ 1]) + data[201:],  # inside the client state
    lambda data: data[: len(data) // 2],                             # a torn file
    lambda data: b"",
])
def test_a_corrupted_record_is_refused_with_a_typed_error_and_closed(tmp_path, damage) -> None:
    config, inputs = _config(), _inputs()
    contexts = _to_context_stage(tmp_path, config)
    path = _store(tmp_path, 2)._path(0)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(MalformedMessage, match="corrupted|version"):
        _store(tmp_path, 2).respond(_spec(config, 2), contexts[2], lambda: inputs[2])
    assert _store(tmp_path, 2).status(0) == "closed"
    with pytest.raises(ProtocolAbort, match="closed"):
        _store(tmp_path, 2).respond(_spec(config, 2), contexts[2], lambda: inputs[2])
    with pytest.raises(ProtocolAbort, match="already started"):
        _store(tmp_path, 2).advertise(_spec(config, 2))
    assert _store(tmp_path, 2).advertise(_spec(config, 2, round_number=1))  # a newer round starts


def test_a_corrupted_older_record_does_not_block_a_newer_round(tmp_path) -> None:
    config = _config()
    store = _store(tmp_path, 0)
    store.advertise(_spec(config, 0))
    store._path(0).write_bytes(b"garbage")
    assert store.advertise(_spec(config, 0, round_number=1))
    assert (store.status(0), store.status(1)) == ("closed", "active")
    assert _Record.decode(store._path(0).read_bytes()).secret == b""


def test_a_holder_not_asked_keeps_its_key_until_the_nodes_next_round(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    _run(tmp_path, config, inputs)
    assert _store(tmp_path, 1).status(0) == "active" and _Record.decode(_state(tmp_path, 1)).secret
    _store(tmp_path, 1).advertise(_spec(config, 1, round_number=1))
    record = _Record.decode(_state(tmp_path, 1))
    assert (record.secret, record.steps) == (b"", ()) and _store(tmp_path, 1).status(0) == "closed"


def test_the_store_keeps_only_its_own_protocol_and_private_files(tmp_path) -> None:
    ckks = _config()
    masking = SecAggConfig.secagg_plus(N, Schema.of(np.zeros(5)), ThreatModel.semi_honest(0.1, 0.2))
    with pytest.raises(ParameterError, match="CkksNodeStore keeps ckks"):
        _store(tmp_path, 0).advertise(RoundSpec(masking, 0, 0, CTX))
    with pytest.raises(ParameterError, match="NodeStore keeps secagg"):
        NodeStore(tmp_path / "masking", "run1-node0").advertise(_spec(ckks, 0))
    _store(tmp_path, 0).advertise(_spec(ckks, 0))
    assert os.stat(_store(tmp_path, 0)._path(0)).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "node0").st_mode & 0o777 == 0o700
    with pytest.raises(TypeError):
        pickle.dumps(_Record.decode(_state(tmp_path, 0)))


def test_the_secret_context_stays_in_the_record_never_in_a_reply(tmp_path) -> None:
    config, inputs = _config(), _inputs()
    contexts = _to_context_stage(tmp_path, config)
    reply = _store(tmp_path, 1).respond(_spec(config, 1), contexts[1], lambda: inputs[1])
    assert Header.decode(reply)[0].kind == Kind.UPLOAD
    record = _Record.decode(_state(tmp_path, 1))
    from secagg.protocols.ckks import state as st
    secret = st.decode(record.secret, 1 << 24).secret
    assert st.decode(record.secret, 1 << 24).stage is Stage.DECRYPT and len(secret) > 1000
    assert secret not in reply and all(secret not in r for _, r in record.steps)
