"""The adversary search: no leak at the proven bounds, a leak just below them, and brute force agrees."""

from __future__ import annotations

import json

import pytest

from secagg.audit.cli import search_config
from secagg.audit.search import Model, brute_force, exposure, search, Strategy
from secagg.cli import main
from secagg.errors import ParameterError


def allowed_configs(max_clients: int = 7):
    """Every malicious (n, c, graph) the parameter code accepts for n <= 7 (dropout 0)."""
    for n in range(2, max_clients + 1):
        for c in range(n):
            for protocol, degree in [("secagg", None)] + [("secagg+", k) for k in range(2, n - 1, 2)]:
                try:
                    yield n, c, protocol, degree, search_config(protocol, n, c, 0.0, degree)
                except ParameterError:
                    continue


CONFIGS = list(allowed_configs())


def test_the_sweep_covers_every_n_and_both_graphs() -> None:
    assert {n for n, *_ in CONFIGS} == set(range(2, 8))
    assert any(d is not None for *_, d, _ in CONFIGS)
    assert max(c for _, c, *_ in CONFIGS) >= 4


def test_no_leak_at_the_bounds_for_every_allowed_config() -> None:
    for n, c, protocol, degree, config in CONFIGS:
        model = Model.of_config(config)
        report = search(model)
        assert report.exhaustive and report.strategies > 0, (n, c, protocol, degree)
        assert report.leak_count == 0 and report.leaks == [], (n, c, protocol, degree, report.to_json()["leaks"][:1])
        # The promise is sound everywhere, and exact for the complete graph (the attack reaches it).
        assert report.min_learnable is not None and report.min_learnable >= model.promised >= 2
        if degree is None:
            assert report.min_learnable == model.promised, (n, c)


def test_a_threshold_one_below_the_bound_leaks() -> None:
    for n, c, protocol, degree, config in CONFIGS:
        model = Model.of_config(config)
        below = Model.build(n, model.degree, model.threshold - 1, model.quorum, c, promised=model.promised)
        report = search(below)
        assert report.leak_count > 0 and report.min_learnable is not None, (n, c, protocol, degree)
        assert report.min_learnable < model.promised


def test_a_quorum_with_2q_at_most_n_plus_c_lets_two_survivor_sets_through() -> None:
    for n, c, protocol, degree, config in CONFIGS:
        model = Model.of_config(config)
        below = Model.build(n, model.degree, model.threshold, (n + c) // 2, c, promised=model.promised)
        report = search(below)
        assert any("two survivor sets" in leak.reason for leak in report.leaks), (n, c, protocol, degree)


@pytest.mark.parametrize("params", [
    (4, None, 3, 3, 0), (4, None, 2, 3, 0), (4, None, 3, 2, 0), (5, None, 4, 4, 1), (5, None, 4, 3, 1),
    (5, 2, 3, 3, 0), (5, 2, 2, 3, 0), (5, 2, 3, 4, 1), (6, 2, 3, 4, 0), (6, 2, 3, 4, 1),
])
def test_reductions_lose_nothing_against_brute_force(params) -> None:
    """Brute force tries every delivery to every client; the reduced search must find the same minimum."""
    model = Model.build(*params)
    assert search(model).min_learnable == brute_force(model).min_learnable


def test_the_restricted_delivery_attack_is_what_the_search_finds() -> None:
    """Issue 8, finding 1, as a strategy: victim 1 sees one corrupt and two honest peers, both then dropped."""
    model = Model.build(7, None, 4, 5, 1, promised=2)  # t one below the bound for n = 7, c = 1
    shown = {u: model.graph[u] for u in range(1, 7)}
    shown[1] = frozenset({0, 5, 6})
    alive = frozenset({0, 1, 2, 3, 4})
    strategy = Strategy(frozenset({0}), {x: alive for x in (1, 2, 3, 4)}, shown)
    assert exposure(model, strategy) == (1,)
    valid = Model.build(7, None, 5, 5, 1)
    shown[1] = frozenset({0, 4, 5, 6})  # t - 1 = 4 peers: one of them must be a survivor
    assert exposure(valid, Strategy(frozenset({0}), {x: alive for x in (1, 2, 3, 4)}, shown)) != (1,)


def test_random_mode_beyond_seven_clients_is_replayable_and_finds_the_issue_8_configuration() -> None:
    """n = 20, SecAgg+ k = 8, t = 6, q = 12, two corrupt: the parameters the old finder chose."""
    old = Model.build(20, 8, 6, 12, 2, promised=2)
    seed = b"secagg-search-test-1"
    first, second = search(old, samples=300, seed=seed), search(old, samples=300, seed=seed)
    assert not first.exhaustive and first.leak_count > 0
    assert first.to_json() == second.to_json()
    fixed = Model.of_config(search_config("secagg+", 20, 2, 0.1, None))
    assert (fixed.degree, fixed.threshold) == (10, 8)
    assert search(fixed, samples=300, seed=seed).leak_count == 0


def test_cli_search(capsys) -> None:
    assert main(["audit", "search", "--protocol", "secagg", "--clients", "7", "--corrupt", "1",
                 "--adversary", "malicious", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exhaustive"] is True and out["leaks"] == [] and out["strategies"] > 1000
    assert main(["audit", "search", "--protocol", "secagg+", "--clients", "7", "--corrupt", "0.2", "--degree", "4",
                 "--threshold", "3", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["leaks"] and out["leaks"][0]["exposed"] and out["threshold"] == 3


def test_cli_search_refuses_bad_input_in_one_line(capsys) -> None:
    assert main(["audit", "search", "--clients", "7", "--corrupt", "1.5"]) == 2
    assert main(["audit", "search", "--clients", "7", "--corrupt", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("secagg: error:") for line in err)
