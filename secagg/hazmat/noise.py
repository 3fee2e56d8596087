"""Gaussian noise from a cryptographic source (AES-256-CTR keyed from the OS CSPRNG).

Security assumption: the keystream is indistinguishable from uniform, so the noise is unpredictable
to anyone without the per-call key. This is the continuous (floating-point) Gaussian: it is not
hardened against floating-point attacks on DP (Mironov, CCS'12); use discrete noise in the integer
domain for a formal guarantee.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from .prg import MaskStream
from .random import RandomSource, system_random

__all__ = ["gaussian"]

_TWO_POW_53 = float(1 << 53)


def gaussian(count: int, std: float, random: RandomSource = system_random) -> np.ndarray:
    """``count`` independent N(0, std^2) samples (float64) by the Box-Muller transform.

    Uniforms have 53 random bits each and lie in (0, 1], so the logarithm is always finite.
    """
    if count < 0 or not np.isfinite(std) or std < 0:
        raise ParameterError("count must be >= 0 and std a finite non-negative number")
    pairs = (count + 1) // 2
    words = np.empty(2 * pairs, dtype=np.uint64)
    MaskStream(random(32)).fill(words)
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 1.0) / _TWO_POW_53
    radius = np.sqrt(-2.0 * np.log(uniform[:pairs]))
    angle = 2.0 * np.pi * uniform[pairs:]
    samples = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return samples * std
