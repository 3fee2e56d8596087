"""A search over a deviating server's strategies: can it learn a sum of too few honest inputs?

Not a list of scripted attacks: for a parameter set (n, graph, t, q, c) this module walks the
server's choices in one round of the malicious variant and decides, from the shares honest clients
would release, which sums of honest inputs become computable. Its model of the protocol:

- Corrupt clients (a set C, |C| = c) hold every share sent to them and follow the server.
- The server shows each honest client u a set P_u of its neighbours' share ciphertexts; u refuses
  unless |P_u| + 1 >= t, then masks its input with exactly P_u:
  y_u = x_u + PRG(b_u) + sum_{v in P_u} +-PRG(s_uv).
- The server offers survivor sets for signing. An honest client signs one set A, only if it is in
  A and |A| >= q; the server needs q signatures on A (corrupt clients sign anything) before honest
  clients answer.
- An honest responder x holding owner w's share (w in P_x, or w = x) releases it as a self-mask
  seed share if w is in x's A, and as a mask-key share if w is listed dropped; never both.
- The server learns b_w (s_w) once t shares of it are out; a pairwise mask is known once one of the
  two mask keys is. It learns sum_{w in S} x_w iff every b_w (w in S) is known and every unknown
  pairwise mask in sum_{w in S} y_w cancels: for w in S and v in P_w with p_wv unknown, v is in S
  and w is in P_v. (A combination with unequal coefficients is masked by the same uniform terms.)

Two search modes:

- :func:`brute_force` (tiny n): every corrupt set, every survivor set, every P_u for every honest u.
- :func:`search` (n <= 7 exhaustive, random beyond): every corrupt set C, every survivor set
  A = C + A_h, and for every candidate group S of A_h the delivery plan that best isolates S. The
  reductions are dominance arguments (each only adds to what the server learns): corrupt sets of
  exactly c stand for all sets up to c (a corrupt client can act honestly); corrupt clients
  belong in A and in every P; honest clients outside S are shown every neighbour's ciphertext; each
  dropped list names everyone outside A; members of S are shown C, their S neighbours, and the honest
  clients outside A whose mask keys the server can recover. The test suite checks the two modes
  agree wherever brute force is feasible. Split strategies (two survivor sets, each with q
  signatures from disjoint honest signers) are searched separately.

A leak is a computable sum over fewer honest inputs than SECURITY.md promises
(:meth:`secagg.bounds.ThresholdBounds.min_honest_inputs`), or any split strategy.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..bounds import ThresholdBounds
from ..errors import ParameterError
from .adversary import ReplayableRandom

__all__ = ["Model", "Strategy", "Leak", "exposure", "search", "brute_force", "harary", "EXHAUSTIVE_CLIENTS"]

EXHAUSTIVE_CLIENTS = 7
MAX_REPORTED_LEAKS = 20


def harary(num_clients: int, degree: int | None) -> dict[int, frozenset[int]]:
    """H(n, k) on the identity ring (every Harary labelling is isomorphic; the search tries every
    corrupt set, so one labelling covers all placements); ``None`` is the complete graph."""
    n = num_clients
    if degree is None or degree >= n - 1:
        return {u: frozenset(v for v in range(n) if v != u) for u in range(n)}
    half = degree // 2
    return {u: frozenset((u + d) % n for d in range(-half, half + 1) if d) for u in range(n)}


@dataclass(frozen=True)
class Model:
    """The parameters under attack and the public graph."""

    num_clients: int
    degree: int | None
    threshold: int
    quorum: int
    corrupt: int
    promised: int
    graph: Mapping[int, frozenset[int]] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def build(cls, num_clients: int, degree: int | None, threshold: int, quorum: int, corrupt: int,
              promised: int | None = None) -> Model:
        """A model for any parameters, including ones the config refuses (to test the search)."""
        n = num_clients
        if not 2 <= n or not 0 <= corrupt < n or degree is not None and (degree < 2 or degree % 2):
            raise ParameterError("the search needs n >= 2, 0 <= c < n and an even degree >= 2")
        graph = harary(n, degree)
        holders = len(graph[0]) + 1
        if promised is None:
            bounds = ThresholdBounds(n, holders, threshold, corrupt, min(corrupt, holders - 1), quorum, True)
            promised = bounds.min_honest_inputs()
        return cls(n, degree, threshold, quorum, corrupt, promised, graph)

    @classmethod
    def of_config(cls, config: Any) -> Model:
        """The model of a validated :class:`~secagg.SecAggConfig` (malicious variant).

        The search places corrupt clients anywhere, so it assumes c_nb = min(c, k): for SecAgg+ at
        small n this is the worst case the 2^-sigma bound t1 would otherwise exclude.
        """
        if not config.threat.is_malicious:
            raise ParameterError("the search models a deviating server, which only the malicious variant defends "
                                 "against; the semi-honest variant assumes the server follows the protocol")
        degree = config.degree if config.holders < config.num_clients else None
        return cls.build(config.num_clients, degree, config.threshold, config.quorum, config.corrupt_bound,
                         config.bounds().min_honest_inputs())

    def signable(self, alive: frozenset[int]) -> bool:
        """Whether an honest member of ``alive`` would sign it."""
        return len(alive) >= self.quorum


@dataclass(frozen=True)
class Strategy:
    """One choice of the server: corrupt set, survivor set(s) per honest responder, deliveries."""

    corrupt: frozenset[int]
    views: Mapping[int, frozenset[int]]  # honest responder -> the survivor set it signed
    shown: Mapping[int, frozenset[int]]  # honest client -> the peers whose shares it was shown

    def describe(self) -> dict[str, Any]:
        sets = sorted({tuple(sorted(a)) for a in self.views.values()})
        return {
            "corrupt": sorted(self.corrupt),
            "survivor_sets": [list(a) for a in sets],
            "shown": {str(u): sorted(p) for u, p in sorted(self.shown.items())},
            "dropped_lists": "every client outside the responder's survivor set",
        }


@dataclass(frozen=True)
class Leak:
    strategy: Strategy
    exposed: tuple[int, ...]
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy.describe(), "exposed": list(self.exposed), "reason": self.reason}


def exposure(model: Model, strategy: Strategy) -> tuple[int, ...]:
    """The smallest nonempty set of honest clients whose input sum the server can compute; () if none.

    Follows the module docstring's rules for what is released and what cancels.
    """
    g, t, corrupt = model.graph, model.threshold, strategy.corrupt
    honest = [u for u in range(model.num_clients) if u not in corrupt]
    shown = strategy.shown
    sent = {u for u in honest if len(shown[u]) + 1 >= t}  # the others refused before masking
    views = {x: a for x, a in strategy.views.items() if x in sent}  # only they sign and respond
    for alive in set(views.values()):
        signers = sum(1 for a in views.values() if a == alive) + len(alive & corrupt)
        if signers < model.quorum or not model.signable(alive):
            return ()  # no honest client answers an unmask request without q signatures
    holds = {x: shown[x] | {x} for x in views}
    mask_key_known = set(corrupt)
    seed_known = set(corrupt)
    for w in honest:
        base = len(g[w] & corrupt)
        seeds = base + sum(1 for x, a in views.items() if w in holds[x] and w in a)
        keys = base + sum(1 for x, a in views.items() if w in holds[x] and w != x and w not in a)
        if seeds >= t:
            seed_known.add(w)
        if keys >= t:
            mask_key_known.add(w)
    best: tuple[int, ...] = ()
    for start in sorted(sent):
        group, frontier, ok = {start}, [start], True
        while frontier and ok:
            w = frontier.pop()
            if w not in seed_known:
                ok = False
                break
            if w in mask_key_known:
                continue  # every mask in y_w is known
            for v in shown[w]:
                if v in mask_key_known:
                    continue
                if v not in sent or w not in shown[v]:
                    ok = False  # an unknown mask in y_w that nothing cancels
                    break
                if v not in group:
                    group.add(v)
                    frontier.append(v)
        if ok and (not best or len(group) < len(best)):
            best = tuple(sorted(group))
    return best


def _survivor_sets(model: Model, corrupt: frozenset[int], honest: Sequence[int]) -> Iterator[frozenset[int]]:
    """Every signable A that contains the corrupt set (dominance: corrupt clients in A cost nothing)."""
    for size in range(max(0, model.quorum - len(corrupt)), len(honest) + 1):
        for part in itertools.combinations(honest, size):
            alive = corrupt | frozenset(part)
            if model.signable(alive):
                yield alive


def _isolating_plan(model: Model, corrupt: frozenset[int], alive: frozenset[int], group: frozenset[int],
                    honest: Sequence[int]) -> dict[int, frozenset[int]]:
    """The deliveries that best isolate ``group`` within survivor set ``alive`` (module docstring)."""
    g, t = model.graph, model.threshold
    outside = frozenset(u for u in honest if u not in alive)
    recoverable = frozenset(h for h in outside if len(g[h] & alive) >= t)
    plan = {u: g[u] for u in honest}
    for w in group:
        plan[w] = g[w] & (corrupt | group | recoverable)
    return plan


def _split(model: Model, corrupt: frozenset[int], honest: Sequence[int],
           sets: list[frozenset[int]]) -> Strategy | None:
    """Two signable survivor sets whose honest signers can be disjoint (each set gets q signatures)."""
    need = model.quorum - len(corrupt)
    for a1, a2 in itertools.combinations(sets, 2):
        h1, h2 = a1 - corrupt, a2 - corrupt
        if len(h1) >= need and len(h2) >= need and len(h1 | h2) >= 2 * need:
            only1, only2, both = sorted(h1 - h2), sorted(h2 - h1), sorted(h1 & h2)
            signers1 = only1 + both[: max(0, need - len(only1))]
            signers2 = only2 + [u for u in both if u not in signers1]
            views = {x: a1 for x in signers1} | {x: a2 for x in signers2}
            shown = {u: model.graph[u] for u in honest}
            return Strategy(corrupt, views, shown)
    return None


@dataclass
class SearchReport:
    model: Model
    strategies: int = 0
    exhaustive: bool = True
    leaks: list[Leak] = field(default_factory=list)
    leak_count: int = 0
    min_learnable: int | None = None

    def add(self, strategy: Strategy, exposed: tuple[int, ...], reason: str = "") -> None:
        self.strategies += 1
        if exposed and (self.min_learnable is None or len(exposed) < self.min_learnable):
            self.min_learnable = len(exposed)
        if (exposed and len(exposed) < self.model.promised) or reason:
            self.leak_count += 1
            if len(self.leaks) < MAX_REPORTED_LEAKS:
                why = reason or f"sum of {len(exposed)} honest inputs computable; SECURITY.md promises >= {self.model.promised}"
                self.leaks.append(Leak(strategy, exposed, why))

    def to_json(self) -> dict[str, Any]:
        m = self.model
        return {
            "clients": m.num_clients,
            "degree": m.degree if m.degree is not None else m.num_clients - 1,
            "threshold": m.threshold,
            "quorum": m.quorum,
            "corrupt_bound": m.corrupt,
            "promised_min_honest_inputs": m.promised,
            "min_learnable_honest_inputs": self.min_learnable,
            "strategies": self.strategies,
            "exhaustive": self.exhaustive,
            "leak_count": self.leak_count,
            "leaks": [leak.describe() for leak in self.leaks],
        }


def _corrupt_sets(model: Model) -> Iterable[frozenset[int]]:
    return (frozenset(c) for c in itertools.combinations(range(model.num_clients), model.corrupt))


def _check_corrupt_holders(model: Model, corrupt: frozenset[int], honest: Sequence[int], report: SearchReport) -> None:
    """Corrupt holders alone: t of them reconstruct an honest client's two secrets."""
    for u in honest:
        if len(model.graph[u] & corrupt) >= model.threshold:
            shown = {v: model.graph[v] for v in honest}
            report.add(Strategy(corrupt, {}, shown), (u,), f"client {u} has >= t corrupt share holders")


