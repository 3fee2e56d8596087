"""One-call drivers: :func:`simulate` (synthetic inputs, checks exactness) and :func:`aggregate`
(real updates, e.g. peft state dicts). Both run the real protocol through the in-memory router.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Mapping

import numpy as np

from . import defaults
from .encoding import FixedPoint, Schema
from .errors import ParameterError
from .hazmat.keys import SigningKey
from .params import SecAggConfig, ThreatModel
from .protocols.registry import DROPOUT_STAGES, PROTOCOLS
from .protocols.secagg import SecAggClient, SecAggServer
from .results import AggregationOutcome, local_dropouts, outcome_of
from .router import RoundTrace, run_round, stages_for
from .simulation_ckks import aggregate_ckks

__all__ = ["simulate", "aggregate", "AggregationOutcome", "DROPOUT_STAGES", "dropout_schedule"]


def _parties(
    config: SecAggConfig, round_number: int, context: bytes
) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    n = config.num_clients
    identities = registry = None
    if config.threat.is_malicious:
        identities = {i: SigningKey.generate() for i in range(n)}
        registry = {i: k.public_bytes for i, k in identities.items()}
    server = SecAggServer(config, round_number=round_number, context=context, registry=registry)
    clients = {
        i: SecAggClient(
            config,
            i,
            round_number=round_number,
            context=context,
            identity=identities[i] if identities else None,
            registry=registry,
        )
        for i in range(n)
    }
    return server, clients


def dropout_schedule(
    num_clients: int, fraction: float, stages: tuple[str, ...], seed: int, stage: str | None = None
) -> dict[int, str]:
    """Pick round(fraction * n) clients to drop, each at ``stage`` or at a random stage.

    Uses a seeded simulation RNG: it chooses who fails, it protects nothing.
    """
    if not 0 <= fraction < 1:
        raise ParameterError(f"dropout must be in [0, 1), got {fraction}")
    if stage is not None and stage not in stages:
        raise ParameterError(f"unknown stage {stage!r}; use one of {', '.join(stages)}")
    rng = np.random.default_rng(seed + 1)  # ok: simulation schedule, not a secret
    count = int(round(fraction * num_clients))
    chosen = rng.choice(num_clients, size=count, replace=False)
    picks = rng.integers(0, len(stages), size=count)
    return {int(c): stage or stages[int(p)] for c, p in zip(chosen, picks)}


def _timing_summary(trace: RoundTrace) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    clients = {
        stage: {"mean": statistics.fmean(times), "max": max(times)}
        for stage, times in trace.client_seconds.items()
        if times
    }
    return clients, dict(trace.server_seconds)


def simulate(
    protocol: str = "secagg+",
    clients: int = 10,
    dim: int = 1000,
    dropout: float = 0.0,
    seed: int = 0,
    *,
    threat: ThreatModel,
    stage: str | None = None,
    encoding: FixedPoint | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Run one full SecAgg / SecAgg+ round on synthetic Gaussian inputs and report exactness, error,
    bytes and time (``secagg simulate``; CKKS: :func:`secagg.simulation_ckks.simulate_ckks`).

    ``exact`` is true iff the unmasked aggregate equals, bit for bit, the plain modular sum of the
    survivors' quantised inputs. The seed drives the synthetic data and the dropout schedule only;
    all key material comes from the system CSPRNG.
    """
    encoding = encoding or FixedPoint(max_clients=clients)
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    config = SecAggConfig.for_protocol(protocol, clients, schema, threat, encoding)
    rng = np.random.default_rng(seed)  # ok: synthetic inputs, not secrets
    inputs = rng.normal(0.0, scale, size=(clients, dim)).astype(np.float32)
    schedule = dropout_schedule(clients, dropout, stages_for(config), seed, stage)
    server, parties = _parties(config, 0, b"simulation")
    encoded = {}
    for i, party in parties.items():
        encoded[i] = encoding.encode(inputs[i].astype(np.float64))
        party.set_encoded_input(encoded[i])
    start = time.perf_counter()
    trace = run_round(server, parties, schedule)
    total = time.perf_counter() - start
    result = trace.result
    survivors = list(result.survivors)
    expected = np.zeros(config.dim, dtype=np.uint64)
    for i in survivors:
        expected += encoded[i]
    expected &= np.uint64(encoding.ring_mask)
    clipped = np.clip(inputs[survivors].astype(np.float64), -encoding.clip_bound, encoding.clip_bound)
    client_times, server_times = _timing_summary(trace)
    upload = [trace.upload_bytes[i] for i in survivors]
    return {
        "protocol": config.protocol,
        "requested_protocol": protocol,
        "clients": clients,
        "dim": dim,
        "survivors": len(survivors),
        "dropped": {s: sorted(c for c, st in trace.dropped.items() if st == s) for s in stages_for(config)},
        "aborted_clients": trace.aborted,
        "threshold": config.threshold,
        "degree": config.degree if config.degree is not None else clients - 1,
        **config.security_summary(),
        "adversary": threat.adversary.value,
        "modulus_bits": encoding.modulus_bits,
        "word_bytes": encoding.dtype.itemsize,  # in memory; the wire carries ring_bits per word
        "ring_bits": encoding.modulus_bits,
        "exact": bool(np.array_equal(expected, result.ring_sum.astype(np.uint64))),
        "max_abs_error": float(np.abs(result.weighted_sum - clipped.sum(axis=0)).max()),
        "error_bound": len(survivors) * 2.0**-encoding.fractional_bits,
        "average_max_abs_error": float(np.abs(result.average_vector() - clipped.mean(axis=0)).max()),
        "average_error_bound": result.error_bound,
        "bytes_per_client_upload": statistics.fmean(upload),
        "bytes_per_parameter": statistics.fmean(upload) / dim,
        "client_seconds": client_times,
        "server_seconds": server_times,
        "total_seconds": total,
    }


