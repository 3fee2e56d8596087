"""One-call drivers: :func:`simulate` (synthetic inputs, checks exactness) and :func:`aggregate`
(real updates, e.g. peft state dicts). Both run the real protocol through the in-memory router.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import defaults
from .dp.accounting import epsilon as dp_epsilon
from .dp.encoding import DpEncoding, survivor_floor
from .dp.plan import DpPlan
from .dp.plan import plan as dp_plan
from .protocols.secagg.common import setup_id
from .encoding import FixedPoint, Schema
from .errors import ParameterError
from .hazmat.keys import SigningKey
from .params import SecAggConfig, ThreatModel
from .protocols.registry import DROPOUT_STAGES, PROTOCOLS
from .protocols.secagg import SecAggClient, SecAggServer
from .results import AggregationOutcome, local_dropouts, outcome_of, peak_rss_bytes
from .router import RoundTrace, run_round, stages_for
from .simulation_stream import StreamingInputs, clipped
from .simulation_ckks import aggregate_ckks

__all__ = ["simulate", "aggregate", "AggregationOutcome", "DROPOUT_STAGES", "DpRequest", "dropout_schedule",
           "plan_dp_encoding", "STREAMING_WORDS"]


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


STREAMING_WORDS = 50_000_000
"""``simulate(streaming=None)`` streams inputs when clients * dim exceeds this many values (about
400 MB of float32 inputs and their encodings held up front otherwise)."""


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
    dp: DpRequest | None = None,
    streaming: bool | None = None,
) -> dict[str, Any]:
    """Run one full SecAgg / SecAgg+ round on synthetic Gaussian inputs and report exactness, error,
    bytes and time (``secagg simulate``; CKKS: :func:`secagg.simulation_ckks.simulate_ckks`).

    ``exact`` is true iff the unmasked aggregate equals, bit for bit, the plain modular sum of the
    survivors' encoded inputs. The seed drives the synthetic data and the dropout schedule only;
    all key material (and DP noise) comes from the system CSPRNG. With ``dp`` the noise is planned
    for ``dp.rounds`` rounds with the fewest honest noise shares a sum can carry (:func:`plan_dp_encoding`), and the
    report gains a ``dp`` object (``measured_noise_std`` of the released sum minus the noiseless
    sum of the L2-clipped inputs, next to ``planned_noise_std``).

    ``streaming`` (default: when clients * dim > :data:`STREAMING_WORDS`) derives each client's input
    from ``(seed, client)`` only when it masks and sums the expected aggregate as it goes
    (:mod:`secagg.simulation_stream`): memory O(d + n·k) instead of O(n·d). Same seed, same dropout
    schedule either way; the synthetic inputs differ. ``total_seconds`` is the round's time without
    drawing the synthetic inputs in both modes. ``peak_rss_bytes`` is the process's peak RSS.
    """
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    plan: DpPlan | None = None
    enc: FixedPoint | DpEncoding
    if dp is not None:
        plan, enc = plan_dp_encoding(protocol, clients, dim, threat, dp)
    else:
        enc = encoding or FixedPoint(max_clients=clients)
    config = SecAggConfig.for_protocol(protocol, clients, schema, threat, enc)
    schedule = dropout_schedule(clients, dropout, stages_for(config), seed, stage)
    stream = clients * dim > STREAMING_WORDS if streaming is None else streaming
    server, parties = _parties(config, 0, b"simulation")
    setup = setup_id(config, 0, b"simulation")
    if stream:
        inputs = StreamingInputs(parties, enc, setup, dim, scale, seed)
        start = time.perf_counter()
        trace = run_round(server, parties, schedule, turn=inputs)
        total = time.perf_counter() - start - inputs.seconds  # the round alone, as when inputs are held
        inputs.finish(trace.result.survivors)
        exact = inputs.contributed == sorted(trace.result.survivors) and _equal(inputs.ring_sum(), trace.result)
        clipped_sum = inputs.clipped_sum
    else:
        trace, total, expected, clipped_sum = _run_held(config, enc, server, parties, schedule, setup, seed, scale)
        exact = _equal(expected, trace.result)
    report = _report(protocol, config, enc, threat, trace, total, clipped_sum, plan, dp)
    report["exact"] = exact
    report["streaming"] = stream
    report["peak_rss_bytes"] = peak_rss_bytes()
    return report


def _equal(expected: np.ndarray, result: Any) -> bool:
    return bool(np.array_equal(expected, result.ring_sum.astype(np.uint64)))


def _run_held(config: SecAggConfig, enc: FixedPoint | DpEncoding, server: SecAggServer,
              parties: dict[int, SecAggClient], schedule: dict[int, str], setup: bytes, seed: int,
              scale: float) -> tuple[RoundTrace, float, np.ndarray, np.ndarray]:
    """The round with every input drawn and encoded up front (O(n·d)): the trace, its wall time, the
    survivors' plain ring sum and the sum of their clipped inputs."""
    rng = np.random.default_rng(seed)  # ok: synthetic inputs, not secrets
    inputs = rng.normal(0.0, scale, size=(config.num_clients, config.schema.size)).astype(np.float32)
    encoded = {}
    for i, party in parties.items():
        x = inputs[i].astype(np.float64)
        encoded[i] = enc.encode(x, setup) if isinstance(enc, DpEncoding) else enc.encode(x)
        party.set_encoded_input(encoded[i])
    start = time.perf_counter()
    trace = run_round(server, parties, schedule)
    total = time.perf_counter() - start
    survivors = list(trace.result.survivors)
    expected = np.zeros(config.dim, dtype=np.uint64)
    for i in survivors:
        expected += encoded[i]
    expected &= np.uint64(enc.ring_mask)
    return trace, total, expected, clipped(inputs[survivors].astype(np.float64), enc).sum(axis=0)


