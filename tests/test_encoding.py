from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg import FixedPoint, ParameterError, Schema
from secagg.hazmat.prg import MaskStream
from secagg.hazmat.random import RandomSource


def _seeded(seed: int) -> RandomSource:
    """A recorded, deterministic RandomSource (SHA-256 in counter mode) for reproducible noise keys."""
    counter = iter(range(1 << 62))

    def source(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"test-encoding/%d/%d" % (seed, next(counter))).digest()
        return out[:n]

    return source


def _quantize(fp: FixedPoint, values: np.ndarray, weight: int, seed: int) -> np.ndarray:
    """Signed encoded integers (int64 words, as the CKKS client uses them)."""
    out = np.empty(values.shape[0], dtype=np.int64)
    fp.quantize_into(values, weight, MaskStream(_seeded(seed)(32)), out)
    return out


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


def test_values_at_the_clip_bound_never_exceed_m() -> None:
    """Regression: float rounding of scaled + u encoded c as M + 1 (1,559 of 100,000 at M = 2^47)."""
    for clip, bits, weight in ((1.0, 47, 1), (1.0, 40, 128), (1.0, 47, 2), (8.0, 44, 1)):
        fp = FixedPoint(clip, bits, weight, max_clients=2)
        for sign in (1.0, -1.0):
            encoded = _quantize(fp, np.full(100_000, sign * clip), weight, seed=bits)
            assert (encoded == sign * fp.scaled_bound).all()


def _largest_weight(clip: float, bits: int) -> int:
    return math.floor(Fraction(2**48) / (Fraction(clip) * 2**bits))


@settings(max_examples=40)
@given(
    bits=st.sampled_from([0, 1, 12, 18, 30, 40, 47, 48]),
    clip=st.sampled_from([1.0, 0.3, 1 / 3, 8.0, 2.0**-7, 1000.0, 12345.678]),
    which=st.sampled_from(["largest", "one", "power", "any"]),
    data=st.data(),
)
@example(bits=47, clip=1.0, which="one", data=None)
@example(bits=47, clip=1.0, which="largest", data=None)
def test_values_at_and_inside_the_clip_stay_within_m(bits: int, clip: float, which: str, data) -> None:
    """|encoded| <= ceil(w * c * 2^f) <= M for +-c, just inside and far outside, every weight."""
    largest = _largest_weight(clip, bits)
    if largest < 1 or clip * 2.0**bits < 1:
        return  # no valid encoding with these parameters
    max_weight = {"largest": largest, "one": 1}.get(which) or (
        min(largest, 2 ** data.draw(st.integers(0, 48))) if which == "power" else data.draw(st.integers(1, largest))
    )
    weight = max_weight if data is None else data.draw(st.sampled_from([max_weight, max(max_weight - 1, 1), 1]))
    fp = FixedPoint(clip, bits, max_weight, max_clients=2)
    inside = [np.nextafter(clip, 0.0), clip * (1 - 2.0**-40), clip - 2.0**-bits / 3, clip / 2]
    distinct = np.array([clip, *inside, 10 * clip, 1e300])
    distinct = np.concatenate([distinct, -distinct])
    encoded = _quantize(fp, np.repeat(distinct, 2048), weight, seed=bits).reshape(distinct.shape[0], -1)
    assert np.abs(encoded).max() <= fp.scaled_bound
    for value, row in zip(distinct, encoded):
        exact = Fraction(float(np.clip(value, -clip, clip))) * weight * 2**bits
        low, high = math.floor(exact), math.ceil(exact)
        assert set(np.unique(row).tolist()) <= {low, high}, (value, weight)
        assert abs(high) <= fp.scaled_bound and abs(low) <= fp.scaled_bound


def _tight_config(clients: int, weight: int, bits: int, target: int) -> FixedPoint | None:
    """A FixedPoint with integral c * W * 2^f = K * W and clients * M just below 2^target."""
    per_weight = ((1 << target) - 1) // (clients * weight)
    if per_weight < 1 or per_weight * weight > 1 << 48 or per_weight >= 1 << 53:
        return None
    clip = per_weight / 2.0**bits
    if clip * 2.0**bits != per_weight:
        return None
    return FixedPoint(clip, bits, weight, clients)


@settings(max_examples=30)
@given(
    clients=st.integers(1, 2000),
    weight=st.sampled_from([1, 2, 3, 7, 1024, 2**20 - 1]),
    bits=st.sampled_from([0, 8, 20, 32, 47]),
    target=st.integers(20, 63),
    seed=st.integers(0, 2**32 - 1),
)
@example(clients=1, weight=1, bits=47, target=47, seed=0)  # M = 2^47 - 1, ring of 48 bits
@example(clients=7, weight=1, bits=47, target=51, seed=0)
@example(clients=2000, weight=1, bits=37, target=48, seed=0)
def test_sum_of_max_clients_at_the_bound_decodes_exactly(
    clients: int, weight: int, bits: int, target: int, seed: int
) -> None:
    """The tightest modulus the encoding picks holds n inputs at +-c with the largest weight."""
    fp = _tight_config(clients, weight, bits, target)
    if fp is None or fp.modulus_bits > 64:
        return
    assert clients * fp.scaled_bound < 1 << (fp.modulus_bits - 1)  # the modulus is tight for this sum
    random = _seeded(seed)
    for sign in (1.0, -1.0):
        total = np.zeros(65, dtype=np.uint64)
        for _ in range(clients):
            total += fp.encode(np.full(64, sign * fp.clip_bound), weight, random).astype(np.uint64)
        weighted, weight_sum = fp.decode(total)
        assert weight_sum == clients * weight
        assert (weighted * 2.0**bits == sign * clients * fp.scaled_bound).all()


