"""Aggregation backends: plain FedAvg, and secure == plain within the error bound."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from fedlm.backends import PlainBackend, RoundAborted, SecureBackend, fedavg, state_nbytes


def _updates(n: int, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {c: {"a": 0.05 * torch.randn(3, 4, generator=gen),
                "b": 0.05 * torch.randn(5, generator=gen)} for c in range(n)}


def test_fedavg_is_the_weighted_mean() -> None:
    ups = _updates(3)
    avg = fedavg(ups, {0: 1, 1: 2, 2: 5}, [0, 2])
    torch.testing.assert_close(avg["a"], (ups[0]["a"] + 5 * ups[2]["a"]) / 6)
    assert avg["b"].dtype == torch.float32
    with pytest.raises(ValueError):
        fedavg(ups, {0: 1}, [])


def test_plain_backend_leaves_dropped_clients_out() -> None:
    ups = _updates(4)
    weights = {c: c + 1 for c in ups}
    res = PlainBackend().aggregate(ups, weights, {1: "before-upload"}, b"", 1)
    assert res.survivors == [0, 2, 3]
    assert res.dropped == {1: "before-upload"}
    assert res.error_bound == 0.0
    assert res.bytes_up_per_client == state_nbytes(ups[0]) == 17 * 4
    torch.testing.assert_close(res.average["a"], fedavg(ups, weights, [0, 2, 3])["a"])


def test_plain_backend_aborts_when_everyone_drops() -> None:
    with pytest.raises(RoundAborted):
        PlainBackend().aggregate(_updates(2), {0: 1, 1: 1},
                                 {0: "before-upload", 1: "before-upload"}, b"", 1)


@pytest.mark.parametrize("protocol", ["secagg", "secagg+", "ckks"])
def test_secure_equals_plain_within_bound_at_every_stage(
        secagg_module: ModuleType, protocol: str) -> None:
    ups = _updates(5, seed=7)
    weights = {0: 3, 1: 1, 2: 4, 3: 2, 4: 5}
    backend = SecureBackend(protocol, clip_bound=0.25, fractional_bits=20, max_weight=5)
    for r, stage in enumerate(backend.stages, start=1):
        res = backend.aggregate(ups, weights, {1: stage}, b"ctx", r)
        assert res.dropped == {1: stage}
        reference = fedavg(ups, weights, res.survivors)
        for name in ups[0]:
            assert res.average[name].shape == ups[0][name].shape
            diff = (res.average[name].double() - reference[name].double()).abs().max()
            assert float(diff) <= res.error_bound + 2.0**-22 * 0.25
        assert 0 < res.error_bound < 1e-3, "bound should be far below the clip bound"


def test_secure_backend_turns_insufficient_parties_into_round_aborted(
        secagg_module: ModuleType) -> None:
    backend = SecureBackend("secagg+", clip_bound=0.25, fractional_bits=16, max_weight=1)
    first = backend.stages[0]
    ups = _updates(3)
    with pytest.raises(RoundAborted):
        backend.aggregate(ups, {c: 1 for c in ups}, {c: first for c in ups}, b"", 1)


def test_state_digest_binds_names_shapes_and_values() -> None:
    from fedlm.loop import state_digest

    base = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    assert state_digest(base) == state_digest({k: v.clone() for k, v in base.items()})
    assert state_digest(base) != state_digest({**base, "a": torch.zeros(3, 2)})
    assert state_digest(base) != state_digest({"a": base["a"], "c": base["b"]})
    assert state_digest(base) != state_digest({**base, "b": torch.tensor([1.0, 1, 1, 1.5])})
