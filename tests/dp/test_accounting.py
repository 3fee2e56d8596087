"""The accountant: at large noise both discrete mechanisms match dp_accounting's Gaussian."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from secagg.dp.accounting import ORDERS, epsilon, epsilon_of_rounds, rdp
from secagg.dp.spec import DpSpec
from secagg.errors import ParameterError

DIM, SURVIVORS, ROUNDS, DELTA = 16384, 80, 100, 1e-5


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
@pytest.mark.parametrize("z_target", [6.0, 10.0, 21.5])
def test_large_scale_limit_matches_dp_accounting_gaussian(mechanism: str, z_target: float) -> None:
    """noise_std >> 1 in integer units: the discrete mechanisms approach the continuous Gaussian.

    (Skellam is accounted at integer orders only, so it is looser when the best order is near 1-2,
    i.e. at epsilon above ~10 here: about 4% looser at z = 3.)"""
    spec0 = DpSpec(mechanism, 1.0, 4096.0, 1.0, 32)
    sigma = z_target * spec0.norm_bound(DIM) / math.sqrt(SURVIVORS)
    spec = DpSpec(mechanism, 1.0, 4096.0, sigma, 32)
    z = math.sqrt(SURVIVORS) * spec.noise_std / spec.norm_bound(DIM)
    ours = epsilon(spec, DIM, SURVIVORS, ROUNDS, DELTA)
    reference = gaussian_epsilon(z, ROUNDS, DELTA)
    assert ours >= reference * (1 - 1e-9)  # never better than the continuous Gaussian
    assert ours == pytest.approx(reference, rel=0.01)


def test_small_noise_pays_for_discreteness() -> None:
    """At sigma ~ 1/2 the tau term of KLS dominates: far worse than the continuous Gaussian."""
    spec = DpSpec("ddgauss", 1.0, 1.0, 0.5, 16)
    z = math.sqrt(SURVIVORS) * 0.5 / spec.norm_bound(64)
    assert epsilon(spec, 64, SURVIVORS, 1, DELTA) > 1.5 * gaussian_epsilon(z, 1, DELTA)


def test_rdp_shape_and_orders() -> None:
    spec = DpSpec("skellam", 1.0, 100.0, 50.0, 20)
    out = rdp(spec, 1000, 10, [1.0, 1.5, 2.0, 8.0])
    assert np.isinf(out[0]) and np.isinf(out[1]) and np.all(np.isfinite(out[2:])) and out[3] > out[2]
    ddg = rdp(DpSpec("ddgauss", 1.0, 100.0, 50.0, 20), 1000, 10, [1.5, 2.0])
    assert np.all(np.isfinite(ddg))
    assert np.all(np.isinf(rdp(DpSpec("ddgauss", 1.0, 100.0, 0.49, 20), 1000, 10, [2.0, 8.0])))
    assert len(ORDERS) > 100
    with pytest.raises(ParameterError):
        rdp(spec, 1000, 0, [2.0])


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_composition_and_varying_survivors(mechanism: str) -> None:
    spec = DpSpec(mechanism, 1.0, 300.0, 700.0, 20)
    assert epsilon(spec, DIM, SURVIVORS, 0, DELTA) == 0.0
    assert epsilon_of_rounds(spec, DIM, [], DELTA) == 0.0
    same = epsilon(spec, DIM, SURVIVORS, 10, DELTA)
    assert epsilon_of_rounds(spec, DIM, [SURVIVORS] * 10, DELTA) == pytest.approx(same, rel=1e-12)
    fewer = epsilon_of_rounds(spec, DIM, [SURVIVORS] * 9 + [40], DELTA)
    assert same < fewer < epsilon(spec, DIM, 40, 10, DELTA)
    assert epsilon(spec, DIM, SURVIVORS, 20, DELTA) > same
    with pytest.raises(ParameterError):
        epsilon(spec, DIM, SURVIVORS, 10, 0.0)
