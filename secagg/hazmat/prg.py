"""Mask pseudo-random generator: AES-256-CTR keystream expanded into ring elements.

Security assumption: AES-256 is a pseudo-random permutation; each 32-byte key is used for exactly one
keystream (keys are derived per session, pair and purpose by :mod:`secagg.hazmat.keys`), so the fixed
all-zero initial counter block never repeats under one key.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ParameterError

__all__ = ["MaskStream", "expand", "KEY_BYTES"]

KEY_BYTES = 32
_ZERO_COUNTER = bytes(16)
_BLOCK = 16


class _Zeros:
    """A growing, read-only buffer of zero bytes (the plaintext of a keystream)."""

    _buf: bytes = bytes(1 << 20)

    @classmethod
    def view(cls, nbytes: int) -> memoryview:
        if len(cls._buf) < nbytes:
            cls._buf = bytes(max(nbytes, 2 * len(cls._buf)))
        return memoryview(cls._buf)[:nbytes]


class MaskStream:
    """A keystream that fills caller buffers with consecutive pseudo-random words.

    Successive :meth:`fill` calls continue the same stream, so a long mask can be produced chunk by
    chunk (cache-friendly) and still equal :func:`expand` of the whole length.
    Objects never expose the key and refuse pickling.
    """

    __slots__ = ("_encryptor", "_scratch")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ParameterError(f"mask key must be {KEY_BYTES} bytes")
        cipher = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_COUNTER))
        self._encryptor = cipher.encryptor()
        self._scratch: bytearray | None = None

    def fill(self, out: np.ndarray) -> None:
        """Overwrite ``out`` (a C-contiguous unsigned integer array) with the next keystream bytes."""
        if not out.flags.c_contiguous or out.dtype.kind != "u":
            raise ParameterError("out must be a C-contiguous unsigned integer array")
        nbytes = out.nbytes
        if nbytes == 0:
            return
        target = out.data.cast("B")
        # cryptography checks len(buf) >= len(data) + block_size - 1 even for CTR; feed the whole
        # blocks but the last in place, then the last 16..31 bytes through a small scratch buffer
        # (a stream kept alive never holds a buffer the size of the words it filled).
        head = nbytes - nbytes % _BLOCK - _BLOCK
        if head > 0:
            self._encryptor.update_into(_Zeros.view(head), target[: head + _BLOCK])
            self._tail(target[head:], nbytes - head)
        else:
            self._tail(target, nbytes)

    def _tail(self, target: memoryview, nbytes: int) -> None:
        needed = nbytes + _BLOCK - 1
        if self._scratch is None or len(self._scratch) < needed:
            self._scratch = bytearray(max(needed, 64))
        written = self._encryptor.update_into(_Zeros.view(nbytes), self._scratch)
        target[:written] = memoryview(self._scratch)[:written]

    def __getstate__(self) -> None:
        raise TypeError("MaskStream holds key material and cannot be pickled")

    def __repr__(self) -> str:
        return "MaskStream(<secret>)"


def expand(key: bytes, count: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """Expand ``key`` into ``count`` uniformly random words of unsigned ``dtype``.

    Guarantees: deterministic in ``key``; words are little-endian interpretations of the AES-256-CTR
    keystream with initial counter block zero. Reducing each word modulo a power of two no larger
    than the word size gives uniform ring elements.
    """
    if count < 0:
        raise ParameterError("count must be non-negative")
    out = np.empty(count, dtype=np.dtype(dtype).newbyteorder("<"))
    MaskStream(key).fill(out)
    return out
