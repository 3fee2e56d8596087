"""Chi-square tests that masked inputs look uniform over the ring Z_{2^b}.

A masked input y_u = x_u + PRG(b_u) + pairwise masks is uniform if the masks are. The tests are
sanity checks an auditor can run on a transcript, not a proof: they catch an unmasked or badly
masked input (quantised values cluster near 0 and 2^b, so their high bytes are far from uniform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ChiSquare", "chi2_sf", "byte_test", "word_test"]

_EPS = 1e-15


def _lower_series(a: float, x: float) -> float:
    """Regularised lower incomplete gamma P(a, x) by its power series (x < a + 1)."""
    term = total = 1.0 / a
    n = a
    for _ in range(100_000):
        n += 1
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_fraction(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) by Lentz's continued fraction (x >= a + 1)."""
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < _EPS:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for a chi-square variable with ``df`` degrees of freedom."""
    if statistic <= 0:
        return 1.0
    a, x = df / 2.0, statistic / 2.0
    return 1.0 - _lower_series(a, x) if x < a + 1 else _upper_fraction(a, x)


@dataclass(frozen=True)
class ChiSquare:
    """One goodness-of-fit test against the uniform distribution."""

    name: str
    statistic: float
    df: int
    samples: int
    p_value: float


def _uniform_fit(name: str, values: np.ndarray, bins: int) -> ChiSquare:
    counts = np.bincount(values.astype(np.int64), minlength=bins)[:bins].astype(np.float64)
    expected = values.shape[0] / bins
    statistic = float(((counts - expected) ** 2).sum() / expected)
    return ChiSquare(name, statistic, bins - 1, int(values.shape[0]), chi2_sf(statistic, bins - 1))


def byte_test(name: str, words: np.ndarray, bits: int) -> ChiSquare | None:
    """Chi-square over the 256 values of every whole byte inside the low ``bits`` bits of each word."""
    full = bits // 8
    if full == 0 or words.size == 0:
        return None
    raw = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :full].reshape(-1)
    return _uniform_fit(name, raw, 256)


def word_test(name: str, words: np.ndarray, bits: int) -> ChiSquare | None:
    """Chi-square over the top k bits of each b-bit word, with 2^k bins and >= 5 words per bin."""
    k = min(8, bits, int(math.floor(math.log2(max(words.size / 5, 1)))))
    if k < 1:
        return None
    top = (words.astype(np.uint64) >> np.uint64(bits - k)) & np.uint64((1 << k) - 1)
    return _uniform_fit(name, top, 1 << k)
