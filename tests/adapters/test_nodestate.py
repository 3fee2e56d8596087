"""NodeStore: a client rebuilt from its write-ahead record for every message runs the real protocol."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from secagg import FixedPoint, ParameterError, ProtocolAbort, Schema, SecAggConfig, SecAggError, SecAggServer, ThreatModel
from secagg.adapters.nodestate import NodeStore, RoundSpec, _Record, _ReplayRandom
from secagg.protocols.secagg import Stage

CTX = b"model-digest"


def _config(n: int = 6) -> SecAggConfig:
    encoding = FixedPoint(clip_bound=4.0, fractional_bits=16, max_weight=n, max_clients=n)
    return SecAggConfig.secagg_plus(n, Schema.of(np.zeros(5)), ThreatModel.semi_honest(0.1, 0.2), encoding)


def _inputs(n: int) -> dict[int, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(7)
    return {c: (rng.uniform(-2, 2, size=5), c + 1) for c in range(n)}


def _store(tmp_path, client: int) -> NodeStore:
    # A new object for every step: nothing survives in memory, as with one process per message.
    return NodeStore(tmp_path / f"node{client}", f"run1-node{client}")


def _run(tmp_path, config: SecAggConfig, inputs, drops: dict[int, str]):
    server = SecAggServer(config, round_number=0, context=CTX)
    gone = {c for c, s in drops.items() if s == "advertise"}
    for c in range(config.num_clients):
        if c not in gone:
            server.receive(_store(tmp_path, c).advertise(RoundSpec(config, c, 0, CTX)))
    while True:
        outbox = server.advance()
        if server.stage is Stage.DONE:
            return server.result()
        for c, data in sorted(outbox.items()):
            if c in gone or drops.get(c) == server.stage.value:
                gone.add(c)
                continue
            reply = _store(tmp_path, c).respond(RoundSpec(config, c, 0, CTX), data, lambda c=c: inputs[c])
            server.receive(reply)


@pytest.mark.parametrize("drop", [None, "advertise", "share", "mask", "unmask"])
def test_round_through_fresh_stores_is_exact(tmp_path, drop) -> None:
    config = _config()
    assert config.protocol == "secagg+" and config.degree == 4
    inputs = _inputs(config.num_clients)
    result = _run(tmp_path, config, inputs, {2: drop} if drop else {})
    survivors = list(result.survivors)
    assert survivors == [c for c in range(6) if not (drop in ("advertise", "share", "mask") and c == 2)]
    weights = sum(inputs[c][1] for c in survivors)
    expected = sum(inputs[c][1] * inputs[c][0] for c in survivors) / weights
    assert result.weight_sum == weights
    assert np.abs(result.average_vector() - expected).max() <= result.error_bound
    assert _store(tmp_path, 0).status(0) == "closed"  # finished rounds keep no key


def _no_input():
    pytest.fail("a recorded answer must not ask for the input again")


def _state(tmp_path, c: int) -> bytes:
    return _store(tmp_path, c)._path(0).read_bytes()


def _run_with_retries(tmp_path, config, inputs, resend) -> tuple[object, list[tuple[int, bytes, bytes]]]:
    """Run a round; after every answer, ``resend(c, history)`` picks earlier messages to deliver again."""
    server = SecAggServer(config, round_number=0, context=CTX)
    history: dict[int, list[tuple[bytes | None, bytes]]] = {}  # None stands for the advertise request
    for c in range(config.num_clients):
        advertisement = _store(tmp_path, c).advertise(RoundSpec(config, c, 0, CTX))
        history[c] = [(None, advertisement)]
        server.receive(advertisement)
    checked = []
    while (outbox := server.advance()) or server.stage is not Stage.DONE:
        for c, data in sorted(outbox.items()):
            spec = RoundSpec(config, c, 0, CTX)
            reply = _store(tmp_path, c).respond(spec, data, lambda c=c: inputs[c])
            history[c].append((data, reply))
            for message, first in resend(c, history[c]):
                before = _state(tmp_path, c)
                again = (_store(tmp_path, c).advertise(spec) if message is None
                         else _store(tmp_path, c).respond(spec, message, _no_input))
                assert _state(tmp_path, c) == before  # answered from the record, nothing changed
                checked.append((c, first, again))
            server.receive(reply)
    return server.result(), checked


def _assert_exact(result, inputs) -> None:
    survivors = list(result.survivors)
    assert survivors == sorted(inputs)
    weights = sum(inputs[c][1] for c in survivors)
    expected = sum(inputs[c][1] * inputs[c][0] for c in survivors) / weights
    assert np.abs(result.average_vector() - expected).max() <= result.error_bound


def test_a_retried_message_gets_the_same_reply_and_the_round_completes(tmp_path) -> None:
    config = _config()
    inputs = _inputs(6)
    result, checked = _run_with_retries(tmp_path, config, inputs, lambda c, history: history[-1:] * 2)
    assert len(checked) == 6 * 3 * 2  # share, mask and unmask, each delivered three times
    assert all(first == again for _, first, again in checked)
    _assert_exact(result, inputs)
    # The last stage can still be retried after the round completed on the node; the key is gone.
    assert _store(tmp_path, 0).status(0) == "closed"
    record = _Record.decode(_state(tmp_path, 0))
    assert record.secret == b""
    message, reply = record.steps[-1]
    assert _store(tmp_path, 0).respond(RoundSpec(config, 0, 0, CTX), message, _no_input) == reply


def test_stale_duplicates_of_earlier_stages_are_answered_from_the_record(tmp_path) -> None:
    config = _config()
    inputs = _inputs(6)
    result, checked = _run_with_retries(tmp_path, config, inputs, lambda c, history: history[:-1])
    assert len(checked) == 6 * (1 + 2 + 3)  # the advertise request, then every earlier message
    assert all(first == again for _, first, again in checked)
    _assert_exact(result, inputs)


def _mutated(message: bytes) -> bytes:
    return message[:-1] + bytes([message[-1] ^ 1])  # same header, same kind, other content


def test_a_different_message_for_an_answered_stage_is_refused_without_a_state_change(tmp_path) -> None:
    config = _config()
    inputs = _inputs(6)
    refused = []

    def hostile(c, history):
        for message, _ in history[1:]:  # the current stage and every earlier one
            before = _state(tmp_path, c)
            with pytest.raises(ProtocolAbort, match="already answered|closed"):  # closed: complete
                _store(tmp_path, c).respond(RoundSpec(config, c, 0, CTX), _mutated(message), _no_input)
            assert _state(tmp_path, c) == before
            refused.append(c)
        return []

    result, _ = _run_with_retries(tmp_path, config, inputs, hostile)
    assert len(refused) == 6 * (1 + 2 + 3)
    _assert_exact(result, inputs)
    record = _Record.decode(_state(tmp_path, 3))
    with pytest.raises(SecAggError):  # after completion too: only the recorded bytes are answered
        _store(tmp_path, 3).respond(RoundSpec(config, 3, 0, CTX), _mutated(record.steps[-1][0]), _no_input)
    assert _state(tmp_path, 3) == record.encode()


def _key_lists(tmp_path, config) -> dict[int, bytes]:
    """Six nodes advertise through their stores; the server's key-list messages."""
    server = SecAggServer(config, round_number=0, context=CTX)
    for c in range(6):
        server.receive(_store(tmp_path, c).advertise(RoundSpec(config, c, 0, CTX)))
    return server.advance()


