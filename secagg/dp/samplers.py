"""Integer noise for distributed DP: the discrete Gaussian and the (symmetric) Skellam distribution.

Security assumption: every uniform comes from an AES-256-CTR keystream (:class:`MaskStream`) keyed
by 32 bytes of the injected :data:`RandomSource`, so the noise is unpredictable to anyone without
that key. Both samplers are vectorised: each pass draws a batch for the still-pending indices.

Floating-point approximations (not covered by the DP proof, which assumes exact sampling):

* uniforms are ``(k + 1/2) / 2^53`` for ``k`` uniform in ``[0, 2^53)`` (never 0 or 1), so
  probabilities are resolved to 2^-53;
* the discrete Laplace proposal is a geometric variable by inversion, ``floor(-t * ln U)``; the
  Bernoulli(exp(-gamma)) acceptance compares a uniform with ``exp(-gamma)`` in float64 (the
  Canonne-Kamath-Steinke paper samples both exactly with rational arithmetic);
* Poisson variables use inversion (small means) or Hormann's PTRS (large means) with float64
  ``log``/``log1p``/``lgamma``; inversion resamples the ~2^-50 tail the float64 CDF cannot resolve.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from ..errors import ParameterError
from ..hazmat.prg import MaskStream
from ..hazmat.random import RandomSource, system_random

__all__ = ["discrete_gaussian", "skellam", "MAX_SIGMA", "MAX_VARIANCE"]

MAX_SIGMA = float(2**40)
"""Largest discrete Gaussian sigma: proposals ``-t ln U`` stay far inside float64's exact integers."""

MAX_VARIANCE = float(2**52)
"""Largest Skellam variance: Poisson means up to 2^51 keep every candidate an exact float64 integer."""

_TWO_POW_53 = float(1 << 53)
_SMALL_MEAN = 10.0


class _Uniforms:
    """Uniform float64 values in the open interval (0, 1) from one AES-CTR keystream."""

    def __init__(self, random: RandomSource) -> None:
        self._stream = MaskStream(random(32))

    def draw(self, count: int) -> np.ndarray:
        words = np.empty(count, dtype=np.uint64)
        self._stream.fill(words)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_POW_53


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ParameterError("count must be a non-negative integer")


def discrete_gaussian(count: int, sigma: float, random: RandomSource = system_random) -> np.ndarray:
    """``count`` independent samples of the discrete Gaussian N_Z(0, sigma^2) (int64).

    Canonne-Kamath-Steinke (NeurIPS'20, Algorithm 3): propose Y from the discrete Laplace with scale
    ``t = floor(sigma) + 1`` and accept with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``.
    The expected number of proposals per sample is below 2 for every sigma.

    Guarantees: int64 samples whose law equals N_Z(0, sigma^2) up to the floating-point
    approximations listed in the module docstring. ``sigma == 0`` returns zeros.
    Does not: sample exactly (rational arithmetic) or in constant time.

    Raises:
        ParameterError: negative count, or sigma not in [0, MAX_SIGMA].
    """
    _check_count(count)
    if not math.isfinite(sigma) or not 0 <= sigma <= MAX_SIGMA:
        raise ParameterError(f"sigma must be in [0, {MAX_SIGMA:g}]")
    out = np.zeros(int(count), dtype=np.int64)
    if count == 0 or sigma == 0:
        return out
    uniforms = _Uniforms(random)
    t = math.floor(sigma) + 1.0
    shift = sigma * sigma / t
    two_var = 2.0 * sigma * sigma
    pending = np.arange(count)
    while pending.size:
        m = pending.size
        u = uniforms.draw(3 * m)
        magnitude = np.floor(-t * np.log(u[:m]))
        negative = u[m : 2 * m] <= 0.5
        # discrete Laplace: a signed geometric magnitude, rejecting "-0" so that 0 is not doubled
        laplace_ok = ~(negative & (magnitude == 0))
        accept = laplace_ok & (u[2 * m :] <= np.exp(-np.square(magnitude - shift) / two_var))
        values = np.where(negative, -magnitude, magnitude)
        out[pending[accept]] = values[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def _poisson_inversion(lam: float, count: int, uniforms: _Uniforms) -> np.ndarray:
    """Poisson(lam) for small lam by sequential inversion of the CDF, all samples in lock-step."""
    out = np.zeros(count, dtype=np.int64)
    pending = np.arange(count)
    k_max = int(lam + 40.0 * math.sqrt(lam) + 40.0)
    while pending.size:
        u = uniforms.draw(pending.size)
        left = np.ones(pending.size, dtype=bool)
        p = math.exp(-lam)
        cdf = p
        k = 0
        while k <= k_max:
            hit = left & (u <= cdf)
            out[pending[hit]] = k
            left &= ~hit
            if not left.any():
                break
            k += 1
            p *= lam / k
            cdf += p
        pending = pending[left]  # only the float64-unresolvable top tail: draw again
    return out


def _stirling_error(k: np.ndarray) -> np.ndarray:
    """``lgamma(k + 1) - (k + 1/2) ln k + k - ln(2 pi)/2`` for k >= 1, accurate to float64."""
    out = np.empty_like(k)
    small = k < 15
    ks = k[small]
    out[small] = gammaln(ks + 1.0) - (ks + 0.5) * np.log(ks) + ks - 0.5 * math.log(2 * math.pi)
    kl = k[~small]
    inv = 1.0 / kl
    inv2 = inv * inv
    out[~small] = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 / 1680)))
    return out


