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


def test_each_stage_is_answered_once(tmp_path) -> None:
    config = _config()
    server = SecAggServer(config, round_number=0, context=CTX)
    for c in range(6):
        server.receive(_store(tmp_path, c).advertise(RoundSpec(config, c, 0, CTX)))
    key_lists = server.advance()
    spec = RoundSpec(config, 0, 0, CTX)
    first = _store(tmp_path, 0).respond(spec, key_lists[0], lambda: pytest.fail("no input before mask"))
    with pytest.raises(SecAggError):  # the record already moved past this stage: no fork
        _store(tmp_path, 0).respond(spec, key_lists[0], lambda: pytest.fail("no input before mask"))
    assert first and _store(tmp_path, 0).status(0) == "closed"
    with pytest.raises(ProtocolAbort, match="closed"):
        _store(tmp_path, 0).respond(spec, key_lists[0], lambda: pytest.fail("no input"))


def test_a_round_starts_once_and_parameters_must_match(tmp_path) -> None:
    config = _config()
    store = _store(tmp_path, 1)
    store.advertise(RoundSpec(config, 1, 0, CTX))
    with pytest.raises(ProtocolAbort, match="already started"):
        store.advertise(RoundSpec(config, 1, 0, CTX))
    with pytest.raises(ProtocolAbort, match="differ"):
        store.respond(RoundSpec(config, 2, 0, CTX), b"", lambda: pytest.fail("no input"))
    assert store.status(0) == "closed"
    with pytest.raises(ProtocolAbort, match="never started"):
        store.respond(RoundSpec(config, 1, 5, CTX), b"", lambda: pytest.fail("no input"))


def test_a_new_round_erases_rounds_left_open(tmp_path) -> None:
    config = _config()
    store = _store(tmp_path, 0)
    store.advertise(RoundSpec(config, 0, 0, CTX))
    store.advertise(RoundSpec(config, 0, 1, CTX))
    assert (store.status(0), store.status(1)) == ("closed", "active")
    record = _Record.decode(store._path(0).read_bytes())
    assert record.key == bytes(32) and record.transcript == ()


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
