"""The only module that calls TenSEAL: key generation, validated loading, chunk encrypt/decrypt.

Everything that comes from the wire (a context, a ciphertext) is parsed inside one ``try`` and then
checked against the preset: a parse failure or any mismatch raises :class:`IntegrityError`, never a
TenSEAL exception, so a hostile peer cannot crash a party. Before TenSEAL sees a ciphertext,
:func:`check_layout` requires the exact bytes TenSEAL writes for one fresh chunk: its metadata (the
``sizes`` list, the ciphertext count, the scale, SEAL's length header) is otherwise trusted by
TenSEAL, and e.g. ``sizes = [1024, 1024]`` over one ciphertext parses but decrypts to 1024 values.
CKKS ciphertexts carry no authentication: a client can always submit *some* valid ciphertext; the
key holder's grid check (see :mod:`.client`) is what catches a sum that is not a sum of honest
inputs.

Security assumption: SEAL's CKKS is IND-CPA under RLWE for the HE-standard parameters; SEAL draws
key and encryption randomness from its own CSPRNG (seeded from ``std::random_device``), which the
protocol's injectable :data:`~secagg.hazmat.random.RandomSource` does not replace.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Sequence

import numpy as np
import tenseal as ts

from ...errors import IntegrityError
from .presets import CkksPreset

__all__ = [
    "generate_context",
    "load_context",
    "check_layout",
    "load_ciphertexts",
    "encrypt_chunks",
    "decrypt_chunks",
    "serialize_all",
    "context_from_trusted",
    "SAVE_PUBLIC",
    "SAVE_SECRET",
]

SAVE_PUBLIC = {"save_public_key": True, "save_secret_key": False, "save_galois_keys": False, "save_relin_keys": False}
SAVE_SECRET = {"save_public_key": True, "save_secret_key": True, "save_galois_keys": False, "save_relin_keys": False}

# TenSEAL's CKKSVectorProto is (1) packed uint32 ``sizes``, (2) repeated bytes ``ciphertexts``,
# (3) double ``scale``; each ciphertext starts with SEAL's 16-byte header (magic, header size,
# version, compression, reserved, total size).
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E


def _make(preset: CkksPreset, log_scale: int) -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, preset.poly_modulus_degree, coeff_mod_bit_sizes=list(preset.coeff_mod_bit_sizes), n_threads=1
    )
    ctx.global_scale = 2.0**log_scale
    return ctx


def generate_context(preset: CkksPreset, log_scale: int) -> tuple[bytes, bytes]:
    """A fresh key: (secret context bytes, public context bytes); neither carries relin/Galois keys."""
    ctx = _make(preset, log_scale)
    return ctx.serialize(**SAVE_SECRET), ctx.serialize(**SAVE_PUBLIC)


@functools.lru_cache(maxsize=8)
def _reference_ids(preset: CkksPreset) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(key-level, data-level) parms ids SEAL derives from the preset (hashes of N and the primes)."""
    data = _make(preset, 20).seal_context().data
    return tuple(data.key_parms_id()), tuple(data.first_parms_id())


def context_from_trusted(data: bytes) -> ts.Context:
    """Load a context this party produced or already validated (worker processes)."""
    return ts.context_from(data, n_threads=1)


