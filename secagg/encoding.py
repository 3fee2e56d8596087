"""Tensors and state dicts <-> one flat vector, and fixed-point quantisation into a ring Z_{2^b}.

:class:`Schema` records names, shapes and dtypes so the aggregate comes back in the caller's shape.
:class:`FixedPoint` clips, scales by 2^f, multiplies by an integer weight and rounds stochastically
(unbiased, random bits from an AES-CTR stream keyed from the CSPRNG) in exact arithmetic, so every
encoded coordinate provably lies in [-M, M], and picks the smallest modulus 2^b for which the sum of
``max_clients`` inputs can never wrap around.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping

import numpy as np

from . import defaults
from .errors import ParameterError
from .hazmat.prg import MaskStream
from .hazmat.random import RandomSource, system_random

__all__ = ["TensorSpec", "Schema", "FixedPoint", "word_dtype"]

_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
MAX_SCALED_BOUND = 1 << 48  # keeps every integer the rounding handles exact in float64 (< 2^53)
_BLOCK = 1 << 15  # values rounded per pass: bounds the temporaries and keeps them in cache
_VELTKAMP = 134217729.0  # 2^27 + 1: splits a float64 into two halves of at most 26 significant bits
_TWO_32 = 2.0**32


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def _dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if _is_torch(value):
        tensor = value.detach().to("cpu")
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return np.asarray(tensor.numpy())
    if isinstance(value, np.ndarray):
        return value
    raise ParameterError(f"tensor {name!r} is a {type(value).__name__}, not a torch tensor or numpy array")


@dataclass(frozen=True)
class Schema:
    """The layout of an update: an ordered list of tensor specs and the container kind.

    ``container`` is ``"mapping"`` (state dict), ``"sequence"`` (list of tensors) or ``"array"``.
    ``backend`` is ``"torch"`` or ``"numpy"``: :meth:`unflatten` returns tensors of that library.
    """

    specs: tuple[TensorSpec, ...]
    container: str
    backend: str
    size: int = field(init=False)

    def __post_init__(self) -> None:
        if self.container not in ("mapping", "sequence", "array"):
            raise ParameterError(f"unknown container {self.container!r}")
        for spec in self.specs:
            if spec.dtype not in _FLOAT_DTYPES:
                raise ParameterError(f"tensor {spec.name!r} has dtype {spec.dtype}; only floating point is aggregated")
        object.__setattr__(self, "size", sum(s.size for s in self.specs))

    @classmethod
    def of(cls, update: Any) -> Schema:
        """Describe ``update``: a mapping of name -> tensor, a sequence of tensors, or one array."""
        if isinstance(update, Mapping):
            items = [(str(k), v) for k, v in update.items()]
            container = "mapping"
        elif isinstance(update, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(update)]
            container = "sequence"
        else:
            items = [("", update)]
            container = "array"
        if not items:
            raise ParameterError("an update needs at least one tensor")
        backend = "torch" if _is_torch(items[0][1]) else "numpy"
        specs = []
        for name, value in items:
            if not (_is_torch(value) or isinstance(value, np.ndarray)):
                raise ParameterError(f"tensor {name!r} is a {type(value).__name__}, not a tensor")
            specs.append(TensorSpec(name, tuple(int(s) for s in value.shape), _dtype_name(value)))
        return cls(tuple(specs), container, backend)

    def digest(self) -> bytes:
        """SHA-256 of a canonical description; parties bind it into the session."""
        desc = [self.container, self.backend, [[s.name, list(s.shape), s.dtype] for s in self.specs]]
        return hashlib.sha256(json.dumps(desc, separators=(",", ":")).encode()).digest()

    def flatten(self, update: Any) -> np.ndarray:
        """One float64 vector of all tensors in schema order.

        Raises:
            ParameterError: the update does not match the schema, or holds NaN or infinity.
        """
        other = Schema.of(update)
        if other.specs != self.specs or other.container != self.container:
            raise ParameterError(_schema_mismatch(self, other))
        values = update.values() if isinstance(update, Mapping) else update
        if self.container == "array":
            values = [update]
        out = np.empty(self.size, dtype=np.float64)
        offset = 0
        for spec, value in zip(self.specs, values):
            arr = _as_numpy(value, spec.name).reshape(-1)
            out[offset : offset + spec.size] = arr
            offset += spec.size
        if not np.isfinite(out).all():
            raise ParameterError("update holds NaN or infinity")  # not where: that is about the values
        return out

    def unflatten(self, vector: np.ndarray) -> Any:
        """Rebuild the caller's container from a flat vector (cast to each tensor's dtype)."""
        if vector.shape != (self.size,):
            raise ParameterError(f"expected a vector of {self.size} values, got shape {vector.shape}")
        tensors = []
        offset = 0
        for spec in self.specs:
            part = vector[offset : offset + spec.size].reshape(spec.shape)
            offset += spec.size
            tensors.append(self._make(part, spec))
        if self.container == "array":
            return tensors[0]
        if self.container == "sequence":
            return tensors
        return {spec.name: t for spec, t in zip(self.specs, tensors)}

    def _make(self, part: np.ndarray, spec: TensorSpec) -> Any:
        if self.backend == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(part)).to(getattr(torch, spec.dtype))
        if spec.dtype == "bfloat16":
            return part.astype(np.float32)
        return part.astype(spec.dtype)


def _schema_mismatch(expected: Schema, got: Schema) -> str:
    if got.container != expected.container:
        return f"update is a {got.container}, the session expects a {expected.container}"
    exp = {s.name: s for s in expected.specs}
    for spec in got.specs:
        if spec.name not in exp:
            return f"unexpected tensor {spec.name!r}"
        if exp[spec.name] != spec:
            e = exp[spec.name]
            return f"tensor {spec.name!r} is {spec.dtype}{list(spec.shape)}, expected {e.dtype}{list(e.shape)}"
    missing = [s.name for s in expected.specs if s.name not in {g.name for g in got.specs}]
    if missing:
        return f"missing tensor {missing[0]!r}"
    return "tensor order differs from the session schema"


def _split(x: np.ndarray | float) -> tuple[Any, Any]:
    """Veltkamp's split: ``hi + lo == x`` exactly, each half with at most 26 significant bits."""
    c = _VELTKAMP * x
    hi = c - (c - x)
    return hi, x - hi


