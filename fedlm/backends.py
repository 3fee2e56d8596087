"""Aggregation backends: plain FedAvg and the secure protocols of ``secagg``.

A backend opens one :class:`RoundSession` per round. Each client hands its delta and integer weight
to the session where it trains (:meth:`RoundSession.add`); for a secure backend that builds the
client's own protocol party there and sets its input, so the delta never leaves the client except
masked or encrypted. :meth:`RoundSession.finish` then drives the server and the parties through
``secagg``'s one router (:func:`secagg.run_round`) with the injected dropouts and returns the
weighted average over the survivors. ``plain`` is computed in float64. Clipping happens on the
client (see :mod:`fedlm.client`), so ``fedavg`` of the survivors' deltas is the exact value the
secure result must match within its ``error_bound`` (a check only the in-memory engine can make).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from scipy.stats import binom

import secagg
from secagg.dp.accounting import epsilon_of_rounds
from secagg.dp.encoding import DpEncoding, survivor_floor
from secagg.dp.plan import DpPlan, plan
from secagg.results import local_dropouts, outcome_of

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


class RoundSession(ABC):
    """One round of one backend: clients add their deltas where they train, then it finishes."""

    @abstractmethod
    def add(self, client: int, delta: StateDict, weight: int) -> None:
        """Client ``client`` contributes ``delta`` with integer ``weight`` (at the client)."""

    @abstractmethod
    def finish(self, dropouts: Mapping[int, str]) -> AggregationResult:
        """Runs the round with the injected ``dropouts`` (client id -> stage).

        Raises:
            RoundAborted: if too few clients survive.
        """


class Backend(ABC):
    """One way of aggregating a round's deltas."""

    name: str

    @property
    @abstractmethod
    def stages(self) -> tuple[str, ...]:
        """Stage names at which a client can drop out."""

    @abstractmethod
    def open_round(self, sampled: list[int], context: bytes, round_number: int) -> RoundSession:
        """A session for the ``sampled`` clients, bound to ``context`` (the global model digest)."""

    def aggregate(self, updates: Mapping[int, StateDict], weights: Mapping[int, int],
                  dropouts: Mapping[int, str], context: bytes,
                  round_number: int) -> AggregationResult:
        """Every client of ``updates`` adds its delta, then the round finishes (a convenience).

        Raises:
            RoundAborted: if too few clients survive.
        """
        session = self.open_round(sorted(updates), context, round_number)
        for cid in sorted(updates):
            session.add(cid, updates[cid], weights[cid])
        return session.finish(dropouts)


class _PlainRound(RoundSession):
    def __init__(self) -> None:
        self.updates: dict[int, StateDict] = {}
        self.weights: dict[int, int] = {}

    def add(self, client: int, delta: StateDict, weight: int) -> None:
        self.updates[client], self.weights[client] = delta, weight

    def finish(self, dropouts: Mapping[int, str]) -> AggregationResult:
        start = time.perf_counter()
        survivors = sorted(c for c in self.updates if c not in dropouts)
        if not survivors:
            raise RoundAborted("no client survived the round")
        average = fedavg(self.updates, self.weights, survivors)
        return AggregationResult(
            average=average, survivors=survivors, dropped=dict(dropouts),
            bytes_up_per_client=float(state_nbytes(self.updates[survivors[0]])),
            seconds=time.perf_counter() - start, error_bound=0.0)


class PlainBackend(Backend):
    """Weighted FedAvg in the clear; a dropped client is simply absent."""

    name = "plain"

    @property
    def stages(self) -> tuple[str, ...]:
        """Plain FedAvg's only dropout point: before the upload."""
        return PLAIN_STAGES

    def open_round(self, sampled: list[int], context: bytes, round_number: int) -> RoundSession:
        return _PlainRound()


class _SecureRound(RoundSession):
    """The server and the client parties of one secure round (protocol ids: sampled positions)."""

    def __init__(self, backend: SecureBackend, sampled: list[int], context: bytes, round_number: int) -> None:
        self.backend, self.ids, self.context, self.round = backend, sorted(sampled), context, round_number
        self.position = {cid: i for i, cid in enumerate(self.ids)}
        self.config: Any = None
        self.server: Any = None
        self.parties: dict[int, Any] = {}

    def add(self, client: int, delta: StateDict, weight: int) -> None:
        """Builds this client's party (and, for the first, the round's config and server)."""
        if self.config is None:
            self.config = self.backend.config_for(len(self.ids), secagg.Schema.of(delta))
            self.server = secagg.new_server(self.config, round_number=self.round, context=self.context)
        party = secagg.new_client(self.config, self.position[client], round_number=self.round,
                                  context=self.context)
        party.set_input(delta, weight)
        self.parties[self.position[client]] = party

    def finish(self, dropouts: Mapping[int, str]) -> AggregationResult:
        if self.server is None:
            raise RoundAborted("no client took part in the round")
        start = time.perf_counter()
        try:
            trace = secagg.run_round(self.server, self.parties, local_dropouts(self.ids, dropouts))
        except secagg.InsufficientParties as exc:
            raise RoundAborted(str(exc)) from exc
        res = outcome_of(self.ids, trace, time.perf_counter() - start)
        return AggregationResult(
            average={k: torch.as_tensor(v) for k, v in res.average.items()},
            survivors=sorted(int(c) for c in res.survivors),
            dropped={int(c): str(s) for c, s in res.dropped.items()},
            bytes_up_per_client=float(res.bytes_up_per_client),
            seconds=float(res.seconds), error_bound=float(res.error_bound))


