"""Choose a ring width, a scale and the per-client noise for a privacy target.

For a ring width b the planner takes the largest scale s such that, with the smallest per-client
noise meeting the epsilon target (binary search), one coordinate of the sum of ``clients``
encodings wraps with probability at most 2^-40. A larger s only shrinks the rounding error and
the rounding inflation of the sensitivity, so the largest feasible s is the best one for b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


from ..errors import ParameterError
from .accounting import epsilon as spec_epsilon
from .rotation import rotated_dim
from .spec import _MAX_STD, MECHANISMS, DpSpec

__all__ = ["DpPlan", "plan", "WRAP_TARGET", "MSE_OVERHEAD", "DEFAULT_MAX_BITS", "MAX_BITS"]

WRAP_TARGET = 2.0**-40
"""Largest accepted per-coordinate probability that the aggregate wraps around the ring."""

MSE_OVERHEAD = 1.1
"""Default ring width: the smallest b <= 20 whose MSE is within this factor of the continuous
Gaussian mechanism's at the same privacy (else 20 if feasible, else the smallest b <= 32)."""

DEFAULT_MAX_BITS = 20
MAX_BITS = 32
_REL_TOL = 1e-7


@dataclass(frozen=True)
class DpPlan:
    """A planned :class:`DpSpec` with the guarantees it was chosen for.

    ``expected_mse`` bounds the per-coordinate MSE of the decoded sum of ``min_survivors`` clients
    (noise plus rounding, caller units); ``gaussian_mse`` is the continuous Gaussian mechanism's
    MSE at the same (epsilon, delta, rounds) and sensitivity ``clip``.
    """

    spec: DpSpec
    epsilon: float
    target_epsilon: float
    delta: float
    rounds: int
    clients: int
    min_survivors: int
    dim: int
    noise_multiplier: float
    expected_mse: float
    gaussian_mse: float
    wrap_probability: float

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON fields (a contract: add, never rename)."""
        return {
            "mechanism": self.spec.mechanism,
            "epsilon": self.epsilon,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "rounds": self.rounds,
            "clients": self.clients,
            "min_survivors": self.min_survivors,
            "dim": self.dim,
            "rotated_dim": rotated_dim(self.dim),
            "clip": self.spec.l2_clip,
            "bits": self.spec.bits,
            "scale": self.spec.scale,
            "beta": self.spec.beta,
            "noise_std_per_client": self.spec.noise_std,
            "noise_multiplier": self.noise_multiplier,
            "l2_sensitivity": self.spec.norm_bound(self.dim),
            "expected_mse": self.expected_mse,
            "gaussian_mse": self.gaussian_mse,
            "mse_ratio": self.expected_mse / self.gaussian_mse,
            "wrap_probability": self.wrap_probability,
            "spec_digest": self.spec.digest().hex(),
        }


@dataclass(frozen=True)
class _Problem:
    target: float
    delta: float
    rounds: int
    clients: int
    survivors: int
    dim: int
    clip: float
    mechanism: str

    def spec(self, scale: float, noise: float, bits: int) -> DpSpec:
        return DpSpec(self.mechanism, self.clip, scale, noise, bits)

    def eps(self, scale: float, noise: float, bits: int) -> float:
        return spec_epsilon(self.spec(scale, noise, bits), self.dim, self.survivors, self.rounds, self.delta)


def _bisect(ok: Callable[[float], bool], bad: float, good: float) -> float:
    """The point nearest ``bad`` that is ``ok``, between a failing and a passing point (geometric)."""
    while abs(math.log(good / bad)) > _REL_TOL:
        mid = math.sqrt(bad * good)
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


def _noise_for(p: _Problem, scale: float, bits: int, guess: float | None = None) -> float | None:
    """Smallest per-client noise std (integer units) meeting the epsilon target, None if over cap."""
    cap = _MAX_STD[p.mechanism]
    start = guess or p.spec(scale, 1.0, bits).norm_bound(p.dim) / math.sqrt(p.survivors)
    start = min(start, cap)

    def ok(sigma: float) -> bool:
        return p.eps(scale, sigma, bits) <= p.target

    step = 1.05 if guess else 2.0
    if ok(start):
        low = start
        while ok(low):
            low /= step
            if low < 1e-9:
                return low * step
        return _bisect(ok, low, low * step)
    high = start
    while not ok(high):
        if high >= cap:
            return None
        high = min(high * step, cap)
    return _bisect(ok, high / step, high)


def _wrap(p: _Problem, scale: float, noise: float, bits: int) -> float:
    return p.spec(scale, noise, bits).wrap_probability(p.clients, p.dim)


def _plan_bits(p: _Problem, bits: int) -> DpSpec | None:
    """The spec with the largest feasible scale at ring width ``bits``, or None if none is."""
    if 2.0 ** (bits - 1) <= p.clients:
        return None
    low_scale = 2.0**-20 / p.clip
    noise = _noise_for(p, low_scale, bits)
    if noise is None or _wrap(p, low_scale, noise, bits) > WRAP_TARGET:
        return None
    found = {low_scale: noise}

    def ok(scale: float) -> bool:
        near = min(found, key=lambda known: abs(math.log(known / scale)))
        ratio = p.spec(scale, 1.0, bits).norm_bound(p.dim) / p.spec(near, 1.0, bits).norm_bound(p.dim)
        sigma = _noise_for(p, scale, bits, found[near] * ratio)
        if sigma is None or _wrap(p, scale, sigma, bits) > WRAP_TARGET:
            return False
        found[scale] = sigma
        return True

    high_scale = 2.0**bits * math.sqrt(rotated_dim(p.dim)) / p.clip
    while ok(high_scale):
        high_scale *= 2.0
    scale = _bisect(ok, high_scale, low_scale)
    return p.spec(scale, found[scale], bits)


def _gaussian_multiplier(target: float, delta: float, rounds: int) -> float:
    import dp_accounting  # scipy with it: loaded only when a plan is made
    from dp_accounting import mechanism_calibration
    from dp_accounting.rdp import rdp_privacy_accountant

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)

    z = mechanism_calibration.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant, event, target, delta, tol=1e-9)
    return float(z)


def _expected_mse(spec: DpSpec, survivors: int) -> float:
    """Noise variance (<= sigma^2 for the discrete Gaussian) plus randomised-rounding variance (<= 1/4)
    per client, in integer units, divided by s^2; unrotation is orthogonal so per-coordinate MSE is kept."""
    return survivors * (spec.noise_std**2 + 0.25) / spec.scale**2


def _validate(epsilon: float, delta: float, rounds: int, clients: int, min_survivors: int, dim: int,
              clip: float, mechanism: str, bits: int | None) -> None:
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ParameterError("epsilon must be a finite positive number")
    if not 0 < delta < 1:
        raise ParameterError("delta must be in (0, 1)")
    for name, value in (("rounds", rounds), ("clients", clients), ("min_survivors", min_survivors),
                        ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be a positive integer")
    if min_survivors > clients:
        raise ParameterError("min_survivors must be at most clients")
    if not math.isfinite(clip) or clip <= 0:
        raise ParameterError("clip must be a finite positive number")
    if mechanism not in MECHANISMS:
        raise ParameterError(f"mechanism must be one of {MECHANISMS}")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 64):
        raise ParameterError("bits must be an integer in [2, 64]")


def _choose(p: _Problem, bits: int | None, gaussian_mse: float) -> DpSpec:
    cache: dict[int, DpSpec | None] = {}

    def at(b: int) -> DpSpec | None:
        if b not in cache:
            cache[b] = _plan_bits(p, b)
        return cache[b]

    if bits is not None:
        spec = at(bits)
        if spec is None:
            raise ParameterError(
                f"{bits} bits cannot hold the sum of {p.clients} clients with the noise epsilon={p.target:g} "
                f"needs (wrap probability > 2^-40); use more bits, fewer clients or a larger epsilon")
        return spec
    smallest = next((b for b in range(2, MAX_BITS + 1) if at(b) is not None), None)
    if smallest is None:
        raise ParameterError(
            f"no ring width up to {MAX_BITS} bits holds the sum of {p.clients} clients with the noise "
            f"epsilon={p.target:g} needs (wrap probability > 2^-40); pass --bits up to 64, use fewer "
            f"clients or a larger epsilon")
    if smallest > DEFAULT_MAX_BITS:
        return _need(at(smallest))
    low, high = smallest, DEFAULT_MAX_BITS  # MSE decreases with b: find the smallest good b
    best = _need(at(high))
    if _expected_mse(best, p.survivors) > MSE_OVERHEAD * gaussian_mse:
        return best
    while low < high:
        mid = (low + high) // 2
        spec = _need(at(mid))
        if _expected_mse(spec, p.survivors) <= MSE_OVERHEAD * gaussian_mse:
            high, best = mid, spec
        else:
            low = mid + 1
    return best if best.bits == low else _need(at(low))


def _need(spec: DpSpec | None) -> DpSpec:
    if spec is None:  # feasibility is monotone in the ring width
        raise ParameterError("internal planner error: a wider ring became infeasible")
    return spec


def plan(epsilon: float, delta: float, rounds: int, clients: int, min_survivors: int, dim: int, clip: float,
         mechanism: str = "ddgauss", bits: int | None = None) -> DpPlan:
    """Plan a :class:`DpSpec` for ``rounds`` rounds of at least ``min_survivors`` survivors each.

    Guarantees: ``plan.epsilon <= epsilon`` composed over ``rounds`` rounds with ``min_survivors``
    survivors (more survivors only add noise); per-coordinate wrap probability of the sum of
    ``clients`` encodings ``<= 2^-40``; the largest scale that allows it at the chosen width.
    Does not: account for rounds with fewer survivors than ``min_survivors`` (the caller must
    refuse such rounds, or use :func:`epsilon_of_rounds`).

    Raises:
        ParameterError: invalid inputs, or no ring width / noise meets the constraints (says which).
    """
    _validate(epsilon, delta, rounds, clients, min_survivors, dim, clip, mechanism, bits)
    p = _Problem(float(epsilon), float(delta), rounds, clients, min_survivors, dim, float(clip), mechanism)
    gaussian_mse = (_gaussian_multiplier(p.target, p.delta, rounds) * p.clip) ** 2
    spec = _choose(p, bits, gaussian_mse)
    sensitivity = spec.norm_bound(dim)
    return DpPlan(
        spec=spec,
        epsilon=spec_epsilon(spec, dim, min_survivors, rounds, delta),
        target_epsilon=float(epsilon),
        delta=float(delta),
        rounds=rounds,
        clients=clients,
        min_survivors=min_survivors,
        dim=dim,
        noise_multiplier=math.sqrt(min_survivors) * spec.noise_std / sensitivity,
        expected_mse=_expected_mse(spec, min_survivors),
        gaussian_mse=gaussian_mse,
        wrap_probability=spec.wrap_probability(clients, dim),
    )