@pytest.mark.parametrize(
    ("clip", "bits", "weight", "value"),
    [
        (1.0, 2, 1, 0.3),  # y = 1.2
        (1.0, 2, 7, 0.3),  # y = 8.4
        (1.0, 30, 2**18, 0.3),  # the largest weight for c = 1, f = 30
        (4.0, 0, 1, 1 + 2.0**-10),  # rounds up with probability 2^-10
        (1.0, 20, 3, -(1 / 3)),  # |y| = 2^20 - 5.8e-11: below the 2^-32 resolution, always rounds up
        (1.0, 12, 5, -0.7),
    ],
)
def test_stochastic_rounding_is_unbiased_with_a_recorded_seed(
    clip: float, bits: int, weight: int, value: float
) -> None:
    fp = FixedPoint(clip, bits, weight, max_clients=2)
    count = 1 << 20
    encoded = _quantize(fp, np.full(count, value), weight, seed=20240601)
    exact = Fraction(value) * weight * 2**bits
    frac = float(exact - math.floor(exact))
    stderr = math.sqrt(frac * (1 - frac) / count)
    rounded_up = float((encoded - math.floor(exact)).mean())  # exact - floor(exact) is E[rounded_up]
    assert abs(rounded_up - frac) < 6 * stderr + 2.0**-32
    assert set(np.unique(encoded).tolist()) <= {math.floor(exact), math.ceil(exact)}


def test_integral_scaled_values_never_round() -> None:
    fp = FixedPoint(clip_bound=2.0, fractional_bits=10, max_weight=5, max_clients=3)
    values = np.array([0.0, -0.0, 0.5, -2.0, 2.0, 1.0 / 1024, -3.0 / 1024])
    encoded = _quantize(fp, np.repeat(values, 4096), 5, seed=1).reshape(values.shape[0], -1)
    assert (encoded == (values * 5 * 1024)[:, None]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    fp = FixedPoint(clip_bound=1.0, fractional_bits=8, max_clients=2)
    values = np.array([0.5, bad, 0.25])
    with pytest.raises(ParameterError, match="NaN or infinity") as refused:
        fp.encode(values)
    assert "1" not in str(refused.value)  # not where: a client's error text may reach the server
    with pytest.raises(ParameterError, match="NaN or infinity"):
        fp.quantize_into(values, 1, MaskStream(bytes(32)), np.empty(3, dtype=fp.dtype))
    with pytest.raises(ParameterError, match="NaN or infinity"):
        Schema.of(values).flatten(values)


def test_pre_encoded_inputs_must_respect_the_clip_and_weight() -> None:
    """set_encoded_input is public: words beyond what clipping yields would void the no-overflow
    guarantee of the modulus, so they are refused; the exact bound is accepted."""
    from secagg import ParameterError, SecAggClient, SecAggConfig, ThreatModel

    enc = FixedPoint(clip_bound=0.5, fractional_bits=4, max_weight=3, max_clients=4)
    config = SecAggConfig.secagg(4, Schema.of(np.zeros(3)), ThreatModel.semi_honest(0.0, 0.0), enc)
    client = SecAggClient(config, 0)
    bound = 2 * 8  # weight 2 * clip 0.5 * 2^4
    ring = 1 << enc.modulus_bits
    good = np.array([bound, ring - bound, 0, 2], dtype=enc.dtype)  # +bound, -bound, 0; weight 2
    client.set_encoded_input(good)
    for bad, why in (
        ([bound + 1, 0, 0, 2], "exceeds"),
        ([0, ring - bound - 1, 0, 2], "exceeds"),
        ([0, 0, 0, 0], "weight is outside"),
        ([0, 0, 0, 4], "weight is outside"),
    ):
        with pytest.raises(ParameterError, match=why) as refused:
            client.set_encoded_input(np.array(bad, dtype=enc.dtype))
        assert not {"0", "2", "4", "17"} & set(str(refused.value).replace("[1,", "").split())
    assert enc.check_encoded(enc.encode(np.array([9.0, -9.0, 0.1]), weight=3)) == 3


@pytest.mark.parametrize("weight", [0, 5, 123_456])
def test_a_refused_weight_is_never_named_in_the_error(weight: int) -> None:
    """A client's error text may reach the server (Flower's error reply): it names the bound only."""
    fp = FixedPoint(clip_bound=1.0, fractional_bits=8, max_weight=3, max_clients=2)
    for refuse in (lambda: fp.check_weight(weight), lambda: fp.encode(np.zeros(2), weight=weight)):
        with pytest.raises(ParameterError, match=r"outside \[1, max_weight = 3\]") as refused:
            refuse()
        assert str(weight) not in str(refused.value)