def test_another_clients_message_for_an_answered_stage_is_refused(tmp_path) -> None:
    config = _config()
    key_lists = _key_lists(tmp_path, config)
    spec = RoundSpec(config, 0, 0, CTX)
    first = _store(tmp_path, 0).respond(spec, key_lists[0], _no_input)
    before = _state(tmp_path, 0)
    with pytest.raises(ProtocolAbort, match="already answered"):
        _store(tmp_path, 0).respond(spec, key_lists[1], _no_input)
    assert _state(tmp_path, 0) == before and _store(tmp_path, 0).status(0) == "active"
    assert _store(tmp_path, 0).respond(spec, key_lists[0], _no_input) == first


def test_a_rejected_message_for_the_current_stage_closes_the_round(tmp_path) -> None:
    config = _config()
    key_lists = _key_lists(tmp_path, config)
    spec = RoundSpec(config, 0, 0, CTX)
    with pytest.raises(SecAggError):
        _store(tmp_path, 0).respond(spec, _mutated(key_lists[0]), _no_input)
    assert _store(tmp_path, 0).status(0) == "closed"
    with pytest.raises(ProtocolAbort, match="closed"):
        _store(tmp_path, 0).respond(spec, key_lists[0], _no_input)


def test_a_round_starts_once_and_parameters_must_match(tmp_path) -> None:
    config = _config()
    store = _store(tmp_path, 1)
    advertisement = store.advertise(RoundSpec(config, 1, 0, CTX))
    before = store._path(0).read_bytes()
    assert store.advertise(RoundSpec(config, 1, 0, CTX)) == advertisement  # a retry, not a restart
    with pytest.raises(ProtocolAbort, match="already started"):
        store.advertise(RoundSpec(config, 2, 0, CTX))
    assert store._path(0).read_bytes() == before
    with pytest.raises(ProtocolAbort, match="differ"):
        store.respond(RoundSpec(config, 2, 0, CTX), b"", lambda: pytest.fail("no input"))
    assert store.status(0) == "closed"
    with pytest.raises(ProtocolAbort, match="already started"):
        store.advertise(RoundSpec(config, 1, 0, CTX))
    with pytest.raises(ProtocolAbort, match="never started"):
        store.respond(RoundSpec(config, 1, 5, CTX), b"", lambda: pytest.fail("no input"))


