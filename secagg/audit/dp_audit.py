"""``secagg audit dp``: an empirical lower bound on the epsilon of a distributed-DP configuration from
one run (the one-run audit of Steinke, Nasr and Jagielski, NeurIPS 2023; bound in :mod:`.one_run`).

The audit plans the noise exactly as ``secagg simulate --dp`` does, runs ``rounds`` real secure
rounds through the real parties, and plants ``canaries`` canaries in ONE target client's input:

- Round r carries k = ceil(canaries / rounds) canaries. Canary j of that round owns a block of
  floor(dim / k) coordinates (a fresh random partition per round) with random signs, scaled to
  norm ``clip / sqrt(k)``; it is included with probability 1/2 (a seeded coin). The target
  client's input in round r is the sum of its included canaries.
- Why this construction: for a linear mechanism with isotropic noise (ours: the rotation is
  orthogonal and the noise i.i.d. per rotated coordinate), the strongest canaries are mutually
  orthogonal, so no canary's score carries another's signal (random unit directions would add
  cross-talk of variance ~k/(2 dim) per score); disjoint supports make them exactly orthogonal.
  The norm ``clip / sqrt(k)`` keeps every subset of them within the L2 clip, so the client never
  clips: each canary is a legitimate input and its inclusion shifts the target's input by
  exactly ``clip / sqrt(k)``, never more than ``clip``, whatever the other coins are.
- With ``canaries <= rounds`` (k = 1) each canary is the target client's whole input of one round,
  ``clip`` * a unit vector or zero: exactly the accountant's neighbouring relation.

Scores: the inner product of each released sum, minus the known sum of the other (synthetic)
clients' clipped inputs, with the canary's direction (DP holds against an adversary who knows
everyone else's data, so the auditor may subtract it). A score is about ``a * coin`` plus noise
(a the canary norm), so the auditor guesses on the scores farthest from a/2: "included" above it
(the top k+), "excluded" below (the bottom k-), abstaining on the rest.

What the number means and what it does not: see :func:`audit` and SECURITY.md ("Auditing the
noise empirically").
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import defaults
from ..dp.accounting import epsilon as dp_epsilon
from ..dp.accounting import epsilon_of_rounds
from ..dp.encoding import DpEncoding
from ..dp.spec import DpSpec
from ..encoding import Schema
from ..errors import ParameterError, SecAggError
from ..hazmat.random import RandomSource, system_random
from ..params import SecAggConfig, ThreatModel
from ..protocols.registry import new_client, new_server
from ..router import run_round
from ..simulation import DpRequest, plan_dp_encoding
from .one_run import epsilon_lower_bound

__all__ = ["audit", "CORRUPT", "EXPECTED_DROPOUT", "PROTOCOL", "TARGET"]

PROTOCOL = "secagg"
CORRUPT = 0.1
"""The threat model of the audited configuration: ``secagg simulate``'s defaults (semi-honest)."""
EXPECTED_DROPOUT = 0.05
TARGET = 0
"""The client whose input carries the canaries."""
_CONTEXT = b"secagg audit dp"


class _NoiselessSpec(DpSpec):
    """The planned spec with its noise switched off (``--no-noise``): the same clip, rotation, scale,
    conditional rounding and ring, but :meth:`noise` adds zeros. For audits only: it is not DP."""

    def noise(self, count: int, random: RandomSource = system_random) -> np.ndarray:
        return np.zeros(count, dtype=np.int64)

    def digest(self) -> bytes:  # never the digest of the noisy spec it mimics
        return bytes(b ^ 0xFF for b in super().digest())


