"""CKKS parameter presets, the HE-standard security check and the error-bound formulas.

Every preset is checked against the homomorphic-encryption standard's table (Albrecht et al.,
"Homomorphic Encryption Security Standard", 2018, Table 1, uniform ternary secret, classical
attacks; the same numbers SEAL ships in ``hestdparms.h``) *before* TenSEAL is called, because SEAL's
own refusal only says "encryption parameters are not set correctly".

Error model (SEAL 4.x, asymmetric CKKS encryption as TenSEAL calls it). A client encrypts at the key
level ``q0 * p`` and divides by the special prime ``p`` with rounding, so the noise left in one fresh
ciphertext is ``r0 + r1*s + (v*e + e0 + e1*s)/p`` with ``r0, r1`` the rounding errors (coefficients
in [-1/2, 1/2]), ``s`` the ternary secret and ``v, e, e0, e1`` the encryption randomness (centred
binomial, |.| <= 21). One slot of the canonical embedding is ``sigma_j(r0) + sigma_j(r1)
sigma_j(s) + ...``. With kappa = 64 and ``M = 2^32`` slots in a round, n summands and ring degree N:

* key term (Hoeffding over the N ternary coefficients, union over N/2 slots, Re and Im)::

      |sigma_j(s)|^2 <= K = 2 N (ln(2N) + kappa ln 2)

* rounding term (Hoeffding over the 2 n N independent rounding errors given s, union over M)::

      R(n) = sqrt( n (N/2) (1 + K) (ln M + kappa ln 2) / 2 )

* deterministic terms: encoding rounding ``n N / 2`` and the divided fresh noise
  ``n N (2N + 1) 21 / p``; double-precision FFT error of encoding and decoding
  ``F(B) = 8 log2(2N) sqrt(N) 2^-53 B`` for slot magnitudes up to B.

So with scale Delta, one slot of the decrypted sum of n ciphertexts is off by at most::

      noise(n) = (R(n) + n N / 2 + n N (2N + 1) 21 / p) / Delta + F(B)

except with probability <= 2 * 2^-64 per round (the usual heuristic that rounding errors are
independent and uniform). The absolute worst case, every rounding error aligned, is
``n (N/2 + N^2/2 + N/2 + N (2N + 1) 21 / p) / Delta + F(B)``: :func:`worst_case_noise`.

The protocol quantises every input to the grid ``2^-g`` and picks g so that ``noise(n) < 2^-(g+1)``:
rounding the decryption to the grid then returns the exact sum of the quantised inputs, and the only
error left is the clients' stochastic rounding, at most ``n 2^-g`` on the weighted sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ParameterError

__all__ = [
    "HE_STANDARD_MAX_BITS",
    "CkksPreset",
    "ADDITION_128",
    "PRECISION_128",
    "PRESETS",
    "check_security",
    "key_term",
    "noise_bound",
    "worst_case_noise",
    "fp_bound",
    "KAPPA",
    "MAX_SLOTS_LOG2",
]

KAPPA = 64
"""Statistical security of the noise bound: it fails with probability at most 2 * 2^-KAPPA."""
MAX_SLOTS_LOG2 = 32
"""The bound holds simultaneously for up to 2^32 slots (chunks * N/2) in one round."""
_CBD_MAX = 21
_PRIME_BITS = (20, 60)

HE_STANDARD_MAX_BITS: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
"""security level -> ring degree N -> largest total coefficient-modulus bits (ternary secret)."""


def check_security(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...], security_bits: int) -> None:
    """Refuse parameters that the HE standard does not rate at ``security_bits``.

    Raises:
        ParameterError: unknown level or degree, a prime size SEAL cannot make, no special prime,
            or a total modulus above the standard's bound for this degree and level.
    """
    table = HE_STANDARD_MAX_BITS.get(security_bits)
    if table is None:
        raise ParameterError(f"security level {security_bits} is not in the HE standard; use 128, 192 or 256")
    if poly_modulus_degree not in table:
        raise ParameterError(f"ring degree {poly_modulus_degree} is not in the HE standard; use one of {sorted(table)}")
    if len(coeff_mod_bit_sizes) < 2:
        raise ParameterError("need at least one data prime and one special prime (key level)")
    if any(not _PRIME_BITS[0] <= b <= _PRIME_BITS[1] for b in coeff_mod_bit_sizes):
        raise ParameterError(f"every prime must have {_PRIME_BITS[0]}..{_PRIME_BITS[1]} bits")
    total, limit = sum(coeff_mod_bit_sizes), table[poly_modulus_degree]
    if total > limit:
        raise ParameterError(
            f"a {total}-bit modulus with N={poly_modulus_degree} is below {security_bits}-bit security "
            f"(the HE standard allows at most {limit} bits): drop primes or double N"
        )


@dataclass(frozen=True)
class CkksPreset:
    """A named, checked CKKS parameter set.

    Args:
        name: identifier used on the command line and bound into the session.
        poly_modulus_degree: ring degree N; one ciphertext holds N/2 values.
        coeff_mod_bit_sizes: prime sizes; the last is the special (key-switching) prime.
        security_bits: the HE-standard level this set is checked against.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    security_bits: int

    def __post_init__(self) -> None:
        check_security(self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.security_bits)

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the ciphertext modulus q (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def special_bits(self) -> int:
        return self.coeff_mod_bit_sizes[-1]

    @property
    def ciphertext_bytes(self) -> int:
        """Raw size of one fresh ciphertext: 2 polynomials of N words per data prime."""
        return 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1) * 8

    @property
    def bytes_per_value(self) -> float:
        return self.ciphertext_bytes / self.slots