def _log_poisson_pmf(k: np.ndarray, lam: float) -> np.ndarray:
    """``ln P(Poisson(lam) = k)`` without the cancellation of ``k ln lam - lgamma(k+1)`` at large lam.

    Uses Loader's saddle-point form ``-bd0(k, lam) - ln(2 pi k)/2 - stirlerr(k)`` with
    ``bd0 = k log1p((k - lam)/lam) - (k - lam)``, whose terms are O(sqrt(lam)), not O(lam ln lam).
    """
    out = np.full(k.shape, -lam)
    pos = k > 0
    kp = k[pos]
    bd0 = kp * np.log1p((kp - lam) / lam) - (kp - lam)
    out[pos] = -bd0 - 0.5 * np.log(2 * math.pi * kp) - _stirling_error(kp)
    return out


def _poisson_ptrs(lam: float, count: int, uniforms: _Uniforms) -> np.ndarray:
    """Poisson(lam) for lam >= 10 by Hormann's transformed rejection with squeeze (PTRS, 1993)."""
    out = np.zeros(count, dtype=np.int64)
    b = 0.931 + 2.53 * math.sqrt(lam)
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    v_r = 0.9277 - 3.6224 / (b - 2)
    pending = np.arange(count)
    while pending.size:
        m = pending.size
        draw = uniforms.draw(2 * m)
        u = draw[:m] - 0.5
        v = draw[m:]
        us = 0.5 - np.abs(u)
        k = np.floor((2 * a / us + b) * u + lam + 0.43)
        quick = (us >= 0.07) & (v <= v_r)
        candidate = ~quick & (k >= 0) & ~((us < 0.013) & (v > us))
        accept = quick.copy()
        if candidate.any():
            kc, usc, vc = k[candidate], us[candidate], v[candidate]
            lhs = np.log(vc) + log_inv_alpha - np.log(a / (usc * usc) + b)
            accept[candidate] = lhs <= _log_poisson_pmf(kc, lam)
        out[pending[accept]] = k[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def _poisson(lam: float, count: int, uniforms: _Uniforms) -> np.ndarray:
    if lam == 0:
        return np.zeros(count, dtype=np.int64)
    if lam < _SMALL_MEAN:
        return _poisson_inversion(lam, count, uniforms)
    return _poisson_ptrs(lam, count, uniforms)


def skellam(count: int, variance: float, random: RandomSource = system_random) -> np.ndarray:
    """``count`` independent symmetric Skellam samples Poisson(v/2) - Poisson(v/2) (int64).

    Guarantees: int64 samples with mean 0 and variance ``variance``, exactly Skellam-distributed up
    to the floating-point approximations in the module docstring; sums of Skellam samples are
    Skellam with the summed variance (what makes the distributed mechanism's analysis exact).
    Does not: run in constant time.

    Raises:
        ParameterError: negative count, or variance not in [0, MAX_VARIANCE].
    """
    _check_count(count)
    if not math.isfinite(variance) or not 0 <= variance <= MAX_VARIANCE:
        raise ParameterError(f"variance must be in [0, {MAX_VARIANCE:g}]")
    uniforms = _Uniforms(random)
    lam = variance / 2.0
    both = _poisson(lam, 2 * int(count), uniforms)
    out: np.ndarray = both[: int(count)] - both[int(count) :]
    return out