@dataclass(frozen=True)
class _Canaries:
    """Canaries laid out per round: row r of ``coords``/``signs`` is round r's k blocks of ``block``."""

    count: int
    per_round: int
    block: int
    norm: float
    coins: np.ndarray  # (rounds * per_round,) bool, False beyond ``count``
    coords: np.ndarray  # (rounds, per_round * block) coordinate indices, disjoint within a row
    signs: np.ndarray  # (rounds, per_round * block) +-1.0

    @classmethod
    def draw(cls, rng: np.random.Generator, count: int, rounds: int, dim: int, clip: float) -> _Canaries:
        k = -(-count // rounds)
        block = dim // k
        coords = np.argsort(rng.random((rounds, dim)), axis=1)[:, : k * block]
        signs = rng.choice(np.array([-1.0, 1.0]), size=(rounds, k * block))
        coins = rng.integers(0, 2, size=rounds * k).astype(bool) & (np.arange(rounds * k) < count)
        # 1 - 1e-6: the float32 inputs stay within the clip after rounding, so the client never clips
        return cls(count, k, block, clip / math.sqrt(k) * (1.0 - 1e-6), coins, coords, signs)

    def directions(self, r: int) -> np.ndarray:
        """Round r's canary directions restricted to their blocks, (k, block), unit norm each."""
        out: np.ndarray = self.signs[r].reshape(self.per_round, self.block) / math.sqrt(self.block)
        return out

    def target_input(self, r: int, dim: int) -> np.ndarray:
        """The target client's round-r input: the sum of the included canaries (norm < clip)."""
        x = np.zeros(dim, dtype=np.float32)
        coins = self.coins[r * self.per_round:(r + 1) * self.per_round]
        x[self.coords[r]] = (self.norm * coins[:, None] * self.directions(r)).ravel()
        return x

    def scores(self, r: int, residual: np.ndarray) -> np.ndarray:
        """<residual, direction> for each of round r's canaries."""
        out: np.ndarray = (residual[self.coords[r]].reshape(self.per_round, self.block)
                           * self.directions(r)).sum(axis=1)
        return out


def _validate(rounds: int, clients: int, dim: int, canaries: int, seed: int, guesses: int | None) -> None:
    for name, value, low in (("rounds", rounds, 1), ("clients", clients, 2), ("dim", dim, 1),
                             ("canaries", canaries, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ParameterError(f"{name} must be an integer >= {low}, got {value!r}")
    if canaries > rounds * dim:
        raise ParameterError(f"{canaries} canaries need disjoint coordinates: at most rounds * dim = "
                             f"{rounds * dim}; lower --canaries or raise --rounds")
    if guesses is not None and (isinstance(guesses, bool) or not isinstance(guesses, int)
                                or not 1 <= guesses <= canaries):
        raise ParameterError(f"guesses must be an integer in [1, canaries={canaries}], got {guesses!r}")


def _config(epsilon: float, delta: float, rounds: int, clients: int, dim: int, clip: float, mechanism: str,
            noise: bool) -> tuple[SecAggConfig, DpSpec]:
    """The audited config (planned as ``simulate`` plans it) and the planned (noisy) spec."""
    threat = ThreatModel.semi_honest(CORRUPT, EXPECTED_DROPOUT)
    plan, encoding = plan_dp_encoding(PROTOCOL, clients, dim, threat, DpRequest(mechanism, epsilon, delta,
                                                                                 rounds, clip))
    if not noise:
        quiet = _NoiselessSpec(**{f.name: getattr(plan.spec, f.name) for f in dataclasses.fields(DpSpec)})
        encoding = DpEncoding(quiet, dim, clients, encoding.min_survivors)
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    return SecAggConfig.for_protocol(PROTOCOL, clients, schema, threat, encoding), plan.spec


def _clipped_sum(inputs: np.ndarray, clip: float) -> np.ndarray:
    norms = np.linalg.norm(inputs, axis=1, keepdims=True)
    total: np.ndarray = (inputs * np.minimum(1.0, clip / np.maximum(norms, 1e-300))).sum(axis=0)
    return total


def _run(config: SecAggConfig, canaries: _Canaries, rng: np.random.Generator, rounds: int,
         clip: float) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Run the rounds; return (canary scores, honest survivors per round, released sum minus the
    clipped inputs: the noise and rounding actually added, all rounds concatenated)."""
    n, dim = config.num_clients, config.schema.size
    scores, honest, residuals = [], [], []
    for r in range(rounds):
        inputs = rng.normal(size=(n, dim)).astype(np.float32)  # ok: synthetic data of the other clients
        inputs[TARGET] = canaries.target_input(r, dim)
        server = new_server(config, round_number=r, context=_CONTEXT)
        parties = {i: new_client(config, i, round_number=r, context=_CONTEXT) for i in range(n)}
        for i, party in parties.items():
            party.set_input(inputs[i])
        result = run_round(server, parties).result
        if result is None or TARGET not in result.survivors:
            raise SecAggError("the audit round released no aggregate containing the target client")
        others = [i for i in result.survivors if i != TARGET]
        known = result.weighted_sum - _clipped_sum(inputs[others].astype(np.float64), clip)
        scores.append(canaries.scores(r, known))
        residuals.append(known - inputs[TARGET].astype(np.float64))
        honest.append(config.honest_noise_count(len(result.survivors)))
    return np.concatenate(scores)[: canaries.count], honest, np.concatenate(residuals)


def _guess(scores: np.ndarray, coins: np.ndarray, norm: float, guesses: int) -> tuple[int, int, int]:
    """(included guesses, excluded guesses, correct) for the ``guesses`` scores farthest from norm/2.

    A score is ``norm * coin`` plus symmetric noise, so its log-likelihood ratio is increasing in
    ``score - norm/2``: the farthest scores above the midpoint are the top k+ and below it the bottom
    k- of the paper, with k+ + k- = ``guesses`` fixed in advance and the split chosen by the data
    (the bound needs only the number of guesses fixed).
    """
    centred = scores - norm / 2.0
    chosen = np.argsort(-np.abs(centred), kind="stable")[:guesses]
    guess_in = centred[chosen] > 0
    return int(guess_in.sum()), int((~guess_in).sum()), int((guess_in == coins[chosen]).sum())


def _candidates(canaries: int, guesses: int | None) -> list[int]:
    """The guess counts tried: ``guesses`` alone, or canaries, /2, /4, /8, /16 (at least 2 each),
    fixed before the run (the confidence is split between them, Bonferroni)."""
    if guesses is not None:
        return [guesses]
    return sorted({canaries >> i for i in range(5) if canaries >> i >= 2} or {canaries}, reverse=True)


def audit(
    epsilon: float,
    *,
    delta: float = defaults.DP_DELTA,
    rounds: int = 4,
    clients: int = 10,
    dim: int = 1024,
    clip: float = defaults.DP_L2_CLIP,
    canaries: int = 256,
    mechanism: str = "ddgauss",
    noise: bool = True,
    seed: int = 0,
    confidence: float = 0.95,
    guesses: int | None = None,
) -> dict[str, Any]:
    """One-run DP audit of the configuration ``secagg simulate --dp`` would run (JSON-ready report).

    Guarantees: with probability at least ``confidence`` (over the canary coins and the noise), the
    rounds actually run are NOT (eps, delta)-DP with respect to one canary's inclusion for any eps
    below ``empirical_epsilon_lb``. Each canary's inclusion changes one client's input in one round
    by at most ``clip``, so a lower bound above ``accounted_epsilon`` (the accountant's epsilon for
    the rounds run, honest survivors per round, as ``simulate`` reports it) or, tighter, above
    ``accounted_epsilon_per_canary`` (the accountant applied to one canary's shift) means a bug.
    Does not: prove privacy (a small bound is what a correct mechanism gives, and what a subtly
    broken one may give too), or reach ``accounted_epsilon``: one client's budget is shared by its
    canaries, so with noise the bound stays far below it (see SECURITY.md). Canaries, coins and the
    other clients' data come from a numpy RNG seeded with ``seed``; keys and noise from the system
    CSPRNG, so two runs with one seed differ in the noise.

    Raises:
        ParameterError: invalid parameters, or no ring width / noise meets the target.
    """
    _validate(rounds, clients, dim, canaries, seed, guesses)
    if not 0 < confidence < 1:
        raise ParameterError(f"confidence must be in (0, 1), got {confidence!r}")
    start = time.perf_counter()
    config, spec = _config(epsilon, delta, rounds, clients, dim, clip, mechanism, noise)
    rng = np.random.default_rng(seed)  # ok: canary choice, coins and synthetic data, recorded as seed
    layout = _Canaries.draw(rng, canaries, rounds, dim, clip)
    scores, honest, residual = _run(config, layout, rng, rounds, clip)
    coins = layout.coins[: layout.count]
    candidates = _candidates(canaries, guesses)
    level = 1.0 - (1.0 - confidence) / len(candidates)
    tried = []
    for k in candidates:
        high, low, correct = _guess(scores, coins, layout.norm, k)
        tried.append({"guesses": k, "guesses_included": high, "guesses_excluded": low, "correct": correct,
                      "epsilon_lb": epsilon_lower_bound(canaries, k, correct, delta, level)})
    best = max(tried, key=lambda row: (row["epsilon_lb"], row["guesses"]))
    accounted = epsilon_of_rounds(spec, dim, honest, delta)
    shifted = dataclasses.replace(spec, l2_clip=layout.norm)
    per_canary = dp_epsilon(shifted, dim, min(honest), 1, delta)
    return {
        "empirical_epsilon_lb": best["epsilon_lb"],
        "accounted_epsilon": accounted,
        "accounted_epsilon_per_canary": per_canary,
        "ok": bool(best["epsilon_lb"] <= accounted),
        "exceeds_per_canary_reference": bool(best["epsilon_lb"] > per_canary),
        "noise": noise,
        "mechanism": mechanism,
        "target_epsilon": epsilon,
        "delta": delta,
        "confidence": confidence,
        "rounds": rounds,
        "clients": clients,
        "dim": dim,
        "clip": clip,
        "seed": seed,
        "canaries": canaries,
        "canaries_per_round": layout.per_round,
        "canary_norm": layout.norm,
        "included": int(coins.sum()),
        "guesses": best["guesses"],
        "guesses_included": best["guesses_included"],
        "guesses_excluded": best["guesses_excluded"],
        "correct": best["correct"],
        "guess_counts_tried": tried,
        "per_guess_count_confidence": level,
        "honest_survivors": honest,
        "protocol": PROTOCOL,
        "threat": {"adversary": "semi-honest", "corrupt": CORRUPT, "expected_dropout": EXPECTED_DROPOUT},
        "target_client": TARGET,
        "noise_std_per_client": spec.noise_std,
        "scale": spec.scale,
        "bits": spec.bits,
        "planned_noise_std": math.sqrt(clients) * spec.noise_std / spec.scale if noise else 0.0,
        "measured_noise_std": float(np.std(residual)),
        "seconds": time.perf_counter() - start,
    }
