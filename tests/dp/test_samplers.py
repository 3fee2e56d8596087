"""The discrete Gaussian and Skellam samplers against their exact pmfs (recorded randomness)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from secagg.dp.samplers import discrete_gaussian, skellam
from secagg.errors import ParameterError

from .helpers import counter_random

SAMPLES = 200_000
P_FLOOR = 1e-4  # deterministic replay: a failure is a real distributional bug, not bad luck


def discrete_gaussian_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    support = np.arange(-int(12 * sigma) - 12, int(12 * sigma) + 13)
    weights = np.exp(-support.astype(float) ** 2 / (2 * sigma**2))
    return support, weights / weights.sum()


def chi_square_p(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Pearson chi-square over the support, pooling cells with expected count < 20 into two tails."""
    expected = pmf * samples.size
    keep = expected >= 20
    lo, hi = support[keep][0], support[keep][-1]
    counts = np.array([np.sum(samples == k) for k in support[keep]]
                      + [np.sum(samples < lo), np.sum(samples > hi)])
    exp = np.concatenate([expected[keep], [expected[support < lo].sum(), expected[support > hi].sum()]])
    exp = exp * (samples.size / exp.sum())
    mask = exp > 0
    return float(stats.chisquare(counts[mask], exp[mask]).pvalue)


@pytest.mark.parametrize("sigma", [0.7, 3.3, 41.5])
def test_discrete_gaussian_matches_pmf(sigma: float) -> None:
    x = discrete_gaussian(SAMPLES, sigma, counter_random(f"dgauss-{sigma}"))
    assert x.dtype == np.int64 and x.shape == (SAMPLES,)
    support, pmf = discrete_gaussian_pmf(sigma)
    mean, var = float((support * pmf).sum()), float((support**2 * pmf).sum())
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / SAMPLES)
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / SAMPLES) * 1.5
    assert chi_square_p(x, support, pmf) > P_FLOOR


@pytest.mark.parametrize("variance", [0.5, 7.0, 60.0, 2000.0])
def test_skellam_matches_pmf(variance: float) -> None:
    """Covers Poisson inversion (mean < 10) and PTRS (mean >= 10)."""
    x = skellam(SAMPLES, variance, counter_random(f"skellam-{variance}"))
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * math.sqrt(variance / SAMPLES)
    assert abs(x.var() / variance - 1) < 0.03
    half = int(15 * math.sqrt(variance)) + 15
    support = np.arange(-half, half + 1)
    pmf = stats.skellam.pmf(support, variance / 2, variance / 2)
    assert chi_square_p(x, support, pmf) > P_FLOOR


def test_huge_skellam_and_discrete_gaussian_moments() -> None:
    """Far beyond float64's exact lgamma cancellation range: the saddle-point pmf keeps PTRS right."""
    v = 2.0**50
    x = skellam(50_000, v, counter_random("skellam-huge"))
    assert abs(x.var() / v - 1) < 0.03 and abs(x.mean()) < 5 * math.sqrt(v / 50_000)
    y = discrete_gaussian(50_000, 1e7, counter_random("dgauss-huge"))
    assert abs(y.std() / 1e7 - 1) < 0.02


def test_samplers_replay_and_edge_cases() -> None:
    a = discrete_gaussian(100, 5.0, counter_random("replay"))
    assert np.array_equal(a, discrete_gaussian(100, 5.0, counter_random("replay")))
    assert not np.array_equal(a, discrete_gaussian(100, 5.0, counter_random("other")))
    assert discrete_gaussian(0, 5.0).size == 0 and skellam(0, 5.0).size == 0
    assert not discrete_gaussian(10, 0.0).any() and not skellam(10, 0.0).any()
    for bad in (lambda: discrete_gaussian(-1, 1.0), lambda: discrete_gaussian(3, float("nan")),
                lambda: discrete_gaussian(3, -1.0), lambda: skellam(3, 2.0**60), lambda: skellam(3, -1.0)):
        with pytest.raises(ParameterError):
            bad()
