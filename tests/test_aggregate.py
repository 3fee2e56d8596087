"""The one-call aggregate() on real tensors: same shape back, weighted average within the bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secagg import InsufficientParties, ParameterError, ThreatModel, aggregate

THREAT = ThreatModel.semi_honest(corrupt=0.1, dropout=0.2)


def _updates(n: int = 5):
    gen = torch.Generator().manual_seed(0)
    return {
        10 + i: {"q.lora_A": torch.randn(4, 16, generator=gen) * 0.1,
                 "q.lora_B": torch.randn(16, 4, generator=gen, dtype=torch.float32).to(torch.bfloat16) * 0.1}
        for i in range(n)
    }


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_weighted_average_of_state_dicts(protocol: str) -> None:
    updates = _updates()
    weights = {cid: w for cid, w in zip(updates, [1, 2, 3, 4, 5])}
    out = aggregate(updates, protocol, weights=weights, dropouts={11: "mask"}, max_weight=5, threat=THREAT)
    assert out.survivors == [10, 12, 13, 14] and out.dropped == {11: "mask"}
    assert out.weight_sum == 1 + 3 + 4 + 5
    for name in ("q.lora_A", "q.lora_B"):
        expected = sum(weights[c] * updates[c][name].double() for c in out.survivors) / out.weight_sum
        assert out.average[name].dtype == updates[10][name].dtype
        # bfloat16 output rounding: half an ulp, 2^-8 of the value (8 significant bits), per coordinate
        rounding = expected.abs() * 2.0**-8 if name == "q.lora_B" else torch.zeros_like(expected)
        assert ((out.average[name].double() - expected).abs() <= out.error_bound + rounding).all()


def test_aggregate_errors() -> None:
    updates = _updates(3)
    with pytest.raises(InsufficientParties):
        aggregate(updates, "secagg", dropouts={10: "mask", 11: "mask"}, threat=THREAT)
    with pytest.raises(ParameterError, match="needs a threat model"):
        aggregate(updates, "secagg")  # no silent default: the caller says whom it defends against
    with pytest.raises(ParameterError, match="unknown protocol"):
        aggregate(updates, "secagg++", threat=THREAT)
    with pytest.raises(ParameterError, match="dropout stage"):
        aggregate(updates, "secagg", dropouts={10: "before-upload"}, threat=THREAT)
    updates[12] = {"q.lora_A": torch.zeros(4, 16)}
    with pytest.raises(ParameterError):
        aggregate(updates, "secagg", threat=THREAT)
    with pytest.raises(ParameterError):
        aggregate({1: np.zeros(3)}, "secagg", threat=THREAT)


def test_ckks_backend_of_aggregate_matches_the_masking_backends() -> None:
    updates = _updates(4)
    weights = {10: 1, 11: 2, 12: 3, 13: 4}
    masked = aggregate(updates, "secagg", weights=weights, dropouts={12: "mask"}, max_weight=4, threat=THREAT)
    ckks = aggregate(updates, "ckks", weights=weights, dropouts={12: "before-upload"}, max_weight=4)
    assert ckks.survivors == masked.survivors == [10, 11, 13]
    for name in updates[10]:
        diff = (ckks.average[name].double() - masked.average[name].double()).abs().max().item()
        assert diff <= ckks.error_bound + masked.error_bound + (1e-2 if name == "q.lora_B" else 0)


def test_ckks_honours_fractional_bits_and_refuses_a_threat_model() -> None:
    """Options CKKS cannot honour are refused, not dropped; the ones it can are applied."""
    updates = {i: {"w": torch.full((4,), 0.1 * i)} for i in range(4)}
    coarse = aggregate(updates, "ckks", fractional_bits=8, clip_bound=1.0)
    fine = aggregate(updates, "ckks", fractional_bits=24, clip_bound=1.0)
    assert coarse.error_bound == pytest.approx(4 * 2.0**-8 / 4) and fine.error_bound < coarse.error_bound
    with pytest.raises(ParameterError, match="key committee"):
        aggregate(updates, "ckks", threat=ThreatModel.semi_honest())
