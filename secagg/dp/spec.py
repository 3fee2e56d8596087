"""The distributed-DP parameters of a session and the client/server pipelines they define.

Client: clip to ``l2_clip``, rotate, multiply by ``scale``, round conditionally to the integer grid,
add integer noise (:meth:`DpSpec.encode`). The caller reduces the result modulo 2^bits and masks it;
the server unmasks the sum, reads it as signed and calls :meth:`DpSpec.decode`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from ..errors import ParameterError
from ..hazmat.random import RandomSource, system_random
from .rotation import coherence, rotate, rotated_dim, unrotate
from .rounding import conditional_round, rounded_norm_bound
from .samplers import MAX_SIGMA, MAX_VARIANCE, discrete_gaussian, skellam

__all__ = ["DpSpec", "MECHANISMS"]

MECHANISMS = ("ddgauss", "skellam")
_DIGEST_LABEL = b"secagg/v1/dp-spec\x00"
_MAX_STD = {"ddgauss": MAX_SIGMA, "skellam": math.sqrt(MAX_VARIANCE)}


@dataclass(frozen=True)
class DpSpec:
    """Distributed DP parameters shared by every client and the server of a session.

    Attributes:
        mechanism: ``"ddgauss"`` (distributed discrete Gaussian, KLS'21) or ``"skellam"`` (AKL'21).
        l2_clip: c, the L2 norm each client's vector is clipped to, in the caller's units.
        scale: s, integer units per caller unit (the grid step is 1/s).
        noise_std: each client's noise std in integer units (the discrete Gaussian's sigma
            parameter, whose true std is at most sigma; the Skellam variance is noise_std^2).
        bits: b, the ring width: sums live in [-2^(b-1), 2^(b-1)).
        beta: the conditional-rounding parameter of KLS (each rounding attempt fails w.p. <= beta).
    """

    mechanism: str
    l2_clip: float
    scale: float
    noise_std: float
    bits: int
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ParameterError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        for name in ("l2_clip", "scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ParameterError(f"{name} must be a finite positive number, got {value!r}")
        cap = _MAX_STD[self.mechanism]
        std = self.noise_std
        if not isinstance(std, (int, float)) or not math.isfinite(std) or not 0 < std <= cap:
            raise ParameterError(f"noise_std must be in (0, {cap:g}] for {self.mechanism}, got {std!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 64:
            raise ParameterError(f"bits must be an integer in [2, 64], got {self.bits!r}")
        if not isinstance(self.beta, (int, float)) or not 0 <= self.beta < 1:
            raise ParameterError(f"beta must be in [0, 1), got {self.beta!r}")

    def digest(self) -> bytes:
        """SHA-256 of a canonical encoding of every field (bind it into the session context).

        Guarantees: equal specs give equal digests; specs differing in any field (as float64 bits)
        give different digests except with negligible probability.
        """
        mech = self.mechanism.encode()
        body = struct.pack(">B", len(mech)) + mech + struct.pack(
            ">dddBd", float(self.l2_clip), float(self.scale), float(self.noise_std), self.bits, float(self.beta))
        return hashlib.sha256(_DIGEST_LABEL + body).digest()

    def norm_bound(self, dim: int) -> float:
        """The L2 sensitivity in integer units: KLS's bound after scaling and conditional rounding."""
        return rounded_norm_bound(self.l2_clip * self.scale, rotated_dim(dim), self.beta)

    def noise(self, count: int, random: RandomSource = system_random) -> np.ndarray:
        """``count`` samples of one client's noise (int64)."""
        if self.mechanism == "ddgauss":
            return discrete_gaussian(count, self.noise_std, random)
        return skellam(count, self.noise_std**2, random)

    def encode(self, values: np.ndarray, seed: bytes, random: RandomSource = system_random) -> np.ndarray:
        """The client pipeline: clip, rotate(seed), scale, round conditionally, add noise.

        Guarantees: int64 of length ``rotated_dim(len(values))`` whose noiseless part has L2 norm at
        most :meth:`norm_bound`; fresh noise from ``random`` on every call.
        Does not: reduce modulo 2^bits (the caller does) or check the ring is wide enough for the
        sum (see :meth:`wrap_probability`).

        Raises:
            ParameterError: ``values`` is not a finite non-empty 1-D array.
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
            raise ParameterError("values must be a finite non-empty 1-D array")
        norm = float(np.linalg.norm(v))
        if norm > self.l2_clip:
            v = v * (self.l2_clip / norm)
        scaled = rotate(v, seed) * self.scale
        rounded = conditional_round(scaled, self.norm_bound(v.size), random)
        out: np.ndarray = rounded + self.noise(rounded.size, random)
        return out

    def decode(self, total_signed: np.ndarray, seed: bytes, dim: int) -> np.ndarray:
        """The server side: the signed sum divided by ``scale`` and unrotated, trimmed to ``dim``.

        Guarantees: the exact inverse of the linear part of :meth:`encode` (float64 rounding only).
        Does not: interpret ring elements as signed (the caller does) or remove the noise.
        """
        total = np.asarray(total_signed)
        if total.ndim != 1:
            raise ParameterError("total_signed must be a 1-D array")
        return unrotate(total.astype(np.float64) / self.scale, seed, dim)

    def wrap_probability(self, clients: int, dim: int) -> float:
        """Upper bound on P(one coordinate of the sum of ``clients`` encodings leaves
        [-2^(b-1), 2^(b-1))), for honest inputs independent of the rotation seed.

        The sum is ``S + E + N`` per coordinate: ``S`` the rotated sum of clipped scaled inputs, a
        Rademacher sum with variance proxy ``(clients c s)^2 coherence(dim)`` (Hoeffding, worst case
        all inputs aligned); ``E`` the rounding errors, ``|E| < clients`` deterministically; ``N``
        the noise, ``clients * noise_std^2``-sub-Gaussian for ddgauss (CKS'20) and with the exact
        Skellam moment generating function ``exp(mu (cosh t - 1))`` for skellam. The bound is the
        two-sided Chernoff bound at ``T = 2^(b-1) - clients``. Per coordinate: no union bound.
        """
        if clients < 1:
            raise ParameterError("clients must be positive")
        threshold = 2.0 ** (self.bits - 1) - clients
        if threshold <= 0:
            return 1.0
        signal = (clients * self.l2_clip * self.scale) ** 2 * coherence(dim)
        noise_var = clients * self.noise_std**2
        if self.mechanism == "ddgauss":
            log_tail = -threshold**2 / (2.0 * (signal + noise_var))
        else:
            log_tail = _skellam_log_chernoff(threshold, signal, noise_var)
        return min(1.0, 2.0 * math.exp(log_tail))


def _skellam_log_chernoff(threshold: float, signal: float, mu: float) -> float:
    """min over t > 0 of ``t^2 signal / 2 + mu (cosh t - 1) - t threshold`` (a convex function)."""
    def slope(t: float) -> float:
        return t * signal + mu * math.sinh(t) - threshold

    high = math.asinh(threshold / mu)
    if signal > 0:
        high = min(high, threshold / signal)
    t = brentq(slope, 0.0, high) if slope(high) > 0 else high
    return t * t * signal / 2.0 + 2.0 * mu * math.sinh(t / 2.0) ** 2 - t * threshold