def load_context(data: bytes, preset: CkksPreset, log_scale: int, *, secret: bool) -> ts.Context:
    """Parse a context from the wire and check it is exactly the preset's, at the session's scale.

    Args:
        secret: True to require the secret key (key holders); False to require a public context.
    Raises:
        IntegrityError: unparsable, other parameters or scale, wrong key material, or extra keys.
    """
    try:
        ctx = ts.context_from(bytes(data), n_threads=1)
        sc = ctx.seal_context().data
        ids = (tuple(sc.key_parms_id()), tuple(sc.first_parms_id()))
        shape = (ctx.has_public_key(), ctx.has_secret_key(), ctx.has_relin_keys(), ctx.has_galois_keys())
        scale = ctx.global_scale
    except Exception:  # noqa: BLE001 - any TenSEAL/SEAL/protobuf failure is an integrity failure
        raise IntegrityError("malformed CKKS context") from None
    if ids != _reference_ids(preset) or scale != 2.0**log_scale:
        raise IntegrityError("CKKS context does not match the session's parameters")
    if shape != (True, secret, False, False):
        raise IntegrityError("CKKS context carries the wrong key material")
    return ctx


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: (value, position after it); at most 10 bytes."""
    value = 0
    for i in range(10):
        if pos + i >= len(data):
            break
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise IntegrityError("malformed CKKS ciphertext")


def check_layout(blob: bytes, preset: CkksPreset, log_scale: int) -> None:
    """Check that ``blob`` is laid out exactly as TenSEAL serializes one chunk of the session.

    That is ``sizes == [N/2]``, one ciphertext whose SEAL header is consistent with its length, and
    the session's scale, each field once, in order, canonically encoded, nothing else. Cheap (reads
    a few dozen bytes, no TenSEAL), so a key holder can run it before it spends its key.

    Raises:
        IntegrityError: any other layout (wrong or extra ``sizes``, no or several ciphertexts,
            truncation, another scale, trailing bytes).
    """
    view = memoryview(blob)
    slots = _varint(preset.slots)
    sizes = b"\x0a" + _varint(len(slots)) + slots
    scale = b"\x19" + struct.pack("<d", 2.0**log_scale)
    start = len(sizes) + 1
    ok = len(view) > start + _SEAL_HEADER.size + len(scale)
    ok = ok and view[: len(sizes)] == sizes and view[len(sizes)] == 0x12 and view[-len(scale) :] == scale
    if not ok:
        raise IntegrityError("malformed CKKS ciphertext")
    length, pos = _read_varint(view, start)
    canonical = view[start:pos] == _varint(length)
    if not canonical or length < _SEAL_HEADER.size or pos + length + len(scale) != len(view):
        raise IntegrityError("malformed CKKS ciphertext")
    magic, header_size, _major, _minor, _mode, reserved, total = _SEAL_HEADER.unpack_from(view, pos)
    if (magic, header_size, reserved, total) != (_SEAL_MAGIC, _SEAL_HEADER.size, 0, length):
        raise IntegrityError("malformed CKKS ciphertext")


def load_ciphertexts(ctx: ts.Context, blobs: Sequence[bytes], preset: CkksPreset, log_scale: int) -> list[Any]:
    """Parse chunk ciphertexts and check each is one fresh-shaped ciphertext of the session.

    Raises:
        IntegrityError: not laid out as :func:`check_layout` requires, unparsable, or not exactly
            one 2-polynomial NTT-form ciphertext at the data level with the session's scale and
            N/2 slots.
    """
    expected_ids = _reference_ids(preset)[1]
    primes = len(preset.coeff_mod_bit_sizes) - 1
    out = []
    for blob in blobs:
        check_layout(blob, preset, log_scale)
        try:
            vec = ts.ckks_vector_from(ctx, bytes(blob))
            inner = vec.ciphertext()
            ok = len(inner) == 1 and vec.size() == preset.slots
            c: Any = inner[0] if ok else None
            ok = ok and c.size() == 2 and c.is_ntt_form() and not c.is_transparent()
            ok = ok and c.coeff_modulus_size() == primes
            ok = ok and tuple(c.parms_id()) == expected_ids and c.scale == 2.0**log_scale
        except Exception:  # noqa: BLE001 - foreign parser
            raise IntegrityError("malformed CKKS ciphertext") from None
        if not ok:
            raise IntegrityError("CKKS ciphertext does not match the session's parameters")
        out.append(vec)
    return out


def encrypt_chunks(ctx: ts.Context, grid_bits: int, words: np.ndarray) -> list[bytes]:
    """Encrypt each row of ``words`` (int64 grid units, one row per chunk) as one ciphertext."""
    step = 2.0**-grid_bits
    return [ts.ckks_vector(ctx, row.astype(np.float64) * step).serialize() for row in words]


def decrypt_chunks(vectors: Sequence[Any], slots: int) -> np.ndarray:
    """Decrypt validated chunk vectors (their context holds the secret key) into (chunks, slots).

    Raises:
        IntegrityError: a chunk does not decrypt to exactly ``slots`` values.
    """
    out = np.empty((len(vectors), slots), dtype=np.float64)
    for i, vec in enumerate(vectors):
        try:
            values = vec.decrypt()
        except Exception:  # noqa: BLE001 - foreign library
            raise IntegrityError("CKKS decryption failed") from None
        if len(values) != slots:
            raise IntegrityError("CKKS ciphertext does not match the session's parameters")
        out[i] = values
    return out


def serialize_all(vectors: Sequence[Any]) -> list[bytes]:
    return [v.serialize() for v in vectors]
