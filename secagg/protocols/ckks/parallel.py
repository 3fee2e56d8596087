"""Encrypt and decrypt chunks in worker processes: TenSEAL holds the GIL for every call.

A :class:`ChunkPool` splits the chunk list into contiguous batches and runs them in a
``spawn``-started process pool (``fork`` is unsafe once SEAL or torch have started threads). Small
inputs (fewer than ``min_chunks`` chunks) run in the calling process, where the pool's pickling
would cost more than it saves. Workers receive context bytes with each batch: the public context
for encryption (cached per worker by digest), the secret context for decryption (never cached,
dropped when the batch ends). Workers are this party's own processes on its own machine, inside
its trust boundary.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from . import he
from .presets import CkksPreset

__all__ = ["ChunkPool", "default_pool"]

_WORKER_CONTEXT: dict[bytes, Any] = {}


def _encrypt_task(context_bytes: bytes, grid_bits: int, words: np.ndarray) -> list[bytes]:
    digest = hashlib.sha256(context_bytes).digest()
    ctx = _WORKER_CONTEXT.get(digest)
    if ctx is None:
        _WORKER_CONTEXT.clear()
        ctx = _WORKER_CONTEXT[digest] = he.context_from_trusted(context_bytes)
    return he.encrypt_chunks(ctx, grid_bits, words)


def _decrypt_task(secret_bytes: bytes, preset: CkksPreset, log_scale: int, blobs: list[bytes]) -> np.ndarray:
    ctx = he.context_from_trusted(secret_bytes)
    vectors = he.load_ciphertexts(ctx, blobs, preset, log_scale)
    return he.decrypt_chunks(vectors, preset.slots)


def _ready(_: int) -> int:
    return os.getpid()


def _batches(count: int, parts: int) -> list[tuple[int, int]]:
    step = -(-count // max(parts, 1))
    return [(start, min(start + step, count)) for start in range(0, count, step)]


class ChunkPool:
    """A process pool for chunk encryption and decryption.

    Args:
        workers: processes to start besides the caller, which takes a share of every job itself
            (default: CPU count - 1). 0 runs everything in-process.
        min_chunks: inputs with fewer chunks run in-process.
    """

    def __init__(self, workers: int | None = None, min_chunks: int = 48) -> None:
        self.workers = workers if workers is not None else max((os.cpu_count() or 1) - 1, 1)
        self.min_chunks = min_chunks
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            mp = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp)
        return self._executor

    def _parallel(self, count: int) -> bool:
        return self.workers >= 1 and count >= self.min_chunks

    def warm_up(self) -> None:
        """Start the worker processes now (imports TenSEAL in each) instead of on first use."""
        if self.workers >= 1:
            list(self._pool().map(_ready, range(self.workers)))

    def encrypt(self, ctx: Any, context_bytes: bytes, grid_bits: int, words: np.ndarray) -> list[bytes]:
        """Encrypt each row of ``words`` under ``ctx`` (whose serialization is ``context_bytes``)."""
        if not self._parallel(words.shape[0]):
            return he.encrypt_chunks(ctx, grid_bits, words)
        (a0, b0), *rest = _batches(words.shape[0], 2 * (self.workers + 1))
        futures = [self._pool().submit(_encrypt_task, context_bytes, grid_bits, words[a:b]) for a, b in rest]
        mine = self._work_alongside(futures, lambda a, b: he.encrypt_chunks(ctx, grid_bits, words[a:b]), a0, b0)
        return [blob for part in [mine, *(f.result() for f in futures)] for blob in part]

    def decrypt(
        self, ctx: Any, secret_bytes: bytes, blobs: Sequence[bytes], preset: CkksPreset, log_scale: int
    ) -> np.ndarray:
        """Validate and decrypt chunk ciphertexts; raises IntegrityError like :func:`he.load_ciphertexts`."""
        def local(a: int, b: int) -> np.ndarray:
            return he.decrypt_chunks(he.load_ciphertexts(ctx, blobs[a:b], preset, log_scale), preset.slots)

        if not self._parallel(len(blobs)):
            return local(0, len(blobs))
        (a0, b0), *rest = _batches(len(blobs), 2 * (self.workers + 1))
        futures = [
            self._pool().submit(_decrypt_task, secret_bytes, preset, log_scale, list(blobs[a:b])) for a, b in rest
        ]
        mine = self._work_alongside(futures, local, a0, b0)
        return np.concatenate([mine, *(f.result() for f in futures)])

    @staticmethod
    def _work_alongside(futures: list[Future[Any]], work: Callable[[int, int], Any], start: int, stop: int) -> Any:
        """Run the first batch in this process while the workers run the rest."""
        try:
            return work(start, stop)
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEFAULT: ChunkPool | None = None


def default_pool() -> ChunkPool:
    """The process-wide pool (created on first use, shut down at interpreter exit)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ChunkPool()
        atexit.register(_DEFAULT.close)
    return _DEFAULT
