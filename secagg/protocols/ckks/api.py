"""One-call entry points for CKKS, with the same signatures as the masking protocols' drivers."""

from __future__ import annotations

import time
from typing import Any, Mapping

from ...encoding import Schema
from ...errors import ParameterError
from ...results import AggregationOutcome, local_dropouts, outcome_of
from .client import CkksClient
from .config import CkksConfig
from .driver import DROPOUT_STAGES, run_ckks_round
from .presets import PRESETS
from .server import CkksServer
from .simulate import simulate_ckks as _simulate

__all__ = ["aggregate_ckks", "simulate_ckks", "DROPOUT_STAGES"]

def simulate_ckks(
    clients: int, dim: int, dropout: float, seed: int, *, stage: str | None = None, preset: str = "addition-128"
) -> dict[str, Any]:
    """``secagg simulate --protocol ckks``: see :func:`secagg.protocols.ckks.simulate.simulate_ckks`."""
    if stage is not None and stage not in DROPOUT_STAGES:
        raise ParameterError(f"unknown CKKS dropout stage {stage!r}; use one of {', '.join(DROPOUT_STAGES)}")
    return _simulate(clients, dim, dropout, seed, preset, stage=stage)


def aggregate_ckks(
    updates: Mapping[int, Any],
    *,
    weights: Mapping[int, int] | None = None,
    dropouts: Mapping[int, str] | None = None,
    context: bytes = b"",
    round_number: int = 0,
    clip_bound: float = 1.0,
    max_weight: int = 1,
    preset: str = "addition-128",
    fractional_bits: int | None = None,
) -> AggregationOutcome:
    """Average ``updates`` (client id -> state dict / tensors / array) under CKKS, in memory.

    The first three clients (by id) form the key committee. ``fractional_bits`` is the grid 2^-g
    (``None``: the finest the CKKS noise bound allows). Raises as :func:`secagg.aggregate`.
    """
    ids = sorted(updates)
    if not ids:
        raise ParameterError("nothing to aggregate")
    config = CkksConfig(len(ids), Schema.of(updates[ids[0]]), PRESETS[preset],
                        clip_bound=clip_bound, max_weight=max_weight, fractional_bits=fractional_bits)
    server = CkksServer(config, round_number=round_number, context=context)
    parties = {i: CkksClient(config, i, round_number=round_number, context=context) for i in range(len(ids))}
    for index, cid in enumerate(ids):
        parties[index].set_input(updates[cid], (weights or {}).get(cid, 1))
    start = time.perf_counter()
    trace = run_ckks_round(server, parties, local_dropouts(ids, dropouts))
    return outcome_of(ids, trace, time.perf_counter() - start)