@dataclass(frozen=True)
class DpTarget:
    """Distributed DP for a whole run: the (epsilon, delta) it may spend over ``rounds`` rounds, each
    client's delta clipped to ``l2_clip`` in L2 (client-level DP)."""

    epsilon: float
    delta: float
    rounds: int
    l2_clip: float
    mechanism: str = "ddgauss"
    dropout: float = 0.0
    """Each sampled client's dropout probability: the survivor floor is set so that a round falls
    below it with probability at most 1% (the 99th percentile of the binomial dropout count)."""


class DpBudget:
    """The plan of a run's noise and the epsilon spent so far, by the accountant.

    Each completed round costs what its *actual* honest survivors' noise gives (only survivors'
    noise is in a sum, and corrupt clients may leave theirs out); a round is run only if, even with
    the fewest survivors the clients accept (``floor``, enforced by them), the total stays within the
    target.
    """

    def __init__(self, target: DpTarget, plan_: DpPlan, dim: int, floor: int,
                 honest: Callable[[int], int]) -> None:
        self.target, self.plan, self.dim, self.floor, self.honest = target, plan_, dim, floor, honest
        self.worst = honest(floor)
        self.survivors: list[int] = []  # honest noise count of each released sum
        self.ledger: Path | None = None

    def load(self, path: Path) -> None:
        """Charge every release a ledger records (a resumed run: also those after its checkpoint).

        Raises:
            ValueError: the ledger is unreadable or was written with another noise plan.
        """
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable DP ledger ({type(exc).__name__})") from None
        digest = self.plan.spec.digest().hex()
        if any(e.get("spec") != digest for e in entries):
            raise ValueError(f"{path}: rounds were released with another DP plan; resume with the same "
                             "--dp-epsilon, --dp-delta, --dp-rounds and --dp-l2-clip")
        self.survivors = [int(e["honest"]) for e in entries]

    @property
    def spent(self) -> float:
        """Epsilon of the completed rounds (0 before any)."""
        if not self.survivors:
            return 0.0
        return epsilon_of_rounds(self.plan.spec, self.dim, self.survivors, self.target.delta)

    def allows_another_round(self) -> bool:
        worst = epsilon_of_rounds(self.plan.spec, self.dim, [*self.survivors, self.worst], self.target.delta)
        return worst <= self.target.epsilon

    def record(self, survivors: int, round_number: int = 0) -> float:
        """A released sum of ``survivors`` inputs; returns the epsilon spent so far. With a ledger
        file set, the release is written there first (atomically), so a crash cannot lose a charge."""
        self.survivors.append(self.honest(survivors))
        if self.ledger is not None:
            digest = self.plan.spec.digest().hex()
            entries = [{"spec": digest, "honest": h} for h in self.survivors]
            entries[-1]["round"] = round_number
            tmp = self.ledger.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries))
            tmp.replace(self.ledger)
        return self.spent

    def report(self) -> dict[str, Any]:
        planned = self.plan.to_json()
        return {
            "mechanism": self.plan.spec.mechanism,
            "noise_multiplier": planned["noise_multiplier"],
            "bits": self.plan.spec.bits,
            "epsilon": self.spent,
            "delta": self.target.delta,
            "target_epsilon": self.target.epsilon,
            "planned_rounds": self.target.rounds,
            "planned_epsilon": planned["epsilon"],
            "min_survivors": self.floor,
            # Noise norm over the norm of a sum of clipped deltas, at the floor: far above 1, the
            # noise swamps the update (more clients per round, or fewer trained parameters, help).
            "noise_to_signal": (math.sqrt(self.worst * self.dim) * self.plan.spec.noise_std
                                / (self.plan.spec.scale * self.worst * self.target.l2_clip)),
            "min_honest_survivors": self.worst,
            "noise_std_per_client": self.plan.spec.noise_std,
            "scale": self.plan.spec.scale,
            "l2_clip": self.target.l2_clip,
            "dim": self.dim,
        }