def _search_one(model: Model, corrupt: frozenset[int], report: SearchReport,
                survivor_sets: Iterable[frozenset[int]] | None = None, max_group: int | None = None) -> None:
    honest = [u for u in range(model.num_clients) if u not in corrupt]
    _check_corrupt_holders(model, corrupt, honest, report)
    sets = list(_survivor_sets(model, corrupt, honest)) if survivor_sets is None else list(survivor_sets)
    split = _split(model, corrupt, honest, sets)
    if split is not None:
        report.add(split, exposure(model, split), "two survivor sets each gather q signatures (2q > n + c fails)")
    for alive in sets:
        alive_honest = sorted(alive - corrupt)
        views = {x: alive for x in alive_honest}
        limit = len(alive_honest) if max_group is None else min(max_group, len(alive_honest))
        for size in range(1, limit + 1):
            for group in itertools.combinations(alive_honest, size):
                plan = _isolating_plan(model, corrupt, alive, frozenset(group), honest)
                report.add(Strategy(corrupt, views, plan), exposure(model, Strategy(corrupt, views, plan)))


def search(model: Model, *, samples: int = 2000, seed: bytes | None = None) -> SearchReport:
    """Search the server's strategies against ``model``.

    Exhaustive (over the reduced space, see the module docstring) for n <= EXHAUSTIVE_CLIENTS; beyond
    that, ``samples`` random (corrupt set, survivor set, group) triples drawn from a seeded
    SHA-256 counter stream (``seed`` recorded by the caller for replay), plus every group of size
    below the promise for each sampled pair.
    """
    report = SearchReport(model)
    if model.num_clients <= EXHAUSTIVE_CLIENTS:
        for corrupt in _corrupt_sets(model):
            _search_one(model, corrupt, report)
        return report
    report.exhaustive = False
    draw = _Draws(seed if seed is not None else os.urandom(16))
    n = model.num_clients
    for _ in range(samples):
        corrupt = frozenset(draw.sample(range(n), model.corrupt))
        honest = [u for u in range(n) if u not in corrupt]
        extra = draw.below(len(honest) + 1)
        alive = corrupt | frozenset(draw.sample(honest, max(extra, model.quorum - len(corrupt), 0)))
        if not model.signable(alive):
            continue
        _search_one(model, corrupt, report, [alive], max_group=max(1, model.promised - 1))
    return report


