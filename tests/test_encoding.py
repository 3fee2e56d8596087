from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg import FixedPoint, ParameterError, Schema


def test_state_dict_round_trip_keeps_names_shapes_dtypes() -> None:
    sd = {"a.lora_A": torch.randn(4, 8), "a.lora_B": torch.zeros(8, 4, dtype=torch.float16),
          "prompt": torch.randn(3, 5, dtype=torch.bfloat16)}
    schema = Schema.of(sd)
    back = schema.unflatten(schema.flatten(sd))
    assert list(back) == list(sd)
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor)


def test_numpy_list_and_array_round_trip() -> None:
    parts = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float64)]
    schema = Schema.of(parts)
    back = schema.unflatten(schema.flatten(parts))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(parts, back))
    single = np.linspace(0, 1, 7)
    assert np.array_equal(Schema.of(single).unflatten(Schema.of(single).flatten(single)), single)


def test_schema_mismatch_nan_and_dtype_errors_are_clear() -> None:
    schema = Schema.of({"w": torch.zeros(2, 2)})
    with pytest.raises(ParameterError, match="expected float32"):
        schema.flatten({"w": torch.zeros(2, 3)})
    with pytest.raises(ParameterError, match="unexpected tensor 'v'"):
        schema.flatten({"v": torch.zeros(2, 2)})
    with pytest.raises(ParameterError, match="missing tensor 'u'"):
        Schema.of({"w": torch.zeros(2, 2), "u": torch.zeros(1)}).flatten({"w": torch.zeros(2, 2)})
    with pytest.raises(ParameterError, match="NaN"):
        schema.flatten({"w": torch.tensor([[1.0, float("nan")], [0, 0]])})
    with pytest.raises(ParameterError, match="only floating point"):
        Schema.of({"w": torch.zeros(2, dtype=torch.int64)})
    assert issubclass(ParameterError, ValueError)


def test_modulus_is_smallest_power_of_two_that_cannot_overflow() -> None:
    flower_equivalent = FixedPoint(clip_bound=8.0, fractional_bits=18, max_weight=1, max_clients=1000)
    assert flower_equivalent.modulus_bits == 32 and flower_equivalent.dtype.itemsize == 4
    fp = FixedPoint(clip_bound=1.0, fractional_bits=10, max_weight=3, max_clients=5)
    bound = 5 * fp.scaled_bound
    assert 2 ** (fp.modulus_bits - 1) > bound and 2 ** (fp.modulus_bits - 2) <= bound
    assert FixedPoint(1.0, 8, 1, 2).dtype.itemsize == 2
    with pytest.raises(ParameterError, match="> 64"):
        FixedPoint(clip_bound=1.0, fractional_bits=40, max_weight=100, max_clients=10**9)
    with pytest.raises(ParameterError, match="2\\^48"):
        FixedPoint(clip_bound=1e6, fractional_bits=30, max_weight=1000, max_clients=10)


def test_worst_case_sum_does_not_wrap() -> None:
    fp = FixedPoint(clip_bound=2.0, fractional_bits=8, max_weight=4, max_clients=7)
    for sign in (1.0, -1.0):
        total = np.zeros(3, dtype=np.uint64)
        for _ in range(7):
            total += fp.encode(np.full(2, sign * 1e9), weight=4)
        weighted, weight_sum = fp.decode(total)
        assert np.allclose(weighted, sign * 2.0 * 4 * 7) and weight_sum == 28


@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-10, 10)), st.integers(1, 5))
def test_dequantise_quantise_within_bound(values, weight) -> None:
    fp = FixedPoint(clip_bound=4.0, fractional_bits=12, max_weight=5, max_clients=10)
    weighted, weight_sum = fp.decode(fp.encode(values, weight).astype(np.uint64))
    assert weight_sum == weight
    assert np.abs(weighted - np.clip(values, -4, 4) * weight).max() < 2.0**-12


def test_stochastic_rounding_is_unbiased() -> None:
    fp = FixedPoint(clip_bound=1.0, fractional_bits=2, max_clients=10)
    value = np.full(200_000, 0.3)  # 0.3 * 4 = 1.2: rounds to 1 or 2 with probabilities 0.8 / 0.2
    weighted, _ = fp.decode(fp.encode(value).astype(np.uint64))
    assert abs(weighted.mean() - 0.3) < 0.005  # the standard error is ~0.0002
    assert set(np.unique(weighted)) == {0.25, 0.5}


def test_weights_must_be_integers_in_range() -> None:
    fp = FixedPoint(max_weight=3)
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ParameterError):
            fp.check_weight(bad)  # type: ignore[arg-type]