def aggregate(
    updates: Mapping[int, Any],
    protocol: str = "secagg+",
    *,
    weights: Mapping[int, int] | None = None,
    dropouts: Mapping[int, str] | None = None,
    context: bytes = b"",
    round_number: int = 0,
    clip_bound: float = defaults.CLIP_BOUND,
    fractional_bits: int | None = None,
    max_weight: int = 1,
    threat: ThreatModel | None = None,
) -> AggregationOutcome:
    """Securely average ``updates`` (client id -> state dict / tensor list / array) in memory.

    Client ids may be any distinct integers; ``dropouts`` maps some of them to the stage at which
    they vanish. ``error_bound`` bounds |average - exact weighted average of the clipped updates|.
    ``threat`` is required for ``secagg`` and ``secagg+`` (it sets the thresholds) and refused for
    ``ckks`` (whose guarantee rests on its key committee). ``fractional_bits``: masking protocols
    default to :data:`secagg.defaults.FRACTIONAL_BITS`; CKKS to the finest grid its noise allows.

    Raises:
        InsufficientParties: too few clients survived; nothing is released.
        ParameterError: mismatched schemas, NaN/Inf, bad weights, unsafe parameters, an unknown
            protocol, or an option the protocol cannot honour.
    """
    if protocol not in PROTOCOLS:
        raise ParameterError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "ckks":
        if threat is not None:
            raise ParameterError("CKKS has no threshold threat model: it rests on its key committee "
                                 "(SECURITY.md, CKKS section); pass threat only for secagg and secagg+")
        return aggregate_ckks(
            updates, weights=weights, dropouts=dropouts, context=context, round_number=round_number,
            clip_bound=clip_bound, max_weight=max_weight, fractional_bits=fractional_bits,
        )
    if threat is None:
        raise ParameterError(f"{protocol} needs a threat model: pass threat=secagg.ThreatModel.semi_honest("
                             "corrupt, dropout) or ThreatModel.malicious(...)")
    ids = sorted(updates)
    if len(ids) < 2:
        raise ParameterError("secure aggregation needs at least two clients")
    schema = Schema.of(updates[ids[0]])
    bits = defaults.FRACTIONAL_BITS if fractional_bits is None else fractional_bits
    encoding = FixedPoint(clip_bound, bits, max_weight, len(ids))
    config = SecAggConfig.for_protocol(protocol, len(ids), schema, threat, encoding)
    server, parties = _parties(config, round_number, context)
    for index, cid in enumerate(ids):
        parties[index].set_input(updates[cid], (weights or {}).get(cid, 1))
    start = time.perf_counter()
    trace = run_round(server, parties, local_dropouts(ids, dropouts))
    return outcome_of(ids, trace, time.perf_counter() - start)
