"""Conditional randomised rounding to the integer grid (Kairouz-Liu-Steinke, ICML'21, Section 4.1).

Each coordinate is rounded up with probability equal to its fractional part (unbiased); the whole
vector is re-rounded until its L2 norm is within a bound. The bound, not the input norm, is the L2
sensitivity that the accountant must use.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ParameterError
from ..hazmat.prg import MaskStream
from ..hazmat.random import RandomSource, system_random

__all__ = ["conditional_round", "rounded_norm_bound", "MAX_TRIES"]

MAX_TRIES = 1000
"""Rounding attempts before giving up. With the bound of :func:`rounded_norm_bound` at beta, each
attempt fails with probability at most beta (e^-0.5 by default), so 1000 attempts fail with
probability below 2^-700 for an input within the clip norm."""

_TWO_POW_53 = float(1 << 53)


def rounded_norm_bound(l2: float, dim: int, beta: float) -> float:
    """KLS's bound on the L2 norm after conditional randomised rounding (their Theorem 1/Prop. 22).

    For an input of L2 norm at most ``l2`` in ``dim`` coordinates, unconditional randomised
    rounding exceeds ``sqrt(l2^2 + dim/4 + sqrt(2 ln(1/beta)) (l2 + sqrt(dim)/2))`` with probability
    at most ``beta``, and never exceeds ``l2 + sqrt(dim)``. Returns the smaller of the two
    (``l2 + sqrt(dim)`` when ``beta == 0``).

    Raises:
        ParameterError: ``l2 < 0``, ``dim < 1`` or ``beta`` not in [0, 1).
    """
    if not math.isfinite(l2) or l2 < 0:
        raise ParameterError("the L2 norm bound must be finite and non-negative")
    if dim < 1:
        raise ParameterError("the dimension must be positive")
    if not 0 <= beta < 1:
        raise ParameterError("beta must be in [0, 1)")
    worst = l2 + math.sqrt(dim)
    if beta == 0:
        return worst
    squared = l2 * l2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (l2 + math.sqrt(dim) / 2.0)
    return min(worst, math.sqrt(squared))


def conditional_round(x: np.ndarray, norm_bound: float, random: RandomSource = system_random,
                      max_tries: int = MAX_TRIES) -> np.ndarray:
    """Round each coordinate of ``x`` up with probability equal to its fractional part, retrying
    until the result has L2 norm at most ``norm_bound``.

    Guarantees: int64 of the shape of ``x`` with ``||result||_2 <= norm_bound`` (checked in float64
    with a relative margin of ``len(x) * 2^-52`` against summation error); each attempt is
    unbiased, the accepted one is unbiased up to the conditioning (negligible when
    ``norm_bound = rounded_norm_bound(||x||, len(x), beta)`` with small beta).
    Does not: clip ``x`` (the caller does).

    Raises:
        ParameterError: ``x`` is not finite, ``norm_bound`` is negative, or every attempt failed.
    """
    v = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) >= 2.0**62):
        raise ParameterError("x must be finite and below 2^62 in magnitude")
    if not math.isfinite(norm_bound) or norm_bound < 0:
        raise ParameterError("norm_bound must be finite and non-negative")
    floor = np.floor(v)
    frac = v - floor
    limit = norm_bound * norm_bound * (1.0 - v.size * 2.0**-52)
    stream = MaskStream(random(32))
    words = np.empty(v.shape, dtype=np.uint64)
    for _ in range(max_tries):
        stream.fill(words)
        uniform = (words >> np.uint64(11)).astype(np.float64) / _TWO_POW_53  # in [0, 1)
        rounded = floor + (uniform < frac)
        if float(np.dot(rounded.ravel(), rounded.ravel())) <= limit:
            return rounded.astype(np.int64)
    raise ParameterError(
        f"conditional rounding failed {max_tries} times: is the input norm above the clip norm "
        f"the bound {norm_bound:g} was computed for?")
