"""Vectorised Shamir t-of-n secret sharing of byte strings over GF(2^31 - 1).

Each secret is cut into 16-bit chunks; every chunk is an independent field element shared with its
own random polynomial, so all secrets of a party split (and later reconstruct) in a handful of numpy
operations. Security assumption: coefficients are uniform (from the injected CSPRNG); then any t-1
shares are independent of the secret (information-theoretic).

Reconstruction through a random wrong share is detected with overwhelming probability (every chunk
of a genuine secret is < 2^16, a wrong one is near-uniform in the field). A crafted small error can
pass this check, so protocols must also verify each reconstructed secret (SecAgg checks a seed
commitment or the advertised public key).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import IntegrityError, ParameterError
from .random import RandomSource, system_random

__all__ = ["PRIME", "CHUNK_BYTES", "MAX_X", "split", "reconstruct", "lagrange_at_zero", "share_bytes", "consistent_holders",
           "lagrange_at_zero_many", "reconstruct_many"]

PRIME = (1 << 31) - 1
CHUNK_BYTES = 2
MAX_X = PRIME - 1
_CHUNK_LIMIT = 1 << (8 * CHUNK_BYTES)


def share_bytes(secret_bytes: int) -> int:
    """Size in bytes of one share of a secret of ``secret_bytes`` bytes."""
    return 4 * (-(-secret_bytes // CHUNK_BYTES))


def _uniform_field(count: int, random: RandomSource) -> np.ndarray:
    """``count`` uniform elements of GF(PRIME) by rejection sampling 31-bit words."""
    out = np.frombuffer(random(4 * count), dtype="<u4").astype(np.int64) & 0x7FFFFFFF
    bad = out == PRIME
    while bad.any():  # probability 2^-31 per element
        redo = np.frombuffer(random(4 * int(bad.sum())), dtype="<u4").astype(np.int64) & 0x7FFFFFFF
        out[bad] = redo
        bad = out == PRIME
    return out


def _to_chunks(secrets: Sequence[bytes]) -> np.ndarray:
    length = len(secrets[0])
    if length == 0 or length % CHUNK_BYTES or any(len(s) != length for s in secrets):
        raise ParameterError(f"secrets must share one non-zero length divisible by {CHUNK_BYTES}")
    raw = np.frombuffer(b"".join(secrets), dtype="<u2")
    return raw.reshape(len(secrets), length // CHUNK_BYTES).astype(np.int64)


def split(
    secrets: Sequence[bytes],
    threshold: int,
    xs: Sequence[int],
    random: RandomSource = system_random,
) -> np.ndarray:
    """Share every secret t-of-len(xs) at the evaluation points ``xs``.

    Returns:
        int64 array of shape ``(len(xs), len(secrets), chunks)``: row i holds the shares for ``xs[i]``.
    Raises:
        ParameterError: bad threshold, repeated or out-of-range points, or ragged secrets.
    """
    if not secrets:
        raise ParameterError("nothing to share")
    points = np.asarray(list(xs), dtype=np.int64)
    if threshold < 1 or threshold > len(points):
        raise ParameterError(f"threshold {threshold} must be in [1, {len(points)}]")
    if len(set(points.tolist())) != len(points) or (points < 1).any() or (points > MAX_X).any():
        raise ParameterError("evaluation points must be distinct and in [1, PRIME - 1]")
    constant = _to_chunks(secrets)
    m, c = constant.shape
    coeffs = _uniform_field((threshold - 1) * m * c, random).reshape(threshold - 1, m, c)
    # Horner evaluation at all points at once: acc = a_{t-1}; acc = acc * x + a_j.
    x = points[:, None, None]
    acc = np.broadcast_to(coeffs[-1] if threshold > 1 else constant, (len(points), m, c)).copy()
    for j in range(threshold - 3, -2, -1):
        term = coeffs[j] if j >= 0 else constant
        acc = (acc * x + term) % PRIME
    return acc


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients for interpolating at zero from the points ``xs`` (cached per set)."""
    coefficients = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        if den == 0:
            raise ParameterError("evaluation points must be distinct")
        coefficients.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return tuple(coefficients)


_BATCH_ELEMENTS = 1 << 21  # int64 temporaries per batch step (16 MiB)