def test_a_new_round_erases_rounds_left_open(tmp_path) -> None:
    config = _config()
    store = _store(tmp_path, 0)
    store.advertise(RoundSpec(config, 0, 0, CTX))
    store.advertise(RoundSpec(config, 0, 1, CTX))
    assert (store.status(0), store.status(1)) == ("closed", "active")
    record = _Record.decode(store._path(0).read_bytes())
    assert record.secret == b"" and record.steps == () and record.advertisement == b""


def test_a_new_round_erases_the_answers_of_a_completed_round(tmp_path) -> None:
    config = _config()
    _run(tmp_path, config, _inputs(6), {})
    assert _Record.decode(_state(tmp_path, 0)).steps  # kept for a retry of the last request
    _store(tmp_path, 0).advertise(RoundSpec(config, 0, 1, CTX))
    record = _Record.decode(_state(tmp_path, 0))
    assert record.secret == b"" and record.steps == () and _store(tmp_path, 0).status(0) == "closed"


def test_input_is_requested_once_at_the_mask_step(tmp_path) -> None:
    config = _config()
    inputs = _inputs(6)
    calls: list[int] = []

    def counting(c):
        def get():
            calls.append(c)
            return inputs[c]
        return get

    server = SecAggServer(config, round_number=0, context=CTX)
    for c in range(6):
        server.receive(_store(tmp_path, c).advertise(RoundSpec(config, c, 0, CTX)))
    while (outbox := server.advance()) or server.stage is not Stage.DONE:
        stage = server.stage
        for c, data in sorted(outbox.items()):
            server.receive(_store(tmp_path, c).respond(RoundSpec(config, c, 0, CTX), data, counting(c)))
        assert calls == ([] if stage is Stage.SHARE else list(range(6)))
    assert sorted(calls) == list(range(6))


def test_state_directory_must_be_private(tmp_path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ParameterError, match="0700"):
        NodeStore(shared, "node0")
    with pytest.raises(ParameterError, match="scope"):
        NodeStore(tmp_path / "ok", "../escape")
    store = NodeStore(tmp_path / "ok", "node0")
    store.advertise(RoundSpec(_config(), 0, 0, CTX))
    assert os.stat(store._path(0)).st_mode & 0o777 == 0o600


def test_key_material_refuses_pickling(tmp_path) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(_ReplayRandom(bytes(32), b"binding"))
    store = _store(tmp_path, 0)
    store.advertise(RoundSpec(_config(), 0, 0, CTX))
    with pytest.raises(TypeError):
        pickle.dumps(_Record.decode(store._path(0).read_bytes()))


def test_replay_randomness_is_deterministic_and_bound() -> None:
    a, b = _ReplayRandom(b"k" * 32, b"round-0"), _ReplayRandom(b"k" * 32, b"round-0")
    assert a(5) + a(40) == b(45)
    assert _ReplayRandom(b"k" * 32, b"round-1")(45) != _ReplayRandom(b"k" * 32, b"round-0")(45)
