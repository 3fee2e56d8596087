"""DpSpec: validation names the field, canonical digest, encode/decode pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.dp.rotation import rotated_dim
from secagg.dp.spec import DpSpec
from secagg.errors import ParameterError, SecAggError

from .helpers import counter_random

SEED = b"session-round-seed-0123456789abc"
GOOD = dict(mechanism="ddgauss", l2_clip=1.0, scale=100.0, noise_std=3.0, bits=20)


@pytest.mark.parametrize("field,value", [
    ("mechanism", "laplace"), ("l2_clip", 0.0), ("l2_clip", math.inf), ("scale", -1.0), ("scale", math.nan),
    ("noise_std", 0.0), ("noise_std", 2.0**41), ("bits", 1), ("bits", 65), ("bits", 20.0), ("beta", 1.0),
])
def test_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ParameterError, match=field) as info:
        DpSpec(**{**GOOD, field: value})  # type: ignore[arg-type]
    assert isinstance(info.value, (ValueError, SecAggError))
    with pytest.raises(ParameterError, match="noise_std"):
        DpSpec(**{**GOOD, "mechanism": "skellam", "noise_std": 2.0**27})  # type: ignore[arg-type]


def test_digest_is_canonical() -> None:
    a = DpSpec(**GOOD)  # type: ignore[arg-type]
    assert a.digest() == DpSpec(**GOOD).digest() and len(a.digest()) == 32  # type: ignore[arg-type]
    for field, value in (("mechanism", "skellam"), ("l2_clip", 1.0000001), ("scale", 101.0),
                         ("noise_std", 3.5), ("bits", 21), ("beta", 0.5)):
        assert DpSpec(**{**GOOD, field: value}).digest() != a.digest()  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_encode_decode_pipeline(mechanism: str) -> None:
    spec = DpSpec(**{**GOOD, "mechanism": mechanism, "scale": 1000.0})  # type: ignore[arg-type]
    rng = np.random.default_rng(7)  # synthetic data only
    values = rng.normal(size=300) * 5  # norm ~87: clipped to 1
    random = counter_random(f"encode-{mechanism}")
    enc = spec.encode(values, SEED, random)
    assert enc.dtype == np.int64 and enc.shape == (rotated_dim(300),)
    clipped = values / np.linalg.norm(values)
    dec = spec.decode(enc, SEED, 300)
    assert dec.shape == (300,)
    # decoding error per coordinate: noise (std 3) + rounding (<= 1/2 rms), over the scale 1000
    rms = float(np.sqrt(np.mean((dec - clipped) ** 2)))
    assert rms < 5 * math.sqrt(3.0**2 + 0.25) / 1000
    assert spec.encode(values, SEED, counter_random(f"encode-{mechanism}")).tolist() == enc.tolist()


def test_encode_rejects_bad_values() -> None:
    spec = DpSpec(**GOOD)  # type: ignore[arg-type]
    for bad in (np.array([]), np.ones((2, 2)), np.array([1.0, np.nan])):
        with pytest.raises(ParameterError):
            spec.encode(bad, SEED)


def test_wrap_probability_bounds() -> None:
    spec = DpSpec(**GOOD)  # type: ignore[arg-type]
    assert spec.wrap_probability(10, 1000) < 1e-100
    assert DpSpec(**{**GOOD, "bits": 4}).wrap_probability(10, 1000) == 1.0
    sk = DpSpec(**{**GOOD, "mechanism": "skellam"})  # type: ignore[arg-type]
    # the Skellam Chernoff bound is never better than the Gaussian one at the same variance
    narrow = dict(bits=12)
    assert (DpSpec(**{**GOOD, **narrow, "mechanism": "skellam"}).wrap_probability(10, 1000)  # type: ignore[arg-type]
            >= DpSpec(**{**GOOD, **narrow}).wrap_probability(10, 1000))  # type: ignore[arg-type]
    assert 0 <= sk.wrap_probability(10, 1000) < 1e-100