ADDITION_128 = CkksPreset("addition-128", 4096, (60, 49), 128)
"""One 60-bit data prime, 109-bit modulus: ~32 bytes per value, 128-bit secure, additions only."""
PRECISION_128 = CkksPreset("precision-128", 8192, (60, 60, 60), 128)
"""Two data primes (120-bit q): noise never limits the grid, ~64 bytes per value, 128-bit secure."""
PRESETS: dict[str, CkksPreset] = {p.name: p for p in (ADDITION_128, PRECISION_128)}


def key_term(n_degree: int) -> float:
    """K: bound on |sigma_j(s)|^2 for every slot j, failing with probability <= 2^-KAPPA."""
    return 2.0 * n_degree * (math.log(2 * n_degree) + KAPPA * math.log(2))


def _rounding_term(preset: CkksPreset, summands: int) -> float:
    n_degree = preset.poly_modulus_degree
    spread = summands * (n_degree / 2) * (1.0 + key_term(n_degree))
    return math.sqrt(spread * (MAX_SLOTS_LOG2 + KAPPA) * math.log(2) / 2.0)


def _deterministic_term(preset: CkksPreset, summands: int) -> float:
    n_degree = preset.poly_modulus_degree
    special_prime_min = 2.0 ** (preset.special_bits - 1)
    fresh = n_degree * (2 * n_degree + 1) * _CBD_MAX / special_prime_min
    return summands * (n_degree / 2 + fresh)


def fp_bound(preset: CkksPreset, magnitude: float) -> float:
    """F(B): double-precision FFT error of encoding plus decoding slots of magnitude <= B."""
    n_degree = preset.poly_modulus_degree
    return 8 * math.log2(2 * n_degree) * math.sqrt(n_degree) * 2.0**-53 * magnitude


def noise_bound(preset: CkksPreset, summands: int, log_scale: int, magnitude: float) -> float:
    """noise(n): bound on |decrypted slot - encrypted slot sum| after ``summands`` additions.

    Args:
        summands: n, the number of fresh ciphertexts added.
        log_scale: log2 of the CKKS scale Delta.
        magnitude: B, a bound on every slot of the sum.
    """
    if summands < 1:
        raise ParameterError("need at least one summand")
    coeff = _rounding_term(preset, summands) + _deterministic_term(preset, summands)
    return coeff / 2.0**log_scale + fp_bound(preset, magnitude)


def worst_case_noise(preset: CkksPreset, summands: int, log_scale: int, magnitude: float) -> float:
    """The absolute worst case: every rounding error aligned (no probabilistic argument)."""
    n_degree = preset.poly_modulus_degree
    aligned = summands * (n_degree / 2) * (n_degree + 1)
    coeff = aligned + _deterministic_term(preset, summands)
    return coeff / 2.0**log_scale + fp_bound(preset, magnitude)
