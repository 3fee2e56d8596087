"""A test double of the ``secagg.aggregate`` API, used only while the real one is absent.

It reproduces what the fedlm loop relies on: per-protocol dropout stages,
fixed-point quantisation with ``fractional_bits`` (so the average differs from
plain FedAvg by a bounded amount), the rule that a client dropping at the last
stage is already in the aggregate, and ``InsufficientParties`` below two
survivors. It performs no cryptography and is never imported by ``fedlm``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DROPOUT_STAGES: dict[str, tuple[str, ...]] = {
    "secagg": ("advertise", "share", "mask", "unmask"),
    "secagg+": ("advertise", "share", "mask", "unmask"),
    "ckks": ("before-upload", "after-upload"),
}


class SecAggError(Exception):
    """Base error of the double."""


class InsufficientParties(SecAggError):
    """Fewer than two clients survived."""


@dataclass(frozen=True)
class AggregateResult:
    """Mirror of the real result object."""

    average: dict[str, Any]
    survivors: list[int]
    dropped: dict[int, str]
    bytes_up_per_client: float
    seconds: float
    error_bound: float


def aggregate(updates: Mapping[int, Mapping[str, Any]], protocol: str = "secagg+",
              weights: Mapping[int, int] | None = None,
              dropouts: Mapping[int, str] | None = None, context: bytes = b"",
              round_number: int = 0, clip_bound: float = 1.0, fractional_bits: int = 16,
              max_weight: int = 1) -> AggregateResult:
    """Quantised weighted average over the clients that survive ``dropouts``."""
    start = time.perf_counter()
    dropouts = dict(dropouts or {})
    weights = dict(weights or {c: 1 for c in updates})
    stages = DROPOUT_STAGES[protocol]
    for client, stage in dropouts.items():
        if client not in updates or stage not in stages:
            raise SecAggError(f"bad dropout {client}@{stage}")
    if any(not 1 <= w <= max_weight for w in weights.values()):
        raise SecAggError("weight out of range")
    survivors = sorted(c for c in updates if dropouts.get(c, stages[-1]) == stages[-1])
    if len(survivors) < 2:
        raise InsufficientParties(f"{len(survivors)} survivors")
    scale = float(2**fractional_bits)
    total = sum(weights[c] for c in survivors)
    average: dict[str, Any] = {}
    for name, ref in updates[survivors[0]].items():
        acc = sum(weights[c] * np.round(np.clip(np.asarray(updates[c][name], np.float64),
                                                -clip_bound, clip_bound) * scale)
                  for c in survivors)
        average[name] = torch.as_tensor(acc / scale / total).to(ref.dtype)
    numel = sum(int(np.asarray(v).size) for v in updates[survivors[0]].values())
    return AggregateResult(average=average, survivors=survivors, dropped=dropouts,
                           bytes_up_per_client=8.0 * numel,
                           seconds=time.perf_counter() - start,
                           error_bound=0.5 / scale)
