"""CKKS through the one-call drivers: ``secagg simulate --protocol ckks`` (one in-memory round on
random data, reported with every field of the SecAgg report) and ``secagg.aggregate(..., "ckks")``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from typing import Mapping

from .encoding import Schema
from .errors import ParameterError
from .protocols.ckks import PRESETS, ChunkPool, CkksClient, CkksConfig, CkksResult, CkksServer
from .protocols.registry import PROTOCOLS
from .results import AggregationOutcome, Trace, local_dropouts, outcome_of, peak_rss_bytes
from .router import run_round

__all__ = ["simulate_ckks", "aggregate_ckks"]

CkksTrace = Trace[CkksResult]


def _dropouts(rng: np.random.Generator, clients: int, fraction: float, stage: str | None) -> dict[int, str]:
    """Drop ``round(fraction * clients)`` random clients at ``stage``, or alternately before and
    after their upload."""
    count = int(round(fraction * clients))
    chosen = rng.choice(clients, size=count, replace=False)
    return {int(c): stage or ("before-upload" if i % 2 == 0 else "after-upload") for i, c in enumerate(chosen)}


def _timings(trace: CkksTrace) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    client = {s: {"mean": float(np.mean(v)), "max": float(np.max(v))} for s, v in trace.client_seconds.items() if v}
    return client, {s: float(t) for s, t in trace.server_seconds.items()}


def simulate_ckks(
    clients: int,
    dim: int,
    dropout: float,
    seed: int,
    preset: str = "addition-128",
    *,
    committee_size: int = 3,
    clip_bound: float = 8.0,
    max_weight: int = 1,
    pool: ChunkPool | None = None,
    stage: str | None = None,
) -> dict[str, Any]:
    """Run one CKKS round with ``clients`` random updates of ``dim`` values and report on it.

    Updates are N(0, 0.1^2) values, weights uniform in ``[1, max_weight]``; ``dropout`` of the
    clients vanish (alternately before and after uploading). ``max_abs_error`` compares the released
    weighted average with the exact float64 weighted average of the survivors' clipped inputs.

    Raises:
        ParameterError: an unknown preset or impossible parameters.
        InsufficientParties: too few uploads, or every key holder dropped.
    """
    if preset not in PRESETS:
        raise ParameterError(f"unknown CKKS preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not 0 <= dropout < 1:
        raise ParameterError("dropout must be in [0, 1)")
    if stage is not None and stage not in PROTOCOLS["ckks"].stage_names(None):
        raise ParameterError(f"unknown CKKS dropout stage {stage!r}; use one of "
                             f"{', '.join(PROTOCOLS['ckks'].stage_names(None))}")
    rng = np.random.default_rng(seed)  # ok: synthetic inputs and dropout schedule, not secrets
    updates = [rng.normal(0.0, 0.1, dim).astype(np.float32) for _ in range(clients)]
    weights = [int(w) for w in rng.integers(1, max_weight + 1, size=clients)]
    committee = tuple(range(min(committee_size, clients)))
    config = CkksConfig(clients, Schema.of(updates[0]), PRESETS[preset], committee, clip_bound, max_weight)
    server = CkksServer(config)
    parties = {i: CkksClient(config, i, pool=pool) for i in range(clients)}
    for i, party in parties.items():
        party.set_input(updates[i], weights[i])
    start = time.perf_counter()
    trace: CkksTrace = run_round(server, parties, _dropouts(rng, clients, dropout, stage))
    total = time.perf_counter() - start
    survivors = trace.result.survivors
    clipped = [np.clip(updates[i].astype(np.float64), -clip_bound, clip_bound) * weights[i] for i in survivors]
    exact_sum = np.sum(clipped, axis=0)
    return _report(config, trace, exact_sum, sum(weights[i] for i in survivors), preset, total)


def _report(config: CkksConfig, trace: CkksTrace, exact_sum: np.ndarray, weight_sum: int, preset: str,
            total: float) -> dict[str, Any]:
    """The JSON fields of one simulated round: every field of the SecAgg report, plus CKKS's own.

    ``max_abs_error`` and ``error_bound`` concern the weighted sum, as for SecAgg (n * 2^-g: one grid
    step per summand); ``average_*`` the released average.
    """
    result = trace.result
    error = float(np.max(np.abs(result.weighted_sum - exact_sum)))
    average_error = float(np.max(np.abs(result.average_vector() - exact_sum / weight_sum)))
    sum_bound = len(result.survivors) * 2.0**-config.grid_bits
    uploads = list(trace.stage_upload_bytes["upload"].values())
    per_client = float(np.mean(uploads))
    client_seconds, server_seconds = _timings(trace)
    dim = config.schema.size
    return {
        "protocol": "ckks",
        "requested_protocol": "ckks",
        "clients": config.num_clients,
        "dim": dim,
        "survivors": len(result.survivors),
        "dropped": {s: sorted(c for c, st in trace.dropped.items() if st == s) for s in PROTOCOLS["ckks"].stage_names(config)},
        "aborted_clients": trace.aborted,
        "threshold": config.min_contributors,  # the fewest inputs a key holder decrypts a sum of
        "degree": None,  # no pairwise graph: every client talks only to the server
        "adversary": "semi-honest",  # the key committee's model: SECURITY.md, CKKS section
        # The masking protocols' threshold figures; CKKS's guarantee rests on its key committee instead.
        "quorum": config.min_contributors,
        "corrupt_bound": None,
        "corrupt_neighbours": None,
        "min_honest_inputs": None,
        "grinding_bits": 0,
        "modulus_bits": config.encoding.modulus_bits,  # the fixed-point range decryption rounds into
        "word_bytes": None,  # ciphertexts, not ring words: see bytes_per_value
        "ring_bits": None,
        "exact": error <= sum_bound and average_error <= result.error_bound,
        "max_abs_error": error,
        "error_bound": sum_bound,
        "average_max_abs_error": average_error,
        "average_error_bound": result.error_bound,
        "bytes_per_client_upload": per_client,
        "bytes_per_value": per_client / dim,
        "client_seconds": client_seconds,
        "server_seconds": server_seconds,
        "total_seconds": total,
        "preset": preset,
        "security_bits": config.preset.security_bits,
        "grid_bits": config.grid_bits,
        "log_scale": config.log_scale,
        "noise_bound": config.noise_bound(len(result.survivors)),
        "key_and_decrypt_bytes": sum(trace.upload_bytes.values()) - sum(uploads),
        "decrypted_by": result.decrypted_by,
        "bytes_per_parameter": per_client / dim,
        "streaming": False,  # CKKS inputs are held up front
        "peak_rss_bytes": peak_rss_bytes(),
    }


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
    if preset not in PRESETS:
        raise ParameterError(f"unknown CKKS preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = CkksConfig(len(ids), Schema.of(updates[ids[0]]), PRESETS[preset],
                        clip_bound=clip_bound, max_weight=max_weight, fractional_bits=fractional_bits)
    server = CkksServer(config, round_number=round_number, context=context)
    parties = {i: CkksClient(config, i, round_number=round_number, context=context) for i in range(len(ids))}
    for index, cid in enumerate(ids):
        parties[index].set_input(updates[cid], (weights or {}).get(cid, 1))
    start = time.perf_counter()
    trace = run_round(server, parties, local_dropouts(ids, dropouts))
    return outcome_of(ids, trace, time.perf_counter() - start)
