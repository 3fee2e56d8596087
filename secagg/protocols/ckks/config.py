"""The public, validated parameters of one CKKS aggregation session.

Every relation the correctness argument needs is checked on construction: the largest possible sum
fits the modulus with room to spare, and the CKKS noise of ``num_clients`` summands stays below half
a grid step (so grid rounding after decryption is exact, see :mod:`.presets`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field

from ...encoding import FixedPoint, Schema
from ...errors import ParameterError
from .presets import ADDITION_128, CkksPreset, noise_bound

__all__ = ["CkksConfig", "MAX_GRID_BITS", "MIN_GRID_BITS"]

MAX_GRID_BITS = 40
"""Finer grids would be lost in double-precision FFT error (53-bit mantissa)."""
MIN_GRID_BITS = 4
_MODULUS_MARGIN_BITS = 3


@dataclass(frozen=True)
class CkksConfig:
    """Public parameters of one CKKS session, identical at the server and every client.

    Args:
        num_clients: n; client ids are ``0 .. n-1``. The most summands the noise bound must cover.
        schema: layout of every update (see :class:`~secagg.encoding.Schema`).
        preset: the CKKS parameter set (:data:`~.presets.ADDITION_128` by default).
        committee: ids of the key-holding clients; the first one that advertises generates the key.
            Defaults to the first ``min(3, n)`` clients.
        clip_bound: c; every coordinate is clipped to [-c, c] before encryption.
        max_weight: W; integer weights lie in [1, W].
        min_contributors: a key holder refuses to decrypt a sum of fewer inputs (a sum of one input
            is that input). Defaults to ``min(2, n)``.
        fractional_bits: g, the grid 2^-g; ``None`` picks the finest grid the noise bound allows.
    """

    num_clients: int
    schema: Schema
    preset: CkksPreset = ADDITION_128
    committee: tuple[int, ...] = ()
    clip_bound: float = 8.0
    max_weight: int = 1
    min_contributors: int = 0
    fractional_bits: int | None = None
    encoding: FixedPoint = field(init=False)

    def __post_init__(self) -> None:
        n = self.num_clients
        if not 1 <= n <= 2**31 - 2:
            raise ParameterError(f"num_clients must be in [1, 2^31 - 2], got {n}")
        committee = tuple(sorted(set(self.committee))) or tuple(range(min(3, n)))
        if any(not 0 <= c < n for c in committee):
            raise ParameterError(f"committee members must be client ids in [0, {n})")
        object.__setattr__(self, "committee", committee)
        minimum = self.min_contributors or min(2, n)
        if not 1 <= minimum <= n:
            raise ParameterError(f"min_contributors must be in [1, {n}], got {minimum}")
        object.__setattr__(self, "min_contributors", minimum)
        if not (math.isfinite(self.clip_bound) and self.clip_bound > 0) or self.max_weight < 1:
            raise ParameterError("clip_bound must be positive and finite, max_weight at least 1")
        if self.log_scale < 20:
            raise ParameterError(
                f"n * W * c = {self.magnitude:g} leaves a scale of 2^{self.log_scale} in the "
                f"{self.preset.data_bits}-bit modulus of {self.preset.name}: use a preset with more data bits"
            )
        finest = self.finest_grid_bits()
        bits = finest if self.fractional_bits is None else self.fractional_bits
        if bits > finest or bits < MIN_GRID_BITS:
            raise ParameterError(
                f"fractional_bits must be in [{MIN_GRID_BITS}, {finest}] for n={n}, W={self.max_weight}, "
                f"c={self.clip_bound} with {self.preset.name}: the CKKS noise must stay below half a grid step"
            )
        object.__setattr__(self, "fractional_bits", bits)
        object.__setattr__(self, "encoding", FixedPoint(self.clip_bound, bits, self.max_weight, n))

    @property
    def magnitude(self) -> float:
        """B: a bound on every slot of any sum (values n*W*c, the weight slot n*W)."""
        return self.num_clients * self.max_weight * max(self.clip_bound, 1.0)

    @property
    def log_scale(self) -> int:
        """log2 of the CKKS scale Delta: B * Delta stays 2^3 below the data modulus."""
        return self.preset.data_bits - _MODULUS_MARGIN_BITS - math.ceil(math.log2(self.magnitude * 2))

    @property
    def grid_bits(self) -> int:
        assert self.fractional_bits is not None
        return self.fractional_bits

    def finest_grid_bits(self) -> int:
        """The largest g with noise(num_clients) < 2^-(g+1), capped at :data:`MAX_GRID_BITS`."""
        noise = self.noise_bound(self.num_clients)
        bits = math.floor(-math.log2(2 * noise))
        while bits > 0 and 2.0 ** -(bits + 1) <= noise:
            bits -= 1
        return min(MAX_GRID_BITS, bits)

    def noise_bound(self, summands: int) -> float:
        """Bound on |decrypted - encrypted| per slot for a sum of ``summands`` ciphertexts."""
        return noise_bound(self.preset, summands, self.log_scale, self.magnitude)

    @property
    def slots(self) -> int:
        return self.preset.slots

    @property
    def dim(self) -> int:
        """Values per encrypted input: the schema's values plus the weight slot."""
        return self.schema.size + 1

    @property
    def chunks(self) -> int:
        """Ciphertexts per input: the flat buffer split into slot-sized chunks."""
        return -(-self.dim // self.slots)

    @property
    def protocol(self) -> str:
        return "ckks"

    def digest(self) -> bytes:
        """SHA-256 over every public parameter; bound into the session id."""
        p = self.preset
        fields = struct.pack(
            "<IIdIII", self.num_clients, p.poly_modulus_degree, self.clip_bound, self.max_weight,
            self.min_contributors, self.grid_bits,
        )
        text = f"{p.name}|{list(p.coeff_mod_bit_sizes)}|{p.security_bits}|{list(self.committee)}".encode()
        return hashlib.sha256(b"secagg/v1/ckks-config\x00" + fields + text + self.schema.digest()).digest()