def _report(protocol: str, config: SecAggConfig, enc: FixedPoint | DpEncoding, threat: ThreatModel,
            trace: RoundTrace, total: float, clipped_sum: np.ndarray, plan: DpPlan | None,
            dp: DpRequest | None) -> dict[str, Any]:
    """The JSON fields of one simulated round (field names are a contract: add, never rename)."""
    result = trace.result
    survivors = list(result.survivors)
    clients, dim = config.num_clients, config.schema.size
    client_times, server_times = _timing_summary(trace)
    upload = [trace.upload_bytes[i] for i in survivors]
    error = result.weighted_sum - clipped_sum
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
        "modulus_bits": enc.modulus_bits,
        "word_bytes": enc.dtype.itemsize,  # in memory; the wire carries ring_bits per word
        "ring_bits": enc.modulus_bits,
        "exact": False,  # set by the caller
        "max_abs_error": float(np.abs(error).max()),
        "error_bound": (len(survivors) * 2.0**-enc.fractional_bits if plan is None
                        else result.error_bound * result.weight_sum),
        "average_max_abs_error": float(np.abs(result.average_vector() - clipped_sum / len(survivors)).max()),
        "average_error_bound": result.error_bound,
        "bytes_per_client_upload": statistics.fmean(upload),
        "bytes_per_parameter": statistics.fmean(upload) / dim,
        "client_seconds": client_times,
        "server_seconds": server_times,
        "total_seconds": total,
        **({"dp": _dp_report(plan, dp, error, len(survivors), config)}
           if plan is not None and dp is not None else {}),
    }


def plan_dp_encoding(
    protocol: str, clients: int, dim: int, threat: ThreatModel, dp: DpRequest
) -> tuple[DpPlan, DpEncoding]:
    """The DP plan and encoding :func:`simulate` runs with (``secagg audit dp`` uses the same).

    The noise is planned for ``dp.rounds`` rounds with the fewest honest noise shares a released sum
    can carry: the enforced survivor floor (the threat model's expected survivors, never below the
    protocol's threshold) less the corrupt bound, and against a malicious server at most l
    (:meth:`SecAggConfig.honest_noise_count`).

    Raises:
        ParameterError: no ring width or noise meets the target (see :func:`secagg.dp.plan.plan`).
    """
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    base = SecAggConfig.for_protocol(protocol, clients, schema, threat, FixedPoint(max_clients=clients))
    floor, _ = survivor_floor(clients, base.threshold, threat.dropout_fraction, base.corrupt_bound)
    honest = base.honest_noise_count(floor)
    plan = dp_plan(dp.epsilon, dp.delta, dp.rounds, clients, honest, dim, dp.l2_clip, dp.mechanism)
    return plan, DpEncoding(plan.spec, dim, clients, floor)


@dataclass(frozen=True)
class DpRequest:
    """What ``secagg simulate --dp`` asks for: the mechanism and the privacy target of the run."""

    mechanism: str = "ddgauss"
    epsilon: float = 2.0
    delta: float = 1e-5
    rounds: int = 1
    l2_clip: float = defaults.DP_L2_CLIP


def _dp_report(plan: DpPlan, request: DpRequest, noise: np.ndarray, survivors: int,
               config: SecAggConfig) -> dict[str, Any]:
    """The ``dp`` object: the noise measured in this round next to the plan, and the accountant's epsilon
    for ``rounds`` rounds with this round's honest noise count (:meth:`SecAggConfig.honest_noise_count`:
    survivors less the corrupt bound, at most l against a malicious server), at least the planned
    worst case."""
    spec = plan.spec
    honest = config.honest_noise_count(survivors)
    return {
        "mechanism": spec.mechanism,
        "measured_noise_std": float(np.std(noise)),
        "planned_noise_std": math.sqrt(survivors) * spec.noise_std / spec.scale,
        "epsilon": dp_epsilon(spec, noise.shape[0], honest, request.rounds, request.delta),
        "honest_survivors": honest,
        "planned_epsilon": plan.to_json()["epsilon"],
        "delta": request.delta,
        "rounds": request.rounds,
        "bits": spec.bits,
        "scale": spec.scale,
        "noise_multiplier": plan.to_json()["noise_multiplier"],
        "noise_std_per_client": spec.noise_std,
        "min_honest_survivors": plan.to_json()["min_survivors"],
        "l2_clip": spec.l2_clip,
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