def _round_weighted(magnitude: np.ndarray, weight: int, bits: np.ndarray) -> np.ndarray:
    """Stochastically round y = ``weight * magnitude`` (|y| <= 2^48, either sign) to an integer.

    Returns floor(y) or ceil(y) as float64, never anything else: ``magnitude = whole + frac``
    exactly, ``weight * whole`` is an exact integer and Dekker's two-product gives ``weight * frac
    == prod + err`` exactly, so the floor of y is exact and an integral y has a fraction of exactly
    0, which never rounds up. (Partial products can underflow only for frac < 2^-900, where
    ``prod > 0`` still fixes the floor.) ``bits`` (uniform uint32) round up with probability
    ceil(frac(y) * 2^32) / 2^32.
    """
    whole: np.ndarray = np.floor(magnitude)
    frac = magnitude - whole  # exact
    if weight == 1:  # the common case needs no two-product
        whole += bits < frac * _TWO_32
        return whole
    prod = frac * weight
    frac_hi, frac_lo = _split(frac)
    w_hi, w_lo = _split(float(weight))
    err = ((frac_hi * w_hi - prod) + frac_hi * w_lo + frac_lo * w_hi) + frac_lo * w_lo
    base = np.floor(prod)
    above = prod - base  # exact
    # prod is rounded to nearest: floor(weight * frac) is base, or base - 1 when prod is an integer
    # that the exact product lies just below (err < 0); the fraction is then 1 + err.
    borrow = (above == 0) & (err < 0)
    phi = above + err
    phi += borrow
    phi *= _TWO_32
    result: np.ndarray = whole * weight + base
    result -= borrow
    result += bits < phi  # phi == 0 exactly when weight * magnitude is an integer
    return result