class _Draws:
    """Deterministic choices from a replayable SHA-256 stream (not numpy's generator)."""

    def __init__(self, seed: bytes) -> None:
        self._stream = ReplayableRandom(seed)
        self.seed_hex = seed.hex()

    def below(self, bound: int) -> int:
        word = int.from_bytes(self._stream(8), "little")
        return word % bound if bound > 0 else 0

    def sample(self, items: Iterable[int], count: int) -> list[int]:
        pool = list(items)
        out = []
        for _ in range(min(count, len(pool))):
            out.append(pool.pop(self.below(len(pool))))
        return out


def brute_force(model: Model) -> SearchReport:
    """Every corrupt set, every survivor set offered to all, and every delivery to every honest client.

    Feasible only for tiny n (the deliveries alone number prod_u 2^deg(u)); used to check that the
    reductions of :func:`search` lose nothing.
    """
    report = SearchReport(model)
    n, t = model.num_clients, model.threshold
    for corrupt in _corrupt_sets(model):
        honest = [u for u in range(n) if u not in corrupt]
        _check_corrupt_holders(model, corrupt, honest, report)
        options = []
        for u in honest:
            peers = sorted(model.graph[u])
            options.append([frozenset(p) for size in range(max(0, t - 1), len(peers) + 1)
                            for p in itertools.combinations(peers, size)])
        for size in range(model.quorum, n + 1):
            for members in itertools.combinations(range(n), size):
                alive = frozenset(members)
                if not model.signable(alive):
                    continue
                for choice in itertools.product(*options):
                    shown = dict(zip(honest, choice))
                    views = {x: alive for x in honest if x in alive}
                    report.add(Strategy(corrupt, views, shown), exposure(model, Strategy(corrupt, views, shown)))
    return report
