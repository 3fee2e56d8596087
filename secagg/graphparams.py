"""Choosing the SecAgg+ Harary-graph degree k and Shamir threshold t.

Follows the search of Google's fcp ``graph_parameter_finder`` (Bell et al., CCS'20): security
sigma = 40 bits split over two bad events (2^-41 each), correctness eta = 20 bits. Hypergeometric
tails are summed exactly in log space with ``math.lgamma``.

Two departures, both for a deviating (malicious) server; SECURITY.md proves them:

- fcp's semi-malicious threshold ``ceil((t1 + k - 1.25)/2) + 1`` lets a server that shows a client
  only t - 1 neighbours and calls the honest ones dropped recover its input. We take the smallest t
  with ``2t >= k + t1 + 3`` (the neighbourhood form of t + q > n + c + 1, see :mod:`secagg.bounds`).
- The graph is derived from the setup id, which the server influences through the round number and
  the caller context (e.g. a model digest it may perturb). A server that tries 2^g values offline
  and keeps the graph it likes multiplies the failure probability by 2^g, so the malicious search
  targets 2^-(sigma + g) per graph, with g = ``GRINDING_BITS`` = 40.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ParameterError

__all__ = [
    "GraphParameters", "find_harary_parameters", "corrupt_neighbour_bound", "Hypergeometric",
    "SECURITY_BITS", "CORRECTNESS_BITS", "GRINDING_BITS",
]

SECURITY_BITS = 40
CORRECTNESS_BITS = 20
GRINDING_BITS = 40
MAX_CLIENTS = 1_000_000
_SMALL = 1e-14


def corrupt_count(n: int, corrupt: float) -> int:
    """c: how many of n clients a corrupt fraction means. The one place this is rounded.

    floor(gamma n), robust to the float error in gamma (e.g. 0.1 * 30 = 3.0000000000000004, and
    2/31 written to 12 digits): every party, bound and search uses this same count.
    """
    return math.floor(corrupt * n + 1e-9)


@dataclass(frozen=True, slots=True)
class GraphParameters:
    """k neighbours per client (even) and the threshold t (shares needed among the k)."""

    degree: int
    threshold: int


class Hypergeometric:
    """Number of marked items among ``sampled`` drawn without replacement from ``total``."""

    def __init__(self, total: int, marked: int, sampled: int) -> None:
        if min(total, marked, sampled) < 0 or marked > total or sampled > total:
            raise ParameterError("invalid hypergeometric parameters")
        self.total, self.marked, self.sampled = total, marked, sampled

    def _pmf(self, x: float, c: int) -> float:
        big_n, n = self.total, self.sampled
        if x < 0 or x > n or x > c or big_n + x < c + n:
            return 0.0
        lg = math.lgamma
        return math.exp(
            lg(n + 1) + lg(c + 1) + lg(big_n - c + 1) + lg(big_n - n + 1)
            - lg(x + 1) - lg(n - x + 1) - lg(c - x + 1) - lg(big_n + 1) - lg(big_n - n - c + x + 1)
        )

    def pmf(self, x: float) -> float:
        return self._pmf(x, self.marked)

    def _cdf(self, x: float, c: int) -> float:
        big_n, n = self.total, self.sampled
        p, acc = self._pmf(x, c), 0.0
        while p > acc * 1e-16:  # terms shrink geometrically below the mode
            acc += p
            p *= x
            p *= big_n - c - n + x
            p /= c - x + 1
            p /= n - x + 1
            x -= 1
        return acc

    def cdf(self, x: float) -> float:
        x = math.floor(x)
        if x > self.marked * self.sampled / self.total:
            return 1 - self._cdf(self.sampled - x - 1, self.total - self.marked)
        return self._cdf(x, self.marked)

    def quantile(self, q: float, complement: bool = False) -> float:
        """Largest r with P(X <= r) < q (or the mirrored bound with ``complement``)."""
        if q > 0.5:
            q, complement = 1 - q, not complement
        if complement:
            return self.sampled - self._quantile(q, self.total - self.marked) - 1
        return self._quantile(q, self.marked)

    def _quantile(self, q: float, c: int) -> float:
        big_n, n = self.total, self.sampled
        guess = max(-1.0, c + n - big_n - 1.0, n * (c / big_n - math.sqrt(-math.log(q) / (2 * n))))
        r = float(math.floor(guess))
        cdf, pmf = self._cdf(r, c), self._pmf(r, c)
        while cdf < q and r < n:
            if pmf > 0:
                pmf /= r + 1
                pmf /= big_n - c - n + r + 1
                pmf *= c - r
                pmf *= n - r
            else:
                pmf = self._pmf(r + 1, c)
            cdf += pmf
            r += 1
        return r - 1


def _check_rates(n: int, corrupt: float, dropout: float, malicious: bool) -> None:
    if n <= 0 or n > MAX_CLIENTS:
        raise ParameterError(f"the number of clients must be in [1, {MAX_CLIENTS}], got {n}")
    if not 0 <= corrupt < 1:
        raise ParameterError(f"the corrupt fraction must be in [0, 1), got {corrupt}")
    if not 0 <= dropout < 1:
        raise ParameterError(f"the dropout fraction must be in [0, 1), got {dropout}")
    if malicious and corrupt + 2 * dropout > 0.9:
        raise ParameterError(
            f"against a malicious server corrupt + 2*dropout must be <= 0.9 (got {corrupt + 2 * dropout:.3g}): "
            "no threshold can both stop the corrupt clients and survive the dropouts"
        )
    if not malicious and corrupt + dropout > 0.9:
        raise ParameterError(
            f"against a semi-honest server corrupt + dropout must be <= 0.9 (got {corrupt + dropout:.3g}): "
            "no threshold can both stop the corrupt clients and survive the dropouts"
        )


def _log_prob_disconnected(n: int, k: int, corrupt: float, dropout: float) -> float:
    bad = corrupt_count(n, corrupt) + math.floor((dropout + _SMALL) * n)
    if k > bad:
        return -math.inf
    gap_pairs = math.log(n) + math.log(n - k - 1) - math.log(2)
    lg = math.lgamma
    return gap_pairs + lg(bad + 1) + lg(n - k + 1) - lg(n + 1) - lg(bad - k + 1)


def _event_bits(malicious: bool) -> int:
    """-log2 of the probability budget of each of the two bad events, per graph."""
    return SECURITY_BITS + 1 + (GRINDING_BITS if malicious else 0)


def corrupt_neighbour_bound(n: int, k: int, corrupt: float, malicious: bool) -> int:
    """t1: no client has more than this many corrupt neighbours, except with probability 2^-sigma.

    A hypergeometric tail bound over a uniformly random Harary labelling, union-bounded over the n
    clients (and over 2^GRINDING_BITS graphs when the server is malicious). Never above k or the
    number of corrupt clients, c = :func:`corrupt_count`. Malicious: an honest client's k
    neighbours are drawn from the n - 1 others, c of them corrupt (fcp, kept for the semi-honest
    known answers, draws from n).
    """
    marked = corrupt_count(n, corrupt)
    if k >= n - 1:
        return marked
    adversarial = Hypergeometric(n - 1 if malicious else n, marked, k)
    return int(min(k, marked, adversarial.quantile(2.0 ** -_event_bits(malicious) / n, complement=True)))


def _threshold_for_degree(n: int, k: int, corrupt: float, dropout: float, malicious: bool) -> int | None:
    per_event = _event_bits(malicious)
    if _log_prob_disconnected(n, k, corrupt, dropout) >= -per_event * math.log(2):
        return None
    surviving = Hypergeometric(n, math.ceil((1 - dropout - _SMALL) * n), k)
    t1 = corrupt_neighbour_bound(n, k, corrupt, malicious)
    t2 = surviving.quantile(2.0**-CORRECTNESS_BITS / n)
    if surviving.cdf(t2) < 2.0**-CORRECTNESS_BITS / n:
        t2 += 1
    threshold = max(t1 + 1, 2)
    if malicious:
        # 2t - (k + 1) >= t1 + 2 (secagg.bounds): no client can be isolated.
        threshold = max(threshold, -(-(k + t1 + 3) // 2))
    # fcp returns max(t1 + 1, 2) even when that exceeds t2 (e.g. n=5, 10% corrupt, 20% dropout gives
    # k=2, t=2, where one dropped neighbour breaks the round). We require t <= t2 so the 2^-20
    # correctness target holds too, and search on to a larger k instead.
    return threshold if threshold <= t2 else None


def find_harary_parameters(n: int, corrupt: float, dropout: float, malicious: bool = False) -> GraphParameters:
    """The smallest even degree k (and its threshold t) meeting sigma = 40, eta = 20.

    Malicious: also 2t >= k + t1 + 3 against 2^GRINDING_BITS re-drawn graphs (module docstring).

    Raises:
        ParameterError: the rates are infeasible or no degree below n - 1 works (use the complete
            graph, i.e. SecAgg, for such small or hostile settings).
    """
    _check_rates(n, corrupt, dropout, malicious)
    for k in range(2, n - 1, 2):
        t = _threshold_for_degree(n, k, corrupt, dropout, malicious)
        if t is not None:
            return GraphParameters(k, t)
    raise ParameterError(
        f"no Harary degree below n - 1 = {n - 1} meets 2^-{SECURITY_BITS} security and "
        f"2^-{CORRECTNESS_BITS} correctness for n={n}, corrupt={corrupt}, dropout={dropout}; "
        "use more clients, lower rates, or the complete graph (protocol 'secagg')"
    )