def word_dtype(bits: int) -> np.dtype:
    """The smallest unsigned machine word holding ``bits`` bits."""
    for width in (8, 16, 32, 64):
        if bits <= width:
            return np.dtype(f"<u{width // 8}")
    raise ParameterError(f"{bits}-bit ring elements do not fit a machine word")


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding into Z_{2^b} that cannot overflow for ``max_clients`` summands.

    Args:
        clip_bound: public bound c; every coordinate is clipped to [-c, c].
        fractional_bits: f; values are scaled by 2^f before rounding.
        max_weight: W; integer weights lie in [1, W].
        max_clients: the most inputs that may ever be summed in one session.
    Raises:
        ParameterError: a relation fails (e.g. b > 64 bits, c * 2^f < 1).
    """

    clip_bound: float = defaults.CLIP_BOUND
    fractional_bits: int = defaults.FRACTIONAL_BITS
    max_weight: int = 1
    max_clients: int = defaults.MAX_CLIENTS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_bound) and self.clip_bound > 0):
            raise ParameterError("clip_bound must be a positive finite number")
        if not 0 <= self.fractional_bits <= 48:
            raise ParameterError("fractional_bits must be in [0, 48]")
        if self.max_weight < 1 or self.max_clients < 1:
            raise ParameterError("max_weight and max_clients must be at least 1")
        if self.clip_bound * 2.0**self.fractional_bits < 1:
            raise ParameterError("clip_bound * 2^fractional_bits must be >= 1: raise fractional_bits")
        if self.scaled_bound > MAX_SCALED_BOUND:
            raise ParameterError(
                f"clip_bound * max_weight * 2^fractional_bits = {self.scaled_bound} exceeds 2^48; "
                "lower fractional_bits, clip_bound or max_weight"
            )
        if self.modulus_bits > 64:
            raise ParameterError(
                f"the sum of {self.max_clients} inputs needs {self.modulus_bits} bits (> 64): "
                "lower max_clients, clip_bound, max_weight or fractional_bits"
            )

    @property
    def scaled_bound(self) -> int:
        """M = ceil(c * W * 2^f), in exact arithmetic: every encoded coordinate lies in [-M, M]."""
        return math.ceil(Fraction(self.clip_bound) * self.max_weight * (1 << self.fractional_bits))

    @property
    def modulus_bits(self) -> int:
        """Smallest b with 2^b > 2 * max_clients * M, so sums in [-nM, nM] are unambiguous."""
        return (2 * self.max_clients * self.scaled_bound).bit_length()

    @property
    def dtype(self) -> np.dtype:
        return word_dtype(self.modulus_bits)

    @property
    def ring_mask(self) -> int:
        return (1 << self.modulus_bits) - 1

    def check_weight(self, weight: int) -> int:
        """``weight`` as an int if it is an integer in ``[1, max_weight]``.

        Raises:
            ParameterError: it is not; the message names the bound, never the weight (a client's
                error text may reach the server, e.g. in a Flower error reply).
        """
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
            raise ParameterError("weights must be integers")
        if not 1 <= int(weight) <= self.max_weight:
            raise ParameterError(f"a weight is outside [1, max_weight = {self.max_weight}]")  # never the weight
        return int(weight)

    def quantize_into(self, values: np.ndarray, weight: int, noise: MaskStream, out: np.ndarray) -> None:
        """Encode ``values`` (float64, one chunk) into ``out`` (ring words), consuming ``noise``.

        Each coordinate becomes floor(y) or floor(y) + 1 for y = weight * clip(value) * 2^f, computed
        exactly, so ``|encoded| <= ceil(weight * c * 2^f) <= M`` by construction and the rounding
        error is below one grid step 2^-f. It rounds up with probability frac(y) rounded up to a
        multiple of 2^-32 (one uint32 of ``noise`` per coordinate), so E[decode] = clip(values) *
        weight to within 2^-32 of a grid step.

        Raises:
            ParameterError: a value is NaN or infinite.
        """
        for start in range(0, values.shape[0], _BLOCK):
            part = values[start : start + _BLOCK]
            if not np.isfinite(part).all():
                raise ParameterError("cannot encode NaN or infinity")
            scaled = np.clip(part, -self.clip_bound, self.clip_bound)
            scaled *= 2.0**self.fractional_bits  # exact: a power-of-two scaling of at most 2^48
            bits = np.empty(part.shape[0], dtype=np.uint32)
            noise.fill(bits)
            # floor(y) or floor(y) + 1 for any sign: within [-M, M] since floor(-M') >= -M and a
            # round-up happens only for non-integral y, where floor(y) + 1 = ceil(y) <= M.
            out[start : start + part.shape[0]] = _round_weighted(scaled, weight, bits).astype(np.int64)

    def encode(self, vector: np.ndarray, weight: int = 1, random: RandomSource = system_random) -> np.ndarray:
        """Quantise a whole flat vector; the weight is appended as one extra coordinate."""
        weight = self.check_weight(weight)
        out = np.empty(vector.shape[0] + 1, dtype=self.dtype)
        self.quantize_into(vector, weight, MaskStream(random(32)), out[:-1])
        out[-1] = weight
        np.bitwise_and(out, out.dtype.type(self.ring_mask), out=out)
        return out

    def check_encoded(self, words: np.ndarray) -> int:
        """Check words claimed to be :meth:`encode`'s output; returns their weight.

        The weight word must be in ``[1, max_weight]`` and every value word, read as a signed ring
        element, within ``[-ceil(w * c * 2^f), ceil(w * c * 2^f)]``: what clipping guarantees, so
        the overflow-freedom of the modulus holds for pre-encoded inputs too.

        Raises:
            ParameterError: a word is outside the ring, the weight is invalid, or a value is
                larger than the clip bound allows.
        """
        if self.modulus_bits < 8 * words.dtype.itemsize and (words > self.ring_mask).any():
            raise ParameterError("encoded input holds values outside the ring")
        weight = int(words[-1])
        if not 1 <= weight <= self.max_weight:
            raise ParameterError(f"the encoded weight is outside [1, max_weight = {self.max_weight}]")
        bound = math.ceil(Fraction(self.clip_bound) * weight * (1 << self.fractional_bits))
        signed = words[:-1].astype(np.uint64).astype(np.int64)
        if self.modulus_bits < 64:
            signed[signed >= (1 << (self.modulus_bits - 1))] -= 1 << self.modulus_bits
        if signed.size and (int(signed.min()) < -bound or int(signed.max()) > bound):
            raise ParameterError(f"an encoded value exceeds weight * clip_bound (clip_bound = {self.clip_bound}; "
                                 "encode with config.encoding.encode, which clips)")
        return weight

    def decode(self, total: np.ndarray, seed: bytes = b"") -> tuple[np.ndarray, int]:
        """Signed interpretation of a ring sum: (sum of weight * value, sum of weights).

        ``seed`` is unused (the DP encoding's rotation takes it; the signature is shared)."""
        words = total.astype(np.uint64) & np.uint64(self.ring_mask)
        signed = words.astype(np.int64)
        if self.modulus_bits < 64:
            signed[words >= (1 << (self.modulus_bits - 1))] -= 1 << self.modulus_bits
        return signed[:-1] / 2.0**self.fractional_bits, int(signed[-1])

    def average_error_bound(self, survivors: int, weight_sum: int) -> float:
        """Worst-case |aggregate average - exact average of clipped inputs| (rounding only)."""
        return survivors / (2.0**self.fractional_bits * max(weight_sum, 1))
