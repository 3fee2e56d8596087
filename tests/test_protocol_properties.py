"""Correctness under dropout: exact sums for any viable survivor set, a clear error otherwise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import InsufficientParties, ProtocolAbort, ThreatModel
from secagg.protocols.registry import DROPOUT_STAGES
from secagg.router import run_round

from .helpers import encoded_inputs, make_parties, predict, ring_sum, small_config

STAGES = DROPOUT_STAGES["secagg"]


def run_and_check(config, drops: dict[int, str], seed: int = 0) -> None:
    server, clients = make_parties(config)
    encoded = encoded_inputs(config, clients, seed)
    try:
        trace = run_round(server, clients, drops)
    except InsufficientParties:
        expected = predict(server.graph, config.threshold, config.num_clients, drops) if server.graph else None
        assert expected is None, f"round failed although survivors {expected} were viable"
        return
    expected = predict(server.graph, config.threshold, config.num_clients, drops)
    assert expected is not None, "round succeeded where the threshold should have stopped it"
    assert list(trace.result.survivors) == expected
    assert np.array_equal(trace.result.ring_sum, ring_sum(config, encoded, expected))


@settings(max_examples=30)
@given(
    n=st.integers(3, 9),
    dim=st.integers(1, 40),
    protocol=st.sampled_from(["secagg", "secagg+"]),
    data=st.data(),
)
def test_any_dropout_pattern_gives_exact_sum_or_insufficient(n, dim, protocol, data) -> None:
    config = small_config(n, dim, protocol)
    droppers = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    drops = {c: data.draw(st.sampled_from(STAGES)) for c in droppers}
    run_and_check(config, drops, seed=n * 100 + dim)


@settings(max_examples=15)
@given(n=st.integers(6, 12), k=st.sampled_from([2, 4]), t=st.integers(1, 4), data=st.data())
def test_harary_graph_any_degree_and_threshold(n, k, t, data) -> None:
    t = min(t, k)
    config = small_config(n, 8, threshold=t, degree=k, threat=ThreatModel.semi_honest(0.0, 0.1))
    droppers = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n // 2))
    drops = {c: data.draw(st.sampled_from(STAGES)) for c in droppers}
    run_and_check(config, drops)


@pytest.mark.parametrize("n", [3, 4, 5, 6])
@pytest.mark.parametrize("stage", STAGES)
def test_exhaustive_single_stage_dropouts(n: int, stage: str) -> None:
    config = small_config(n, 5, threshold=2 if n > 3 else 1, threat=ThreatModel.semi_honest(0.0, 0.0))
    for size in range(n + 1):
        for dropped in itertools.combinations(range(n), size):
            run_and_check(config, {c: stage for c in dropped})


def test_exhaustive_mixed_stage_dropouts_n4() -> None:
    config = small_config(4, 3, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    options = (None,) + STAGES
    for pattern in itertools.product(options, repeat=4):
        run_and_check(config, {c: s for c, s in enumerate(pattern) if s is not None})


def test_too_few_survivors_raise_and_release_nothing() -> None:
    config = small_config(5, 10, threshold=3, threat=ThreatModel.semi_honest(0.0, 0.0))
    server, clients = make_parties(config)
    encoded_inputs(config, clients)
    with pytest.raises(InsufficientParties):
        run_round(server, clients, {0: "mask", 1: "mask", 2: "mask"})
    with pytest.raises(ProtocolAbort, match="aborted"):
        server.result()


def test_malicious_variant_with_consistency_dropouts() -> None:
    config = small_config(7, 16, threat=ThreatModel.malicious(0.0, 0.1))
    assert config.threshold > config.num_clients / 2
    run_and_check(config, {0: "mask", 1: "consistency"})


def test_masks_are_fresh_every_round() -> None:
    config = small_config(4, 64, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    vectors = []
    for round_number in (0, 1):
        server, clients = make_parties(config, round_number=round_number)
        words = config.encoding.encode(np.zeros(64))
        for c in clients.values():
            c.set_encoded_input(words)
        captured = {}
        original = server.receive

        def spy(data: bytes, original=original, captured=captured) -> int:
            sender = original(data)
            if data[6] == 5:  # masked input kind
                captured[sender] = data
            return sender

        server.receive = spy  # type: ignore[method-assign]
        run_round(server, clients)
        vectors.append(captured[0])
    assert vectors[0] != vectors[1]
    assert words.tobytes() not in vectors[0]
