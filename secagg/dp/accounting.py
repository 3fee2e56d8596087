"""Renyi-DP accounting of the distributed discrete mechanisms, composed over rounds.

Neighbouring relation: one client's input vector is replaced by zero (add/remove one client's
data; its noise share is still added). In integer units the L2 sensitivity is
``D2 = spec.norm_bound(dim)`` (clip, scale, conditional rounding) and, since the rounded vector is
an integer vector, the L1 sensitivity is ``D1 = min(D2^2, sqrt(d) D2)`` with ``d = rotated_dim(dim)``.
Only the survivors' noise is in the unmasked sum, so a round is accounted with its survivors ``n``.

* ddgauss (Kairouz-Liu-Steinke ICML'21, Theorem 1 / Prop. 14; needs sigma >= 1/2): ``S = n sigma^2``,
  ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))``, order-alpha RDP is at most
  ``min(alpha D2^2/(2S) + tau d, alpha/2 (D2^2/S + 2 tau D1/sqrt(S) + tau^2 d),
  alpha/2 (D2/sqrt(S) + tau sqrt(d))^2)``.
* skellam (Agarwal-Kairouz-Liu NeurIPS'21, RDP of the multi-dimensional Skellam mechanism): with
  total variance ``mu = n sigma^2``, order-alpha RDP is at most
  ``alpha D2^2/(2 mu) + min(((2 alpha - 1) D2^2 + 6 D1)/(4 mu^2), 3 D1/(2 mu))``
  (integer orders only, as in the reference implementation).

RDP adds over rounds; (epsilon, delta) comes from dp_accounting's RDP conversion
(``rdp_privacy_accountant.compute_epsilon``, Prop. 12 of Canonne-Kamath-Steinke 2020).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from ..errors import ParameterError
from .rotation import rotated_dim
from .spec import DpSpec

__all__ = ["ORDERS", "rdp", "epsilon", "epsilon_of_rounds"]

def __getattr__(name: str) -> object:
    """``ORDERS``: dp-accounting's default RDP orders, loaded on first use (dp-accounting pulls in scipy,
    most of ``import secagg``'s time, which a protocol step on a Flower node never needs)."""
    if name == "ORDERS":
        return _orders()
    raise AttributeError(name)


@functools.cache
def _orders() -> tuple[float, ...]:
    from dp_accounting.rdp import rdp_privacy_accountant

    return tuple(float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
"""The RDP orders used by :func:`epsilon` (dp_accounting's defaults)."""


def _tau(sigma: float, n: int) -> float:
    k = np.arange(1, n, dtype=np.float64)
    return 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))


def rdp(spec: DpSpec, dim: int, survivors: int, orders: Sequence[float]) -> np.ndarray:
    """Order-wise RDP of ONE round whose sum holds ``survivors`` clients' noise.

    Guarantees: an upper bound on the Renyi divergence at each order (``inf`` where the bound does
    not apply: orders at most 1, non-integer orders for skellam, ddgauss with sigma < 1/2).
    Does not: cover floating-point sampler deviations or a server that lies about survivors.

    Raises:
        ParameterError: ``survivors < 1``.
    """
    if isinstance(survivors, bool) or not isinstance(survivors, (int, np.integer)) or survivors < 1:
        raise ParameterError("survivors must be a positive integer")
    alpha = np.asarray(orders, dtype=np.float64)
    d = rotated_dim(dim)
    d2 = spec.norm_bound(dim)
    d1 = min(d2 * d2, math.sqrt(d) * d2)
    total_var = survivors * spec.noise_std**2
    if spec.mechanism == "ddgauss":
        tau = _tau(spec.noise_std, int(survivors))
        sd = math.sqrt(total_var)
        term1 = alpha * d2**2 / (2 * total_var) + tau * d
        term2 = alpha / 2 * (d2**2 / total_var + 2 * tau * d1 / sd + tau**2 * d)
        term3 = alpha / 2 * (d2 / sd + tau * math.sqrt(d)) ** 2
        out = np.minimum(np.minimum(term1, term2), term3)
        valid = (alpha > 1) & (spec.noise_std >= 0.5)  # KLS's lemma on sums needs sigma >= 1/2
    else:
        mu = total_var
        out = alpha * d2**2 / (2 * mu) + np.minimum(((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * mu**2),
                                                    3 * d1 / (2 * mu))
        valid = (alpha > 1) & (alpha == np.floor(alpha))
    return np.where(valid, out, np.inf)


def _to_epsilon(total_rdp: np.ndarray, delta: float) -> float:
    if not 0 < delta < 1:
        raise ParameterError("delta must be in (0, 1)")
    finite = np.isfinite(total_rdp)
    if not finite.any():
        return math.inf
    orders = [a for a, ok in zip(_orders(), finite) if ok]
    from dp_accounting.rdp import rdp_privacy_accountant

    eps, _ = rdp_privacy_accountant.compute_epsilon(orders, list(total_rdp[finite]), delta)
    return float(eps)


def epsilon(spec: DpSpec, dim: int, survivors: int, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``rounds`` rounds, each with ``survivors`` survivors (RDP composition).

    Raises:
        ParameterError: ``rounds < 0``, ``survivors < 1`` or ``delta`` not in (0, 1).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ParameterError("rounds must be a non-negative integer")
    if rounds == 0:
        return 0.0
    return _to_epsilon(rounds * rdp(spec, dim, survivors, _orders()), delta)


def epsilon_of_rounds(spec: DpSpec, dim: int, survivors_per_round: Sequence[int], delta: float) -> float:
    """(epsilon, delta)-DP of rounds with the given survivor counts (one entry per round so far).

    Guarantees: the same bound as :func:`epsilon` when every count is equal; each distinct count's
    RDP is computed once. Use the threshold (not the observed count) for a malicious server.
    """
    counts: dict[int, int] = {}
    for n in survivors_per_round:
        counts[int(n)] = counts.get(int(n), 0) + 1
    if not counts:
        return 0.0
    total = sum(times * rdp(spec, dim, n, _orders()) for n, times in counts.items())
    return _to_epsilon(np.asarray(total, dtype=np.float64), delta)
