"""The epsilon lower bound of a one-run privacy audit (Steinke, Nasr, Jagielski, NeurIPS 2023).

Setting: ``m`` canaries, each included in the input independently with probability 1/2. After one
run, an auditor guesses "included" or "excluded" for ``r`` of them (abstaining on the rest) and gets
``v`` right. If the mechanism is (epsilon, delta)-DP with respect to each canary's inclusion, their
Theorem 5.2 (with abstention) bounds the chance of ``v`` or more correct guesses by

    P[Binomial(r, q) >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i,
    q = e^epsilon / (1 + e^epsilon),

the accuracy of epsilon-DP randomised response. :func:`p_value` computes that bound;
:func:`epsilon_lower_bound` the largest epsilon it rejects at the given confidence. Pure functions
(scipy for the binomial distribution).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.special import expit

from ..errors import ParameterError

__all__ = ["p_value", "epsilon_lower_bound"]

_BISECTIONS = 60


def _check(canaries: int, guesses: int, correct: int, delta: float) -> None:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ParameterError(f"{name} must be an integer, got {value!r}")
    if not 0 <= correct <= guesses <= canaries:
        raise ParameterError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= canaries ({canaries})")
    if not 0 <= delta <= 1:
        raise ParameterError(f"delta must be in [0, 1], got {delta!r}")


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``correct`` of ``guesses`` right] for an (epsilon, delta)-DP mechanism.

    Guarantees: valid for any guesser whose guesses depend only on the output (and public data),
    whatever the mechanism, as long as it is (epsilon, delta)-DP in each canary's inclusion bit.
    Does not: use anything about the mechanism beyond that (it is loose for Gaussian-like ones).

    Raises:
        ParameterError: counts not ordered as 0 <= correct <= guesses <= canaries, epsilon < 0, or
            delta outside [0, 1].
    """
    _check(canaries, guesses, correct, delta)
    if not epsilon >= 0:
        raise ParameterError(f"epsilon must be non-negative, got {epsilon!r}")
    q = float(expit(epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))
    if correct == 0 or delta == 0:
        return min(1.0, tail)
    # P[correct - i <= Bin < correct] for i = 1..correct, by cumulative sums of the pmf downwards
    below = np.cumsum(stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q))
    alpha = float(np.max(below / np.arange(1, correct + 1)))
    return min(1.0, tail + 2.0 * canaries * delta * alpha)


def epsilon_lower_bound(canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that ``correct`` right out of ``guesses`` rejects at ``confidence``.

    With probability at least ``confidence`` over the canary coins and the mechanism's randomness,
    the mechanism is NOT (epsilon, delta)-DP (in each canary's bit) for any epsilon below the
    returned value. 0 when nothing is rejected (e.g. half the guesses right). Bisection to ~1e-15
    relative precision, rounded down.

    Raises:
        ParameterError: as :func:`p_value`, or ``confidence`` not in (0, 1).
    """
    _check(canaries, guesses, correct, delta)
    if not 0 < confidence < 1:
        raise ParameterError(f"confidence must be in (0, 1), got {confidence!r}")
    level = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(canaries, guesses, correct, eps, delta) < level

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2.0 * high
        if high > 1e3:  # the bound saturates long before: q rounds to 1 in float64 near epsilon 37
            return low
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2.0
        if rejected(mid):
            low = mid
        else:
            high = mid
    return math.nextafter(low, 0.0) if low > 0 else 0.0
