"""Thresholds: which (n, k, t, c) a config accepts, what the choosers return, liveness at the
boundary, and a Harary graph that neither the advertisers nor the server's keys can move.

The acceptance oracles are computed here from SECURITY.md's inequalities (closed forms for the
complete graph), and compared with both :class:`secagg.bounds.ThresholdBounds` and
``SecAggConfig.__post_init__``. Hypothesis runs derandomized so a failure always reproduces.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from secagg import (
    FixedPoint, InsufficientParties, ParameterError, ProtocolAbort, Schema, SecAggClient, SecAggConfig,
    SecAggServer, Stage, ThreatModel,
)
from secagg.bounds import ThresholdBounds
from secagg.graphparams import corrupt_neighbour_bound
from secagg.protocols.secagg.common import neighbours, neighbours_of, setup_id, unrecoverable_seeds
from secagg.router import run_round

from .helpers import encoded_inputs, make_parties, predict, ring_sum, small_config

SCHEMA = Schema.of(np.zeros(1, dtype=np.float32))
T_GT_CNB = "t > c_nb: "
TWO_Q = "2q > n + c: "
ISOLATION = "max(2t - h, t + q - n) >= c_nb + 2: "
NAMES = (T_GT_CNB, TWO_Q, ISOLATION)


def _threat(c: int, n: int, malicious: bool) -> ThreatModel:
    return ThreatModel.malicious(c / n, 0.0) if malicious else ThreatModel.semi_honest(c / n, 0.0)


def _config(n: int, t: int, c: int, malicious: bool, degree: int | None = None) -> SecAggConfig:
    return SecAggConfig(n, t, SCHEMA, FixedPoint(max_clients=n), degree, threat=_threat(c, n, malicious))


def _quorum(n: int, t: int, c: int, malicious: bool) -> int:
    """SECURITY.md: q = t (semi-honest), max(t, floor((n + c)/2) + 1) (malicious)."""
    return max(t, (n + c) // 2 + 1) if malicious else t


def _refusal(n: int, t: int, c: int, malicious: bool, degree: int | None = None) -> str | None:
    """The ParameterError text for this config, or None if it is accepted."""
    try:
        config = _config(n, t, c, malicious, degree)
    except ParameterError as exc:
        return str(exc)
    assert config.corrupt_bound == c and config.threshold == t
    return None


def _named(message: str) -> set[str]:
    return {name for name in NAMES if name in message}


# -- the complete graph -------------------------------------------------------------------------------


@settings(max_examples=150, derandomize=True)
@given(n=st.integers(3, 60), data=st.data(), malicious=st.booleans())
@example(n=3, data=None, malicious=True)
@example(n=60, data=None, malicious=True)
def test_complete_graph_accepts_exactly_the_safe_thresholds(n: int, data: st.DataObject | None, malicious: bool) -> None:
    """Accepted iff no inequality breaks, for every t in [1, n]; the refusal names each broken one.

    Closed form (SECURITY.md): semi-honest t >= c + 1; malicious t >= ceil((n + c + 2)/2), the
    smallest t with t + q >= n + c + 2 (at q = max(t, floor((n + c)/2) + 1) this forces q = t).
    """
    c = data.draw(st.integers(0, n - 1)) if data is not None else n - 2
    t_min = -(-(n + c + 2) // 2) if malicious else c + 1
    accepted = []
    for t in range(1, n + 1):
        q = _quorum(n, t, c, malicious)
        broken = ThresholdBounds(n, n, t, c, c, q, malicious).violations()
        refusal = _refusal(n, t, c, malicious)
        assert (refusal is None) == (broken == []) == (t >= t_min), (n, c, t, broken, refusal)
        if refusal is None:
            accepted.append(t)
            continue
        adversary = "malicious" if malicious else "semi-honest"
        assert refusal.startswith(f"{adversary} secagg with n={n}, k=None, t={t} breaks "), refusal
        assert refusal.endswith("(SECURITY.md, 'Thresholds')"), refusal
        expected = {T_GT_CNB} if t <= c else set()
        if malicious and t + q < n + c + 2:
            expected.add(ISOLATION)
        assert _named(refusal) == expected, (refusal, expected)  # 2q > n + c always holds here
        assert all(v.split(":")[0] in refusal for v in broken)
        if ISOLATION in expected:
            assert f"t={t}, h={n}, q={q}, n={n}, c_nb={c}; " in refusal
    if t_min > n:
        assert accepted == [] and c >= n - 1
        return
    assert accepted == list(range(t_min, n + 1))
    if malicious:
        q = _quorum(n, t_min, c, True)
        assert q == t_min and t_min + q - (n + c + 2) in (0, 1)
        below = _refusal(n, t_min - 1, c, True)
        assert below is not None and _named(below) == {ISOLATION}, below
        chosen = SecAggConfig.secagg(n, SCHEMA, ThreatModel.malicious(c / n, 0.0))
        assert (chosen.threshold, chosen.quorum) == (t_min, t_min)
        assert chosen.bounds().min_honest_inputs() == 2 + (t_min + q - (n + c + 2))
    elif t_min > 1:
        assert _named(_refusal(n, t_min - 1, c, False) or "") == {T_GT_CNB}


def test_bounds_name_each_inequality_on_its_own() -> None:
    """Hand-worked cases, one broken inequality each (the config's quorum never breaks 2q > n + c)."""
    only = {
        T_GT_CNB: ThresholdBounds(10, 10, 2, 2, 2, 2, False),
        TWO_Q: ThresholdBounds(10, 10, 9, 2, 2, 6, True),  # 2q = 12 = n + c; max(8, 5) - 2 = 6 honest
        ISOLATION: ThresholdBounds(10, 10, 6, 2, 2, 7, True),  # 2q = 14 > 12; max(2, 3) - 2 = 1 < 2
    }
    assert [v.split(": ")[0] + ": " for v in only[T_GT_CNB].violations()] == [T_GT_CNB]
    assert [v.split(": ")[0] + ": " for v in only[TWO_Q].violations()] == [TWO_Q]
    assert only[TWO_Q].min_honest_inputs() == 6
    assert [v.split(": ")[0] + ": " for v in only[ISOLATION].violations()] == [ISOLATION]
    assert only[ISOLATION].min_honest_inputs() == 1
    both = ThresholdBounds(10, 10, 6, 2, 2, 6, True)  # q = 6 also breaks 2q > n + c
    assert [v.split(": ")[0] + ": " for v in both.violations()] == [TWO_Q, ISOLATION]
    assert ThresholdBounds(10, 10, 7, 2, 2, 7, True).violations() == []  # t = q = ceil(14/2)
    assert ThresholdBounds(10, 10, 7, 2, 2, 7, True).min_honest_inputs() == 2
    assert ThresholdBounds(10, 11, 0, 0, 0, 0, False).violations()[0].startswith("1 <= t <= h: t=0")


# -- SecAgg+ with an explicit degree ------------------------------------------------------------------


@settings(max_examples=150, derandomize=True)
@given(n=st.integers(5, 60), data=st.data(), malicious=st.booleans())
def test_harary_graph_accepts_exactly_the_safe_thresholds(n: int, data: st.DataObject, malicious: bool) -> None:
    """Explicit even k < n - 1: accepted iff no inequality breaks, for every t in [1, k + 1].

    h = k + 1 and c_nb = the tail bound t1 (<= min(k, c)). graphparams' malicious rule
    2t >= k + t1 + 3 is sufficient, so every t meeting it (and t > t1) is accepted.
    """
    k = 2 * data.draw(st.integers(1, (n - 2) // 2))
    c = data.draw(st.integers(0, n - 1))
    cnb = corrupt_neighbour_bound(n, k, c / n, malicious)
    assert 0 <= cnb <= min(k, c)
    h = k + 1
    for t in range(1, h + 1):
        q = _quorum(n, t, c, malicious)
        broken = ThresholdBounds(n, h, t, c, cnb, q, malicious).violations()
        safe = t > cnb and (not malicious or max(2 * t - h, t + q - n) >= cnb + 2)
        refusal = _refusal(n, t, c, malicious, k)
        assert (refusal is None) == (broken == []) == safe, (n, k, c, cnb, t, broken, refusal)
        if malicious and t > cnb and 2 * t >= k + cnb + 3:
            assert refusal is None, refusal
        if refusal is not None:
            assert f"secagg+ with n={n}, k={k}, t={t} breaks " in refusal
            expected = {T_GT_CNB} if t <= cnb else set()
            if malicious and max(2 * t - h, t + q - n) < cnb + 2:
                expected.add(ISOLATION)
            assert _named(refusal) == expected, (refusal, expected)
            if ISOLATION in expected:
                assert f"t={t}, h={h}, q={q}, n={n}, c_nb={cnb}; " in refusal
        else:
            config = _config(n, t, c, malicious, k)
            assert (config.holders, config.corrupt_holders, config.quorum) == (h, cnb, q)
    with pytest.raises(ParameterError, match=rf"threshold t={h + 1} must be in \[1, {h}\]"):
        _config(n, h + 1, c, malicious, k)


# -- what the choosers return -------------------------------------------------------------------------


@settings(max_examples=300, derandomize=True)
@given(
    n=st.integers(5, 3000),
    gamma=st.floats(0.0, 0.3),
    delta=st.floats(0.0, 0.3),
    malicious=st.booleans(),
)
@example(n=5, gamma=0.3, delta=0.3, malicious=True)
@example(n=3000, gamma=0.3, delta=0.3, malicious=True)
@example(n=3000, gamma=0.0, delta=0.0, malicious=True)
@example(n=20, gamma=0.1, delta=0.1, malicious=True)
@example(n=7, gamma=1 / 7, delta=0.2, malicious=True)
def test_chosen_parameters_satisfy_every_bound(n: int, gamma: float, delta: float, malicious: bool) -> None:
    """secagg / secagg_plus return a config meeting every inequality (recomputed here), or refuse
    because the threshold exceeds the expected survivors; the expected survivors reach the quorum."""
    threat = ThreatModel.malicious(gamma, delta) if malicious else ThreatModel.semi_honest(gamma, delta)
    c = math.floor(gamma * n + 1e-9)
    survivors = n - math.floor(delta * n + 1e-9)
    for maker in (SecAggConfig.secagg, SecAggConfig.secagg_plus):
        try:
            config = maker(n, SCHEMA, threat)
        except ParameterError as exc:
            assert "exceeds the" in str(exc) and f"{survivors} expected survivors of n={n}" in str(exc), str(exc)
            continue
        k, t = config.degree, config.threshold
        if maker is SecAggConfig.secagg:
            assert k is None
        assert k is None or (k % 2 == 0 and 2 <= k < n - 1)
        h = n if k is None else k + 1
        cnb = c if k is None else corrupt_neighbour_bound(n, k, gamma, malicious)
        q = _quorum(n, t, c, malicious)
        assert (config.holders, config.corrupt_bound, config.corrupt_holders, config.quorum) == (h, c, cnb, q)
        bounds = config.bounds()
        assert bounds == ThresholdBounds(n, h, t, c, cnb, q, malicious)
        assert bounds.violations() == []
        assert 1 <= t <= h and t > cnb
        assert q <= survivors, "the expected dropouts leave fewer clients than the quorum"
        summary = config.security_summary()
        if malicious:
            assert bounds.min_honest_inputs() >= 2 and summary["min_honest_inputs"] >= 2
            assert max(2 * t - h, t + q - n) - cnb >= 2
            assert config.quorum * 2 > n + config.corrupt_bound
            if k is not None:
                assert 2 * t >= k + cnb + 3 and summary["grinding_bits"] == 40
        else:
            assert bounds.min_honest_inputs() == max(1, t - c)


# -- liveness at the boundary -------------------------------------------------------------------------


def _full_graph(config: SecAggConfig, context: bytes = b"ctx") -> dict[int, tuple[int, ...]]:
    n = config.num_clients
    return neighbours(range(n), config.degree, setup_id(config, 0, context), n)


def _maximal_mask_dropouts(config: SecAggConfig) -> tuple[set[int], list[int]]:
    """Greedily drop clients at the mask stage while the round stays viable and keeps a quorum."""
    n, t, q = config.num_clients, config.threshold, config.quorum
    graph, drops = _full_graph(config), set[int]()
    for x in range(n):
        survivors = predict(graph, t, n, {d: "mask" for d in drops | {x}})
        if survivors is not None and len(survivors) >= q:
            drops.add(x)
    survivors = predict(graph, t, n, {d: "mask" for d in drops})
    assert survivors is not None
    for x in survivors:  # maximal: one more mask dropout breaks it
        more = predict(graph, t, n, {d: "mask" for d in drops | {x}})
        assert more is None or len(more) < q
    return drops, survivors


BOUNDARY = {
    "complete-malicious-n7-c1": ("secagg", 7, ThreatModel.malicious(1 / 7, 0.2)),
    "complete-malicious-n8-c2": ("secagg", 8, ThreatModel.malicious(0.25, 0.25)),
    "secagg+-malicious-n20": ("secagg+", 20, ThreatModel.malicious(0.1, 0.1)),
    "secagg+-semi-honest-n20": ("secagg+", 20, ThreatModel.semi_honest(0.1, 0.1)),
}


@pytest.mark.parametrize("name", sorted(BOUNDARY))
def test_round_with_the_most_dropouts_the_threshold_allows_is_exact(name: str) -> None:
    protocol, n, threat = BOUNDARY[name]
    config = small_config(n, 8, protocol, threat)
    drops, survivors = _maximal_mask_dropouts(config)
    if config.degree is None:
        assert len(survivors) == config.threshold == config.quorum, "exactly t survive"
    else:
        assert protocol == "secagg+" and len(survivors) >= config.quorum
    server, clients = make_parties(config)
    encoded = encoded_inputs(config, clients, seed=n)
    trace = run_round(server, clients, {d: "mask" for d in drops})
    assert list(trace.result.survivors) == survivors
    assert sorted(c for c, s in trace.result.dropped.items() if s == "mask") == sorted(drops)
    assert np.array_equal(trace.result.ring_sum, ring_sum(config, encoded, survivors))


@pytest.mark.parametrize(
    ("name", "stage", "message"),
    [
        ("complete-malicious-n7-c1", "mask", "only 4 clients sent masked inputs; 5 are needed"),
        ("complete-malicious-n7-c1", "consistency", "only 4 clients signed the survivor set; 5 are needed"),
        ("complete-malicious-n7-c1", "unmask", r"only 4 shares for client \d+; threshold is 5"),
        ("complete-malicious-n8-c2", "mask", "only 5 clients sent masked inputs; 6 are needed"),
        ("complete-malicious-n8-c2", "unmask", r"only 5 shares for client \d+; threshold is 6"),
        ("secagg+-malicious-n20", "mask", None),
        ("secagg+-semi-honest-n20", "mask", None),
    ],
)
def test_one_more_dropout_releases_nothing(name: str, stage: str, message: str | None) -> None:
    """The server stops at the first check that fails, in order: quorum, seed recoverability
    (before any unmask request), then t shares per secret; ``None`` means derive which from the graph."""
    protocol, n, threat = BOUNDARY[name]
    config = small_config(n, 8, protocol, threat)
    drops, survivors = _maximal_mask_dropouts(config)
    if message is None:
        message = re.escape(_first_failed_check(config, survivors[1:]))
    schedule = {d: "mask" for d in drops}
    schedule[survivors[0]] = stage
    server, clients = make_parties(config)
    encoded_inputs(config, clients, seed=n)
    with pytest.raises(InsufficientParties, match=message):
        run_round(server, clients, schedule)
    assert server.stage is Stage.ABORTED
    with pytest.raises(ProtocolAbort, match="no aggregate: the round is in stage aborted"):
        server.result()


def _first_failed_check(config: SecAggConfig, remaining: list[int]) -> str:
    t, q = config.threshold, config.quorum
    if len(remaining) < q:
        return f"only {len(remaining)} clients sent masked inputs; {q} are needed"
    lacking = unrecoverable_seeds(remaining, _full_graph(config), t)
    if lacking:
        return f"survivors {lacking[:8]} have fewer than t = {t} of their share holders alive"
    return f"; threshold is {t}"  # a dropped client's mask key lacks t holders at the unmask stage


# -- the graph ----------------------------------------------------------------------------------------

GRAPH_N, GRAPH_K = 40, 6


def _graph_config() -> SecAggConfig:
    return small_config(GRAPH_N, 1, threshold=4, degree=GRAPH_K, threat=ThreatModel.semi_honest(0.0, 0.1))


def _server_graph(
    config: SecAggConfig, advertisers: list[int], context: bytes, round_number: int = 0
) -> dict[int, tuple[int, ...]]:
    """A fresh server's graph after fresh clients ``advertisers`` advertise (new keys every call)."""
    server = SecAggServer(config, round_number=round_number, context=context)
    for cid in advertisers:
        server.receive(SecAggClient(config, cid, round_number=round_number, context=context).advertise())
    server.advance()
    return server.graph


@settings(max_examples=20, derandomize=True)
@given(advertisers=st.sets(st.integers(0, GRAPH_N - 1), min_size=4))
@example(advertisers=set(range(GRAPH_N)))
def test_graph_depends_only_on_the_setup_and_who_advertised(advertisers: set[int]) -> None:
    config, listed = _graph_config(), sorted(advertisers)
    full = _full_graph(config, b"ctx")
    assert all(len(v) == GRAPH_K and all(u in full[w] for w in v) for u, v in full.items())
    restricted = {u: tuple(v for v in full[u] if v in advertisers) for u in listed}
    first, second = _server_graph(config, listed, b"ctx"), _server_graph(config, listed, b"ctx")
    assert first == second == restricted
    setup = setup_id(config, 0, b"ctx")
    assert neighbours(listed, GRAPH_K, setup, GRAPH_N) == restricted
    assert all(neighbours_of(u, listed, GRAPH_K, setup, GRAPH_N) == restricted[u] for u in listed)


def test_graph_changes_with_the_context_and_round() -> None:
    config, everyone = _graph_config(), list(range(GRAPH_N))
    base = _server_graph(config, everyone, b"ctx")
    assert base == _full_graph(config, b"ctx")
    assert _server_graph(config, everyone, b"ctx-2") != base
    assert _server_graph(config, everyone, b"ctx", round_number=1) != base
