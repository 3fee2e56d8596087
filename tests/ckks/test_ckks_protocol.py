"""End-to-end CKKS rounds through the in-memory driver: averages, weights, shapes, dropouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ckks_helpers import make_session

from secagg.encoding import Schema
from secagg.errors import InsufficientParties, ParameterError
from secagg.protocols.ckks import CkksClient, CkksConfig, CkksServer, Stage
from secagg.router import run_round as run_ckks_round


def test_round_trip_average_within_bound() -> None:
    s = make_session(n=4, d=300)
    trace = run_ckks_round(s.server, s.clients)
    result = trace.result
    assert result.survivors == (0, 1, 2, 3) and result.weight_sum == 4
    error = np.abs(result.average_vector() - s.exact_average(result.survivors)).max()
    assert error <= result.error_bound
    assert result.error_bound == 4 / (2**s.config.grid_bits * 4)
    assert all(c.stage is Stage.DONE for c in s.clients.values())


def test_weighted_average_with_clipping() -> None:
    s = make_session(n=3, d=200, weights=[1, 5, 2], clip_bound=0.7)
    result = run_ckks_round(s.server, s.clients).result
    assert result.weight_sum == 8
    error = np.abs(result.average_vector() - s.exact_average(result.survivors)).max()
    assert error <= result.error_bound
    assert np.abs(result.weighted_sum).max() <= 8 * 0.7 + 1e-6


def test_state_dict_in_caller_shape() -> None:
    torch.manual_seed(0)
    updates = [
        {"lora_A": torch.randn(4, 16), "lora_B": torch.randn(16, 4, dtype=torch.float64)} for _ in range(3)
    ]
    cfg = CkksConfig(3, Schema.of(updates[0]))
    clients = {i: CkksClient(cfg, i) for i in range(3)}
    for i, c in clients.items():
        c.set_input(updates[i])
    average = run_ckks_round(CkksServer(cfg), clients).result.average()
    assert set(average) == {"lora_A", "lora_B"} and average["lora_B"].dtype == torch.float64
    expected = sum(u["lora_A"] for u in updates) / 3
    assert torch.allclose(average["lora_A"], expected, atol=1e-6)


def test_dropout_before_and_after_upload() -> None:
    s = make_session(n=6, d=100)
    trace = run_ckks_round(s.server, s.clients, {3: "before-upload", 4: "after-upload", 5: "before-upload"})
    result = trace.result
    assert result.survivors == (0, 1, 2, 4)
    assert trace.dropped == {3: "before-upload", 4: "after-upload", 5: "before-upload"}
    assert np.abs(result.average_vector() - s.exact_average(result.survivors)).max() <= result.error_bound


def test_key_holder_dropout_falls_back_to_another_holder() -> None:
    s = make_session(n=5, d=100)
    trace = run_ckks_round(s.server, s.clients, {0: "after-upload", 1: "before-upload"})
    result = trace.result
    assert result.decrypted_by == 2 and result.dropped == {0: "after-upload", 1: "before-upload"}
    assert np.abs(result.average_vector() - s.exact_average(result.survivors)).max() <= result.error_bound


def test_generator_dropout_next_member_generates() -> None:
    s = make_session(n=4, d=50)
    trace = run_ckks_round(s.server, s.clients, {0: "generate"})
    assert trace.result.survivors == (1, 2, 3) and trace.result.decrypted_by in (1, 2)


def test_committee_member_silent_at_advertise() -> None:
    s = make_session(n=4, d=50)
    trace = run_ckks_round(s.server, s.clients, {1: "advertise"})
    assert trace.result.survivors == (0, 2, 3) and trace.result.dropped.get(1) == "advertise"


def test_no_live_key_holder_raises() -> None:
    s = make_session(n=5, d=50)
    with pytest.raises(InsufficientParties):
        run_ckks_round(s.server, s.clients, {0: "after-upload", 1: "after-upload", 2: "before-upload"})
    assert s.server.stage is Stage.ABORTED


def test_no_committee_member_raises() -> None:
    s = make_session(n=4, d=50, committee=(0, 1))
    with pytest.raises(InsufficientParties):
        run_ckks_round(s.server, s.clients, {0: "advertise", 1: "generate"})


def test_too_few_uploads_raises() -> None:
    s = make_session(n=3, d=50, min_contributors=3)
    with pytest.raises(InsufficientParties):
        run_ckks_round(s.server, s.clients, {2: "before-upload"})


def test_bad_inputs_are_refused() -> None:
    s = make_session(n=2, d=10)
    with pytest.raises(ParameterError):
        s.clients[0].set_input(np.full(10, np.nan))
    with pytest.raises(ParameterError):
        s.clients[0].set_input(np.zeros(10), weight=2)
    with pytest.raises(ParameterError):
        run_ckks_round(s.server, s.clients, {0: "never"})


def test_secret_objects_refuse_pickling() -> None:
    import pickle

    s = make_session(n=2, d=10)
    with pytest.raises(TypeError):
        pickle.dumps(s.clients[0])


def test_worker_processes_encrypt_and_decrypt() -> None:
    from secagg.protocols.ckks import ChunkPool

    rng = np.random.default_rng(3)
    updates = [rng.normal(0.0, 0.5, 6000) for _ in range(3)]
    cfg = CkksConfig(3, Schema.of(updates[0]))
    with ChunkPool(workers=1, min_chunks=2) as pool:
        clients = {i: CkksClient(cfg, i, pool=pool) for i in range(3)}
        for i, c in clients.items():
            c.set_input(updates[i])
        result = run_ckks_round(CkksServer(cfg), clients).result
    assert np.abs(result.average_vector() - sum(updates) / 3).max() <= result.error_bound
