"""``secagg audit dp``: the one-run DP audit (Steinke-Nasr-Jagielski'23) through the real parties.

Seeds are recorded in each call; the noise comes from the system CSPRNG, so the noisy assertions
are ones a correct mechanism fails with negligible probability (see each test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from secagg.audit import dp_audit
from secagg.audit.dp_audit import _Canaries, audit
from secagg.audit.one_run import epsilon_lower_bound, p_value
from secagg.cli import main
from secagg.dp.spec import DpSpec
from secagg.errors import ParameterError

FIELDS = {"empirical_epsilon_lb", "accounted_epsilon", "accounted_epsilon_per_canary", "canaries", "rounds",
          "guesses", "correct", "confidence", "delta", "mechanism", "clients", "dim", "seed", "noise", "ok"}


# -- (c) the lower bound against hand-checked values ----------------------------------------------
def test_all_correct_matches_the_closed_form() -> None:
    # delta = 0, v = r = k: p = q^k, so the bound is logit(q) with q = (1 - confidence)^(1/k)
    assert epsilon_lower_bound(5, 5, 5, 0.0, 0.95) == pytest.approx(0.197763, abs=1e-6)  # by hand: q = 0.549280
    for k in (10, 100, 1000):
        q = 0.05 ** (1 / k)
        assert epsilon_lower_bound(k, k, k, 0.0, 0.95) == pytest.approx(math.log(q / (1 - q)), rel=1e-9)
    assert epsilon_lower_bound(100, 100, 100, 0.0) == pytest.approx(3.492965, abs=1e-6)
    # abstention: with delta = 0 only the guesses count, not the canaries left unguessed
    assert epsilon_lower_bound(1000, 100, 100, 0.0) == pytest.approx(3.492965, abs=1e-6)


def test_half_right_or_delta_too_large_gives_zero() -> None:
    assert epsilon_lower_bound(1000, 1000, 500, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    # 2 m delta >= v: the delta term alone reaches 1 at every epsilon (i = v: (1 - q^v) / v * 2 m delta)
    assert epsilon_lower_bound(10, 10, 10, 0.5) == 0.0


def test_p_value_at_epsilon_zero_is_a_fair_coin() -> None:
    assert p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(2.0**-10)
    assert p_value(10, 10, 9, 0.0, 0.0) == pytest.approx(11 * 2.0**-10)


def test_bound_is_monotone_and_delta_only_lowers_it() -> None:
    bounds = [epsilon_lower_bound(256, 256, v, 1e-5) for v in (150, 180, 220, 256)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert epsilon_lower_bound(256, 256, 256, 1e-5) < epsilon_lower_bound(256, 256, 256, 0.0)
    assert epsilon_lower_bound(256, 256, 256, 1e-5) == pytest.approx(epsilon_lower_bound(256, 256, 256, 0.0),
                                                                     abs=0.01)


@pytest.mark.parametrize("args", [(10, 11, 5, 1e-5), (10, 5, 6, 1e-5), (10, 5, 5, 1.5), (10, 5, -1, 0.0)])
def test_bound_refuses_inconsistent_counts(args: tuple[int, int, int, float]) -> None:
    with pytest.raises(ParameterError):
        epsilon_lower_bound(*args)
    with pytest.raises(ParameterError):
        epsilon_lower_bound(10, 5, 5, 1e-5, confidence=1.0)


# -- canaries are legitimate inputs ---------------------------------------------------------------
def test_canaries_are_orthogonal_within_the_clip_and_seeded() -> None:
    layout = _Canaries.draw(np.random.default_rng(7), 100, 3, 500, 2.0)
    assert (layout.per_round, layout.block) == (34, 14)
    assert layout.coins[100:].sum() == 0 and 30 < layout.coins[:100].sum() < 70
    for r in range(3):
        assert len(set(layout.coords[r].tolist())) == layout.coords.shape[1]  # disjoint supports
        full = np.zeros((layout.per_round, 500))
        full[:, layout.coords[r]] = np.kron(np.eye(layout.per_round), np.ones(layout.block)) \
            * np.tile(layout.directions(r).ravel(), (layout.per_round, 1))
        assert np.allclose(full @ full.T, np.eye(layout.per_round))
    everything = _Canaries(layout.count, layout.per_round, layout.block, layout.norm,
                           np.ones_like(layout.coins), layout.coords, layout.signs)
    assert max(np.linalg.norm(everything.target_input(r, 500).astype(np.float64)) for r in range(3)) <= 2.0
    again = _Canaries.draw(np.random.default_rng(7), 100, 3, 500, 2.0)
    assert np.array_equal(again.coins, layout.coins) and np.array_equal(again.coords, layout.coords)


# -- (a) with noise the bound stays below the accountant; (b) without, far above -----------------
@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_noisy_audit_stays_below_the_accounted_epsilon(mechanism: str) -> None:
    report = audit(2.0, mechanism=mechanism, seed=11)
    assert FIELDS <= set(report) and report["noise"] is True and report["mechanism"] == mechanism
    assert report["accounted_epsilon"] == pytest.approx(2.0, rel=1e-3)  # planned for these rounds
    assert report["accounted_epsilon_per_canary"] < report["accounted_epsilon"]
    # a correct mechanism exceeds the accounted epsilon with probability far below 5%: each canary's
    # true epsilon is about accounted / sqrt(canaries)
    assert report["empirical_epsilon_lb"] < report["accounted_epsilon"] and report["ok"] is True
    assert report["measured_noise_std"] == pytest.approx(report["planned_noise_std"], rel=0.1)
    assert json.loads(json.dumps(report)) == report


def test_audit_without_noise_detects_the_leak() -> None:
    noisy = audit(2.0, seed=3)
    quiet = audit(2.0, noise=False, seed=3)
    assert quiet["noise"] is False and quiet["correct"] == quiet["guesses"] == quiet["canaries"]
    assert quiet["accounted_epsilon"] == pytest.approx(noisy["accounted_epsilon"])
    assert quiet["empirical_epsilon_lb"] > 1.5 * noisy["accounted_epsilon"] and quiet["ok"] is False
    assert quiet["exceeds_per_canary_reference"] is True


def test_audit_detects_noise_shrunk_a_hundredfold(monkeypatch: pytest.MonkeyPatch) -> None:
    class Shrunk(DpSpec):  # a planted bug: each client adds 1/100 of the planned noise
        def noise(self, count: int, random: object = None) -> np.ndarray:
            return np.round(DpSpec.noise(self, count) / 100).astype(np.int64)

    monkeypatch.setattr(dp_audit, "_NoiselessSpec", Shrunk)
    report = audit(2.0, noise=False, seed=5)
    assert report["empirical_epsilon_lb"] > report["accounted_epsilon"]


# -- (d) the CLI ----------------------------------------------------------------------------------
def test_cli_prints_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "dp", "--epsilon", "2", "--canaries", "64", "--dim", "256", "--seed", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and FIELDS <= set(out)
    assert (out["canaries"], out["dim"], out["seed"], out["rounds"], out["clients"]) == (64, 256, 4, 4, 10)
    code = main(["audit", "dp", "--epsilon", "2", "--canaries", "64", "--dim", "256", "--no-noise",
                 "--guesses", "64", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["noise"] is False and out["guesses"] == 64 and out["correct"] == 64


@pytest.mark.parametrize("bad", [["--epsilon", "-1"], ["--epsilon", "2", "--canaries", "0"],
                                 ["--epsilon", "2", "--canaries", "5000", "--dim", "100"],
                                 ["--epsilon", "2", "--confidence", "1.5"], ["--epsilon", "2", "--guesses", "999"],
                                 ["--epsilon", "2", "--clients", "1"]])
def test_cli_bad_input_is_one_line_and_exit_2(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "dp", *bad, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("secagg: error: ")
