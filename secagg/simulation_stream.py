"""Synthetic inputs for :func:`secagg.simulate` that exist one client at a time (the streaming simulator).

The round is still driven by :func:`secagg.run_round` (the one driver of record) over the same
parties; :class:`StreamingInputs` only plugs into its ``turn`` hook. A client's input is derived
from ``(seed, client id)`` at the moment the client is about to mask (its mask-stage ``handle``), is
encoded, handed to the client, and folded into the expected sum once the client has sent its masked
input. So besides the server's accumulator the only O(d) buffers are one client's input, its
encoding and its working buffers, plus the two expected sums: memory is O(d + n·k), not O(n·d).

Guarantee checked by the caller: ``expected`` is the plain ring sum of exactly the encodings the
clients in ``contributed`` masked, computed independently of the protocol's masks.
"""

from __future__ import annotations

import time
from typing import Collection, Mapping

import numpy as np

from .dp.encoding import DpEncoding
from .encoding import FixedPoint
from .protocols.secagg import SecAggClient
from .protocols.secagg.common import Stage

__all__ = ["StreamingInputs", "synthetic_input", "clipped"]

MASK_STAGE = "mask"


def synthetic_input(seed: int, client: int, dim: int, scale: float) -> np.ndarray:
    """Client ``client``'s synthetic input for ``seed``: Gaussian, float32 values as float64.

    Seeded simulation data (a NumPy generator keyed by ``(seed, client)``), not a secret.
    """
    rng = np.random.default_rng([seed, client])  # ok: synthetic inputs, not secrets
    values: np.ndarray = rng.normal(0.0, scale, size=dim).astype(np.float32).astype(np.float64)
    return values


def clipped(inputs: np.ndarray, enc: FixedPoint | DpEncoding) -> np.ndarray:
    """Inputs (one per row, or one vector) as the encoding clips them: per coordinate, or in L2
    (each row's whole vector) under distributed DP."""
    if isinstance(enc, DpEncoding):
        norms = np.linalg.norm(inputs, axis=-1, keepdims=True)
        scaled: np.ndarray = inputs * np.minimum(1.0, enc.clip_bound / np.maximum(norms, 1e-300))
        return scaled
    out: np.ndarray = np.clip(inputs, -enc.clip_bound, enc.clip_bound)
    return out


class StreamingInputs:
    """The ``turn`` hook of a streamed simulation: inputs on demand, expected sums as they go.

    Args:
        parties: the round's clients (ids ``0 .. n-1``).
        enc: the session's encoding.
        setup: the setup id (distributed DP rotates with it).
        dim: the number of float values per client.
        scale: standard deviation of the synthetic inputs.
        seed: seeds the synthetic inputs only; keys and noise come from each client's CSPRNG.
    """

    def __init__(self, parties: Mapping[int, SecAggClient], enc: FixedPoint | DpEncoding, setup: bytes,
                 dim: int, scale: float, seed: int) -> None:
        self._parties, self._enc, self._setup = parties, enc, setup
        self._dim, self._scale, self._seed = dim, scale, seed
        self.expected = np.zeros(parties[0].config.dim if parties else dim + 1, dtype=np.uint64)
        """Plain ring sum (before reduction) of the encoded inputs of ``contributed``."""
        self.clipped_sum = np.zeros(dim, dtype=np.float64)
        """Sum of the clipped float inputs of ``contributed`` (what the protocol approximates)."""
        self.contributed: list[int] = []
        self.seconds = 0.0
        """Time spent deriving, encoding and summing inputs (inside the round's wall time)."""
        self._pending: tuple[int, np.ndarray, np.ndarray] | None = None

    def __call__(self, client: int, stage: str) -> None:
        """The router's ``turn`` hook: before ``client`` masks, derive, encode and hand it its input."""
        if stage != MASK_STAGE:
            return
        start = time.perf_counter()
        self._commit()
        values = synthetic_input(self._seed, client, self._dim, self._scale)
        words = self._encode(values)
        self._parties[client].set_encoded_input(words)  # the client keeps its own copy until it masks
        self._pending = (client, words, clipped(values, self._enc))
        self.seconds += time.perf_counter() - start

    def finish(self, survivors: Collection[int]) -> None:
        """Fold in the last client's input if it is among ``survivors`` (call once the round ended)."""
        self._commit(survivors)

    def _encode(self, values: np.ndarray) -> np.ndarray:
        if isinstance(self._enc, DpEncoding):
            return self._enc.encode(values, self._setup)
        return self._enc.encode(values)

    def _commit(self, survivors: Collection[int] | None = None) -> None:
        """Count the pending client's input if it sent its masked input: mid-round, iff it left the
        mask stage without aborting; after the round, iff the server counted it as a survivor."""
        if self._pending is None:
            return
        client, words, values = self._pending
        self._pending = None
        party = self._parties[client]
        sent = client in survivors if survivors is not None else party.stage not in (Stage.MASK, Stage.ABORTED)
        if not sent:
            return
        np.add(self.expected, words, out=self.expected, casting="unsafe")
        self.clipped_sum += values
        self.contributed.append(client)

    def ring_sum(self) -> np.ndarray:
        """``expected`` reduced to the ring."""
        out: np.ndarray = self.expected & np.uint64(self._enc.ring_mask)
        return out
