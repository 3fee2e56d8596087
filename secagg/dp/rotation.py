"""A seeded random rotation: random signs then the normalised Walsh-Hadamard transform.

Rotating before rounding and noising spreads a vector's energy evenly over the coordinates, so the
sum of clipped vectors has small coordinates (a narrower ring suffices) and rounding errors are
uniform. Every client and the server use the same public ``seed`` per round.

Security assumption: none for privacy (the seed may be public); the signs come from an AES-256-CTR
keystream keyed by ``derive_key(seed, b"dp-rotation")``, so they look independent of the data.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ParameterError
from ..hazmat.keys import derive_key
from ..hazmat.prg import MaskStream

__all__ = ["padded_dim", "rotate", "unrotate"]

_LABEL = b"dp-rotation"


def padded_dim(d: int) -> int:
    """The smallest power of two that is at least ``d`` (``d >= 1``)."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ParameterError("the dimension must be a positive integer")
    return 1 << (int(d) - 1).bit_length()


def _signs(seed: bytes, n: int) -> np.ndarray:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) < 16:
        raise ParameterError("the rotation seed must be at least 16 bytes")
    raw = np.empty((n + 7) // 8, dtype=np.uint8)
    MaskStream(derive_key(bytes(seed), _LABEL)).fill(raw)
    bits = np.unpackbits(raw, bitorder="little")[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _hadamard(x: np.ndarray) -> np.ndarray:
    """The normalised fast Walsh-Hadamard transform (orthogonal and its own inverse), O(n log n)."""
    n = x.shape[0]
    y = x.copy()
    h = 1
    while h < n:
        pairs = y.reshape(-1, 2, h)
        y = np.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), axis=1).reshape(n)
        h *= 2
    return y / math.sqrt(n)


def _as_vector(x: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ParameterError(f"{name} must be a non-empty 1-D array")
    if not np.all(np.isfinite(v)):
        raise ParameterError(f"{name} must be finite")
    return v


def rotate(x: np.ndarray, seed: bytes) -> np.ndarray:
    """``H D x`` for ``x`` zero-padded to ``padded_dim(len(x))``; ``D`` holds seeded random signs.

    Guarantees: float64 of length ``padded_dim(len(x))``, L2 norm equal to ``x``'s up to rounding
    (``H`` is orthogonal), deterministic in ``seed``; :func:`unrotate` inverts it.
    Does not: hide ``x`` (it is a public linear map).
    """
    v = _as_vector(x, "x")
    n = padded_dim(v.size)
    padded = np.zeros(n)
    padded[: v.size] = v
    return _hadamard(padded * _signs(seed, n))


def unrotate(y: np.ndarray, seed: bytes, dim: int) -> np.ndarray:
    """``(D H y)[:dim]``: the inverse of :func:`rotate` (``H`` and ``D`` are involutions).

    Raises:
        ParameterError: ``len(y)`` is not ``padded_dim(dim)``.
    """
    v = _as_vector(y, "y")
    n = padded_dim(dim)
    if v.size != n:
        raise ParameterError(f"expected {n} rotated coordinates for dimension {dim}, got {v.size}")
    out: np.ndarray = (_hadamard(v) * _signs(seed, n))[: int(dim)]
    return out
