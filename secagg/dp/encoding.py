"""Distributed DP as a SecAgg encoding: what the parties do with a :class:`~secagg.dp.spec.DpSpec`.

A client L2-clips its update, rotates it (random signs from the session's setup id, which the server
also knows, then Walsh-Hadamard or DCT-II: :mod:`secagg.dp.rotation`), scales, rounds conditionally and adds its share of discrete noise, all
in integers; the ring Z_{2^bits} wraps the result. Masking then hides it as any other input, so the
unmasked sum carries exactly the survivors' noise and nobody ever sees a noiseless sum. The server
interprets the ring sum as signed, divides by the scale and undoes the rotation.

Weights are fixed to 1: client-level DP bounds each client's contribution by the L2 clip, and a
weight would multiply it. What it guarantees and what it does not: SECURITY.md, "Distributed
differential privacy".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..encoding import word_dtype
from ..errors import ParameterError
from ..hazmat.random import RandomSource, system_random
from .rotation import rotated_dim

if TYPE_CHECKING:  # the spec's samplers need the dp extra (scipy); the config only holds one
    from .spec import DpSpec

__all__ = ["DpEncoding", "TAIL_BITS", "survivor_floor"]

TAIL_BITS = 40
"""``error_bound`` under DP holds except with probability 2^-TAIL_BITS per coordinate (noise is unbounded)."""


def survivor_floor(num_clients: int, threshold: int, dropout_fraction: float, corrupt: int) -> tuple[int, int]:
    """(the fewest survivors a DP round releases with, the fewest honest ones among them).

    The floor is the survivors the threat model expects, n - floor(dropout * n), and never below the
    protocol's threshold; clients enforce it (:class:`DpEncoding`). The accountant and the planner
    use the honest count: corrupt clients may leave their noise out.
    """
    floor = max(threshold, num_clients - int(dropout_fraction * num_clients))
    return floor, max(1, floor - corrupt)


@dataclass(frozen=True)
class DpEncoding:
    """The encoding of a SecAgg config with distributed DP (in place of :class:`FixedPoint`).

    Args:
        spec: the mechanism, clip, scale, per-client noise and ring width (see :mod:`secagg.dp.plan`).
        dim: the caller's number of values (the schema size); rotated without padding.
        max_clients: the most inputs summed in one session.
        min_survivors: the fewest inputs a sum may be released with: honest clients refuse to unmask
            a smaller survivor set, so every released sum carries the noise of at least
            ``min_survivors - corrupt`` honest clients (the count the accountant must use).
    """

    spec: DpSpec
    dim: int
    max_clients: int
    min_survivors: int = 1

    def __post_init__(self) -> None:
        if self.dim < 1 or self.max_clients < 1:
            raise ParameterError("a DP encoding needs dim >= 1 and max_clients >= 1")
        if not 1 <= self.min_survivors <= self.max_clients:
            raise ParameterError(f"min_survivors={self.min_survivors} must be in [1, {self.max_clients}]")

    # -- the FixedPoint interface the parties use -------------------------------------------------
    @property
    def modulus_bits(self) -> int:
        return self.spec.bits

    @property
    def dtype(self) -> np.dtype:
        return word_dtype(self.spec.bits)

    @property
    def ring_mask(self) -> int:
        return (1 << self.spec.bits) - 1

    @property
    def clip_bound(self) -> float:
        """The L2 clip of a whole update (not a per-coordinate clip)."""
        return self.spec.l2_clip

    @property
    def fractional_bits(self) -> int:
        return 0  # the scale is spec.scale, not a power of two

    @property
    def max_weight(self) -> int:
        return 1

    @property
    def rotated_dim(self) -> int:
        return rotated_dim(self.dim)

    @property
    def words(self) -> int:
        """Ring words per input: the rotated vector and the weight word."""
        return self.rotated_dim + 1

    def check_weight(self, weight: int) -> int:
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or int(weight) != 1:
            raise ParameterError("under distributed DP every weight is 1 (client-level DP)")  # never the weight
        return 1

    def encode(self, values: np.ndarray, seed: bytes, random: RandomSource = system_random) -> np.ndarray:
        """A client's noisy ring words (weight word 1 last), rotated with ``seed`` (the setup id)."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.shape != (self.dim,):
            raise ParameterError(f"expected {self.dim} values, got {flat.shape}")
        if not np.isfinite(flat).all():
            raise ParameterError("the update holds NaN or infinite values")
        signed = self.spec.encode(flat, seed, random)
        out = np.empty(self.words, dtype=self.dtype)
        np.bitwise_and(signed.astype(np.uint64), np.uint64(self.ring_mask), out=out[:-1], casting="unsafe")
        out[-1] = 1
        return out

    def check_encoded(self, words: np.ndarray) -> int:
        """Words claimed to be :meth:`encode`'s output: inside the ring, weight word 1.

        The noise makes any ring value possible, so values are not bounded here; the ring width
        was planned so the sum wraps with probability below 2^-40 per coordinate.
        """
        if self.modulus_bits < 8 * words.dtype.itemsize and (words > self.ring_mask).any():
            raise ParameterError("encoded input holds values outside the ring")
        return self.check_weight(int(words[-1]))

    def signed(self, total: np.ndarray) -> np.ndarray:
        words = total.astype(np.uint64) & np.uint64(self.ring_mask)
        out = words.astype(np.int64)
        if self.modulus_bits < 64:
            out[words >= (1 << (self.modulus_bits - 1))] -= 1 << self.modulus_bits
        return out

    def decode(self, total: np.ndarray, seed: bytes = b"") -> tuple[np.ndarray, int]:
        """(the noisy sum of the clipped updates, the number of inputs) from a ring sum."""
        signed = self.signed(total)
        return self.spec.decode(signed[:-1], seed, self.dim), int(signed[-1])

    def average_error_bound(self, survivors: int, weight_sum: int) -> float:
        """Bound on |average - exact average of the L2-clipped inputs| per coordinate that holds
        except with probability 2^-40: the survivors' noise and rounding are sub-Gaussian with
        variance n (sigma^2 + 1/4) in integer units (the rotation is orthonormal)."""
        tail = math.sqrt(2.0 * math.log(2.0 * 2.0**TAIL_BITS))
        std = math.sqrt(survivors * (self.spec.noise_std**2 + 0.25))
        return tail * std / self.spec.scale / max(weight_sum, 1)

    def summary(self) -> dict[str, Any]:
        return {"mechanism": self.spec.mechanism, "bits": self.spec.bits, "scale": self.spec.scale,
                "noise_std_per_client": self.spec.noise_std, "l2_clip": self.spec.l2_clip}
