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
    threat = None if protocol == "ckks" else secagg_module.ThreatModel.semi_honest(0.1, 0.2)
    backend = SecureBackend(protocol, clip_bound=0.25, fractional_bits=20, max_weight=5, threat=threat)
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
    backend = SecureBackend("secagg+", clip_bound=0.25, fractional_bits=16, max_weight=1,
                            threat=secagg_module.ThreatModel.semi_honest(0.1, 0.2))
    first = backend.stages[0]
    ups = _updates(3)
    with pytest.raises(RoundAborted):
        backend.aggregate(ups, {c: 1 for c in ups}, {c: first for c in ups}, b"", 1)


def test_a_secure_backend_needs_a_threat_model_exactly_when_the_protocol_has_thresholds() -> None:
    with pytest.raises(ValueError, match="threat model"):
        SecureBackend("secagg+", clip_bound=0.25, fractional_bits=16, max_weight=1)
    with pytest.raises(ValueError, match="threat model"):
        SecureBackend("ckks", clip_bound=0.25, fractional_bits=16, max_weight=1,
                      threat=__import__("secagg").ThreatModel.semi_honest(0.1, 0.2))


def test_each_client_party_is_built_where_the_client_adds_its_delta(secagg_module: ModuleType) -> None:
    """The session holds one protocol party per client, made at add() time, and finishes through the
    router: the delta itself is not kept by the session."""
    backend = SecureBackend("secagg", clip_bound=0.25, fractional_bits=16, max_weight=1,
                            threat=secagg_module.ThreatModel.semi_honest(0.1, 0.2))
    ups = _updates(4)
    session = backend.open_round([7, 3, 9, 5], b"ctx", 1)
    for cid in (3, 5):
        session.add(cid, ups[cid - 3 if cid == 3 else 1], 1)
    parties = session.parties  # type: ignore[attr-defined]
    assert sorted(parties) == [0, 1] and all(isinstance(p, secagg_module.SecAggClient) for p in parties.values())
    assert not hasattr(session, "updates")
    session.add(7, ups[2], 1)
    session.add(9, ups[3], 1)
    res = session.finish({})
    assert res.survivors == [3, 5, 7, 9]


def test_state_digest_binds_names_shapes_and_values() -> None:
    from fedlm.loop import state_digest

    base = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    assert state_digest(base) == state_digest({k: v.clone() for k, v in base.items()})
    assert state_digest(base) != state_digest({**base, "a": torch.zeros(3, 2)})
    assert state_digest(base) != state_digest({"a": base["a"], "c": base["b"]})
    assert state_digest(base) != state_digest({**base, "b": torch.tensor([1.0, 1, 1, 1.5])})
