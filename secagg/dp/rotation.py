"""A seeded random rotation of R^d (no padding): random signs, then an orthonormal transform with
small entries: the normalised Walsh-Hadamard transform when d is a power of two, else the
orthonormal DCT-II (entries at most sqrt(2/d): a coordinate's variance proxy is at most twice the
Hadamard one, half a bit of ring, instead of up to twice the length on the wire).

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

__all__ = ["rotated_dim", "coherence", "rotate", "unrotate"]

_LABEL = b"dp-rotation"


def rotated_dim(d: int) -> int:
    """Coordinates of a rotated vector of ``d`` values: ``d`` (the rotation needs no padding)."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ParameterError("the dimension must be a positive integer")
    return int(d)


def _power_of_two(d: int) -> bool:
    return d & (d - 1) == 0


def coherence(d: int) -> float:
    """The largest squared entry of the transform of dimension ``d``: 1/d (Hadamard, d a power of
    two) or 2/d (DCT-II). A rotated coordinate of x is then sub-Gaussian with variance proxy at
    most ``coherence(d) * |x|^2`` over the random signs (Hoeffding)."""
    n = rotated_dim(d)
    return 1.0 / n if _power_of_two(n) else 2.0 / n


def _transform(v: np.ndarray, inverse: bool) -> np.ndarray:
    if _power_of_two(v.size):
        return _hadamard(v)  # its own inverse
    from scipy.fft import dct, idct  # the dp extra; only non-power-of-two dimensions need it

    out: np.ndarray = (idct if inverse else dct)(v, type=2, norm="ortho")
    return out


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
    """``F D x``: ``D`` holds seeded random signs, ``F`` is orthonormal (Hadamard or DCT-II).

    Guarantees: float64 of length ``len(x)``, L2 norm equal to ``x``'s up to rounding (``F`` is
    orthogonal), deterministic in ``seed``; :func:`unrotate` inverts it.
    Does not: hide ``x`` (it is a public linear map).
    """
    v = _as_vector(x, "x")
    return _transform(v * _signs(seed, v.size), inverse=False)


def unrotate(y: np.ndarray, seed: bytes, dim: int) -> np.ndarray:
    """``D F^T y``: the inverse of :func:`rotate` (``D`` is an involution, ``F`` orthogonal).

    Raises:
        ParameterError: ``len(y)`` is not ``rotated_dim(dim)``.
    """
    v = _as_vector(y, "y")
    n = rotated_dim(dim)
    if v.size != n:
        raise ParameterError(f"expected {n} rotated coordinates for dimension {dim}, got {v.size}")
    out: np.ndarray = _transform(v, inverse=True) * _signs(seed, n)
    return out
