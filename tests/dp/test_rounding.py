"""Conditional randomised rounding: within the bound always, unbiased, KLS's bound formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.dp.rounding import conditional_round, rounded_norm_bound
from secagg.errors import ParameterError

from .helpers import counter_random


def test_rounded_norm_bound_formula() -> None:
    c, d, beta = 100.0, 1024, math.exp(-0.5)
    expected = math.sqrt(c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2))
    assert rounded_norm_bound(c, d, beta) == pytest.approx(expected, rel=1e-15)
    assert rounded_norm_bound(c, d, 0.0) == c + 32.0
    assert rounded_norm_bound(0.1, 4, 1e-300) == pytest.approx(0.1 + 2.0)  # the worst case is smaller here
    for args in ((-1.0, 4, 0.5), (1.0, 0, 0.5), (1.0, 4, 1.0)):
        with pytest.raises(ParameterError):
            rounded_norm_bound(*args)


def test_always_within_bound_and_unbiased() -> None:
    rng = np.random.default_rng(20240601)  # synthetic data only
    x = rng.normal(size=256)
    x *= 12.0 / np.linalg.norm(x)
    bound = rounded_norm_bound(12.0, 256, math.exp(-0.5))
    random = counter_random("rounding")
    trials = np.stack([conditional_round(x, bound, random) for _ in range(2000)])
    assert trials.dtype == np.int64
    assert np.all(np.linalg.norm(trials, axis=1) <= bound)
    assert np.all((trials == np.floor(x)) | (trials == np.floor(x) + 1))
    # conditioning on the norm biases each coordinate slightly; the mean error stays small
    assert np.max(np.abs(trials.mean(axis=0) - x)) < 0.06
    assert abs(float(np.mean(trials.mean(axis=0) - x))) < 0.01


def test_gives_up_with_parameter_error() -> None:
    with pytest.raises(ParameterError, match="conditional rounding failed"):
        conditional_round(np.full(64, 0.5), 1.0, counter_random("fail"), max_tries=20)
    with pytest.raises(ParameterError):
        conditional_round(np.array([np.inf]), 1.0)