class SecureBackend(Backend):
    """Aggregation by a ``secagg`` protocol (``secagg``, ``secagg+``, ``ckks``), each client's party
    built where the client trains and every party driven through :func:`secagg.run_round`.

    Args:
        protocol: The ``secagg`` protocol name.
        clip_bound: Public per-coordinate clip bound of the deltas.
        fractional_bits: Fixed-point precision of the encoding.
        max_weight: Largest integer weight any client can have.
        threat: Whom the masking protocols' thresholds defend against (refused for ``ckks``).
        dp: Distributed DP target (``secagg`` and ``secagg+`` only); the noise is planned on the
            first round for its client count and delta size (:attr:`budget`).
    """

    def __init__(self, protocol: str, clip_bound: float, fractional_bits: int,
                 max_weight: int, threat: secagg.ThreatModel | None = None,
                 dp: DpTarget | None = None) -> None:
        if protocol not in secagg.PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if (protocol == "ckks") != (threat is None):
            raise ValueError("secagg and secagg+ need a threat model; ckks takes none (its key committee)")
        self.name = protocol
        self._clip_bound = clip_bound
        self._fractional_bits = fractional_bits
        self._max_weight = max_weight
        self._threat = threat
        if dp is not None and protocol == "ckks":
            raise ValueError("distributed DP runs on secagg and secagg+ only")
        self._dp = dp
        self.budget: DpBudget | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        """The protocol's dropout stages, as ``secagg.DROPOUT_STAGES`` lists them."""
        return tuple(secagg.DROPOUT_STAGES[self.name])

    def config_for(self, num_clients: int, schema: secagg.Schema) -> Any:
        """The round's protocol config for ``num_clients`` deltas of ``schema``."""
        if self.name == "ckks":
            preset = secagg.PRESETS[secagg.defaults.CKKS_PRESET]
            committee = tuple(range(min(secagg.defaults.CKKS_COMMITTEE_SIZE, num_clients)))
            return secagg.CkksConfig(num_clients, schema, preset, committee, clip_bound=self._clip_bound,
                                     max_weight=self._max_weight, fractional_bits=self._fractional_bits)
        assert self._threat is not None
        encoding = secagg.FixedPoint(self._clip_bound, self._fractional_bits, self._max_weight, num_clients)
        config = secagg.SecAggConfig.for_protocol(self.name, num_clients, schema, self._threat, encoding)
        if self._dp is None:
            return config
        if self.budget is None:
            self.plan_dp(config)
        assert self.budget is not None
        dp = DpEncoding(self.budget.plan.spec, schema.size, num_clients, self.budget.floor)
        return secagg.SecAggConfig.for_protocol(self.name, num_clients, schema, self._threat, dp)

    def plan_dp(self, config: secagg.SecAggConfig) -> DpBudget:
        """Plans the run's noise for rounds of ``config`` (its client count, size and threat): the
        fewest honest survivors a round can release with is the worst case the plan covers."""
        assert self._dp is not None and self._threat is not None
        target = self._dp
        n = config.num_clients
        tolerated = float(binom.ppf(0.99, n, target.dropout)) / n if target.dropout > 0 else 0.0
        floor, _ = survivor_floor(n, config.threshold, tolerated, config.corrupt_bound)
        planned = plan(target.epsilon, target.delta, target.rounds, config.num_clients,
                       config.honest_noise_count(floor), config.schema.size, target.l2_clip, target.mechanism)
        self.budget = DpBudget(target, planned, config.schema.size, floor, config.honest_noise_count)
        return self.budget

    def open_round(self, sampled: list[int], context: bytes, round_number: int) -> RoundSession:
        return _SecureRound(self, sampled, context, round_number)


def make_backend(cfg: RunConfig, max_weight: int, template: StateDict | None = None) -> Backend:
    """The backend the configuration names. Under DP, ``template`` (the uploaded state) fixes the
    dimension the noise is planned for, before the first round."""
    if cfg.backend == "plain":
        return PlainBackend()
    threat = None if cfg.backend == "ckks" else secagg.ThreatModel.semi_honest(cfg.corrupt, max(cfg.dropout, 0.2))
    dp = None
    if cfg.dp_epsilon is not None:
        dp = DpTarget(cfg.dp_epsilon, cfg.dp_delta, cfg.resolved_dp_rounds, cfg.dp_l2_clip, dropout=cfg.dropout)
    backend = SecureBackend(cfg.backend, cfg.resolved_clip_bound, cfg.fractional_bits,
                            1 if dp is not None else max_weight, threat, dp)
    if dp is not None and template is not None:
        backend.config_for(cfg.clients_per_round, secagg.Schema.of(template))  # plans the noise
    return backend
