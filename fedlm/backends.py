"""Aggregation backends: plain FedAvg and the secure protocols of ``secagg``.

Every backend takes the round's client deltas, their integer weights and the
injected dropouts, and returns the weighted average over the survivors.
``plain`` is computed here in float64; ``secagg``, ``secagg+`` and ``ckks`` are
calls to :func:`secagg.aggregate`. Clipping happens on the client (see :mod:`fedlm.client`), so
``fedavg`` of the survivors' deltas is the exact value the secure result must
match within its ``error_bound``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

import secagg

from fedlm.config import RunConfig
from fedlm.model import StateDict

#: Plain FedAvg has no protocol; a client can only fail to upload.
PLAIN_STAGES: tuple[str, ...] = ("before-upload",)


class RoundAborted(Exception):
    """Too few clients survived for the backend to produce an aggregate."""


@dataclass(frozen=True)
class AggregationResult:
    """The outcome of one round's aggregation.

    Attributes:
        average: Weighted average of the survivors' deltas.
        survivors: Sorted ids of the clients whose delta is in the average.
        dropped: Client id -> stage at which it dropped.
        bytes_up_per_client: Mean bytes uploaded per surviving client.
        seconds: Wall time of the aggregation.
        error_bound: Largest possible absolute difference from the exact
            float average of the survivors' deltas (0 for ``plain``).
    """

    average: StateDict
    survivors: list[int]
    dropped: dict[int, str]
    bytes_up_per_client: float
    seconds: float
    error_bound: float


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw size of a state dict's tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in state.values())


def fedavg(updates: Mapping[int, StateDict], weights: Mapping[int, int],
           clients: list[int]) -> StateDict:
    """Weighted average of the given clients' deltas, accumulated in float64.

    Raises:
        ValueError: if ``clients`` is empty.
    """
    if not clients:
        raise ValueError("fedavg of no clients")
    total = float(sum(weights[c] for c in clients))
    names = updates[clients[0]].keys()
    out: StateDict = {}
    for name in names:
        acc = sum(updates[c][name].to(torch.float64) * (weights[c] / total) for c in clients)
        out[name] = torch.as_tensor(acc).to(updates[clients[0]][name].dtype)
    return out


class Backend(ABC):
    """One way of aggregating a round's deltas."""

    name: str

    @property
    @abstractmethod
    def stages(self) -> tuple[str, ...]:
        """Stage names at which a client can drop out."""

    @abstractmethod
    def aggregate(self, updates: Mapping[int, StateDict], weights: Mapping[int, int],
                  dropouts: Mapping[int, str], context: bytes,
                  round_number: int) -> AggregationResult:
        """Aggregates the deltas of the clients that survive ``dropouts``.

        Raises:
            RoundAborted: if too few clients survive.
        """


class PlainBackend(Backend):
    """Weighted FedAvg in the clear; a dropped client is simply absent."""

    name = "plain"

    @property
    def stages(self) -> tuple[str, ...]:
        """Plain FedAvg's only dropout point: before the upload."""
        return PLAIN_STAGES

    def aggregate(self, updates: Mapping[int, StateDict], weights: Mapping[int, int],
                  dropouts: Mapping[int, str], context: bytes,
                  round_number: int) -> AggregationResult:
        """Averages the deltas of every client not in ``dropouts``."""
        start = time.perf_counter()
        survivors = sorted(c for c in updates if c not in dropouts)
        if not survivors:
            raise RoundAborted("no client survived the round")
        average = fedavg(updates, weights, survivors)
        return AggregationResult(
            average=average, survivors=survivors, dropped=dict(dropouts),
            bytes_up_per_client=float(state_nbytes(updates[survivors[0]])),
            seconds=time.perf_counter() - start, error_bound=0.0)


class SecureBackend(Backend):
    """Aggregation through :func:`secagg.aggregate` (``secagg``, ``secagg+``, ``ckks``).

    Args:
        protocol: The ``secagg`` protocol name.
        clip_bound: Public per-coordinate clip bound of the deltas.
        fractional_bits: Fixed-point precision of the encoding.
        max_weight: Largest integer weight any client can have.
    """

    def __init__(self, protocol: str, clip_bound: float, fractional_bits: int,
                 max_weight: int) -> None:
        self.name = protocol
        self._secagg: Any = secagg
        self._clip_bound = clip_bound
        self._fractional_bits = fractional_bits
        self._max_weight = max_weight

    @property
    def stages(self) -> tuple[str, ...]:
        """The protocol's dropout stages, as ``secagg.DROPOUT_STAGES`` lists them."""
        return tuple(self._secagg.DROPOUT_STAGES[self.name])

    def aggregate(self, updates: Mapping[int, StateDict], weights: Mapping[int, int],
                  dropouts: Mapping[int, str], context: bytes,
                  round_number: int) -> AggregationResult:
        """Runs the protocol; translates ``InsufficientParties`` into ``RoundAborted``."""
        try:
            res = self._secagg.aggregate(
                dict(updates), protocol=self.name, weights=dict(weights),
                dropouts=dict(dropouts), context=context, round_number=round_number,
                clip_bound=self._clip_bound, fractional_bits=self._fractional_bits,
                max_weight=self._max_weight)
        except self._secagg.InsufficientParties as exc:
            raise RoundAborted(str(exc)) from exc
        return AggregationResult(
            average={k: torch.as_tensor(v) for k, v in res.average.items()},
            survivors=sorted(int(c) for c in res.survivors),
            dropped={int(c): str(s) for c, s in res.dropped.items()},
            bytes_up_per_client=float(res.bytes_up_per_client),
            seconds=float(res.seconds), error_bound=float(res.error_bound))


def make_backend(cfg: RunConfig, max_weight: int) -> Backend:
    """The backend the configuration names."""
    if cfg.backend == "plain":
        return PlainBackend()
    return SecureBackend(cfg.backend, cfg.resolved_clip_bound, cfg.fractional_bits, max_weight)