def _inverse(values: np.ndarray) -> np.ndarray:
    """Elementwise inverse in GF(PRIME) of non-zero field elements (Fermat: a^(p-2), by squaring)."""
    result = np.ones_like(values)
    base = values % PRIME
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        exponent >>= 1
    return result


def lagrange_at_zero_many(xs: np.ndarray) -> np.ndarray:
    """:func:`lagrange_at_zero` of every row of an ``(m, t)`` array of points, vectorised.

    Identical rows are computed once. Products of two field elements fit in int64 (< 2^62).

    Raises:
        ParameterError: a row repeats a point, or a point is not in [1, PRIME - 1].
    """
    points = np.asarray(xs, dtype=np.int64)
    if points.ndim != 2 or ((points < 1) | (points > MAX_X)).any():
        raise ParameterError("points must be an (m, t) array of field elements in [1, PRIME - 1]")
    rows, inverse = np.unique(points, axis=0, return_inverse=True)
    g, t = rows.shape
    out = np.empty_like(rows)
    step = max(1, _BATCH_ELEMENTS // max(1, t * t))
    for start in range(0, g, step):
        x = rows[start : start + step]
        # lambda_i = prod_j x_j / (x_i * prod_{j != i} (x_j - x_i))
        total = np.ones(len(x), dtype=np.int64)
        den = x.copy()
        for j in range(t):
            total = total * x[:, j] % PRIME
            diff = (x[:, j][:, None] - x) % PRIME
            diff[:, j] = 1
            den = den * diff % PRIME
        if (den == 0).any():
            raise ParameterError("evaluation points must be distinct")
        out[start : start + step] = total[:, None] * _inverse(den) % PRIME
    lam: np.ndarray = out[inverse.reshape(-1)]
    return lam


def reconstruct_many(xs: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reconstruct` for many secrets at once, each from its own t points.

    Args:
        xs: ``(m, t)`` evaluation points, row s for secret s.
        shares: ``(m, t, chunks)``: secret s's share words from the points ``xs[s]``.
    Returns:
        ``(chunks, ok)``: the ``(m, chunks)`` recovered 16-bit chunks (uint16, little-endian bytes of
        the secret) and, per secret, whether every share was in the field and every chunk is a
        16-bit value (False: a share was wrong; that row of ``chunks`` means nothing).
    Raises:
        ParameterError: shapes or points are inconsistent.
    """
    arr = np.asarray(shares, dtype=np.int64)
    points = np.asarray(xs, dtype=np.int64)
    if arr.ndim != 3 or points.shape != arr.shape[:2]:
        raise ParameterError("shares must have shape (secrets, len(points), chunks)")
    lam = lagrange_at_zero_many(points)
    m, t, c = arr.shape
    totals = np.empty((m, c), dtype=np.int64)
    step = max(1, _BATCH_ELEMENTS // max(1, t * c))
    for start in range(0, m, step):
        block = arr[start : start + step]
        totals[start : start + step] = (lam[start : start + step, :, None] * (block % PRIME) % PRIME).sum(axis=1) % PRIME
    in_field = np.all(((arr >= 0) & (arr < PRIME)).reshape(m, -1), axis=1)
    ok: np.ndarray = np.logical_and(in_field, np.all(totals < _CHUNK_LIMIT, axis=1))
    return np.where(ok[:, None], totals, 0).astype("<u2"), ok


def reconstruct(xs: Sequence[int], shares: np.ndarray) -> list[bytes]:
    """Recover the secrets from exactly ``threshold`` shares.

    Args:
        xs: the evaluation points of the shares, one per row of ``shares``.
        shares: array of shape ``(len(xs), secrets, chunks)`` with entries in GF(PRIME).
    Raises:
        IntegrityError: a share was wrong (a recovered chunk is not a 16-bit value).
        ParameterError: shapes or points are inconsistent.
    """
    arr = np.asarray(shares, dtype=np.int64)
    if arr.ndim != 3 or arr.shape[0] != len(xs):
        raise ParameterError("shares must have shape (len(xs), secrets, chunks)")
    if ((arr < 0) | (arr >= PRIME)).any():
        raise IntegrityError("share out of field range")
    lam = np.asarray(lagrange_at_zero(tuple(int(x) for x in xs)), dtype=np.int64)
    total = ((lam[:, None, None] * arr) % PRIME).sum(axis=0) % PRIME
    if (total >= _CHUNK_LIMIT).any():
        raise IntegrityError("secret reconstruction failed")
    chunks = total.astype("<u2")
    return [row.tobytes() for row in chunks]


def _solve_mod(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """One solution x of ``matrix @ x = rhs`` over GF(PRIME), or None if there is none.

    Gauss-Jordan elimination with whole-row numpy operations; products of two field elements fit
    in int64 (< 2^62).
    """
    rows, cols = matrix.shape
    aug = np.concatenate([matrix % PRIME, (rhs % PRIME)[:, None]], axis=1).astype(np.int64)
    pivots: list[int] = []
    r = 0
    for col in range(cols):
        nonzero = np.flatnonzero(aug[r:, col]) + r
        if nonzero.size == 0:
            continue
        p = int(nonzero[0])
        aug[[r, p]] = aug[[p, r]]
        aug[r] = aug[r] * pow(int(aug[r, col]), PRIME - 2, PRIME) % PRIME
        factors = aug[:, col].copy()
        factors[r] = 0
        aug = (aug - (factors[:, None] * aug[r][None, :]) % PRIME) % PRIME
        pivots.append(col)
        r += 1
        if r == rows:
            break
    if (aug[r:, -1] != 0).any():
        return None
    x = np.zeros(cols, dtype=np.int64)
    for i, col in enumerate(pivots):
        x[col] = aug[i, -1]
    return x


def _poly_divide(num: list[int], den: list[int]) -> tuple[list[int], bool]:
    """Quotient of two polynomials over GF(PRIME) (lowest degree first) and whether it is exact."""
    num = list(num)
    inv = pow(den[-1], PRIME - 2, PRIME)
    quotient = [0] * max(1, len(num) - len(den) + 1)
    for i in range(len(num) - len(den), -1, -1):
        coef = num[i + len(den) - 1] * inv % PRIME
        quotient[i] = coef
        for j, d in enumerate(den):
            num[i + j] = (num[i + j] - coef * d) % PRIME
    return quotient, not any(num[: len(den) - 1])


def consistent_holders(xs: Sequence[int], shares: np.ndarray, threshold: int) -> list[int]:
    """Indices of the shares that lie on the polynomials the majority defines (Berlekamp-Welch).

    Args:
        xs: m distinct evaluation points; shares: shape ``(m, secrets, chunks)``.
    Returns:
        the rows consistent with every chunk's degree-(t-1) polynomial, when at most
        ``(m - t) // 2`` rows are wrong (the unique-decoding radius). With more wrong rows the
        result may be wrong or empty; callers verify what they reconstruct (e.g. a commitment).
    """
    arr = np.asarray(shares, dtype=np.int64)
    m = len(xs)
    in_field = np.all(((arr >= 0) & (arr < PRIME)).reshape(m, -1), axis=1).tolist()
    errors = (m - threshold) // 2
    if errors <= 0:
        return list(range(m))
    x = np.asarray(xs, dtype=np.int64) % PRIME
    powers = np.ones((m, errors + threshold), dtype=np.int64)
    for j in range(1, errors + threshold):
        powers[:, j] = powers[:, j - 1] * x % PRIME
    bad: set[int] = set()
    for column in arr.reshape(m, -1).T:
        y = column % PRIME
        # Q(x_i) - y_i * (e_0 + ... + e_{E-1} x_i^{E-1}) = y_i * x_i^E, Q of degree < E + t.
        left = np.concatenate([powers, (-(y[:, None] * powers[:, :errors]) % PRIME)], axis=1)
        right = y * (powers[:, errors - 1] * x % PRIME) % PRIME
        solution = _solve_mod(left, right)
        if solution is None:
            return []
        q = [int(v) for v in solution[: errors + threshold]]
        e = [int(v) for v in solution[errors + threshold :]] + [1]
        p, exact = _poly_divide(q, e)
        if not exact:
            return []
        values = np.zeros(m, dtype=np.int64)
        for coef in reversed(p):
            values = (values * x + coef) % PRIME
        bad.update(int(i) for i in np.flatnonzero(values != y))
    return [i for i in range(m) if i not in bad and in_field[i]]
