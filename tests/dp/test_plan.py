"""The planner: acceptance case, the wrap bound against a simulation, infeasible inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.dp.accounting import epsilon
from secagg.dp.plan import WRAP_TARGET, plan
from secagg.errors import ParameterError

from .helpers import counter_random

CONTRACT = {"epsilon", "delta", "noise_multiplier", "noise_std_per_client", "bits", "scale", "expected_mse",
            "gaussian_mse", "mechanism", "rounds", "clients", "min_survivors", "dim", "clip", "wrap_probability"}


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_acceptance_case(mechanism: str) -> None:
    result = plan(2, 1e-5, 100, 100, 80, 16384, 1.0, mechanism=mechanism)
    out = result.to_json()
    assert CONTRACT <= set(out)
    assert out["epsilon"] <= 2 and out["epsilon"] > 1.99
    assert out["bits"] <= 20 and out["wrap_probability"] <= WRAP_TARGET
    assert epsilon(result.spec, 16384, 80, 100, 1e-5) == out["epsilon"]
    # the discrete mechanism costs little over the continuous Gaussian at this scale
    assert out["gaussian_mse"] <= out["expected_mse"] <= 1.1 * out["gaussian_mse"]
    z = math.sqrt(80) * out["noise_std_per_client"] / result.spec.norm_bound(16384)
    assert out["noise_multiplier"] == pytest.approx(z)
    assert (out["mechanism"], out["rounds"], out["clients"], out["min_survivors"], out["dim"], out["clip"]) == (
        mechanism, 100, 100, 80, 16384, 1.0)


def test_explicit_bits_and_infeasible_inputs() -> None:
    wide = plan(2, 1e-5, 100, 100, 80, 16384, 1.0, bits=24)
    assert wide.spec.bits == 24 and wide.epsilon <= 2
    default = plan(2, 1e-5, 100, 100, 80, 16384, 1.0)
    assert wide.spec.scale > default.spec.scale and wide.expected_mse < default.expected_mse
    with pytest.raises(ParameterError, match="bits"):
        plan(2, 1e-5, 100, 100, 80, 16384, 1.0, bits=8)
    with pytest.raises(ParameterError, match="min_survivors"):
        plan(2, 1e-5, 100, 10, 80, 16384, 1.0)
    with pytest.raises(ParameterError, match="epsilon"):
        plan(0, 1e-5, 100, 10, 8, 16384, 1.0)
    with pytest.raises(ParameterError, match="mechanism"):
        plan(2, 1e-5, 100, 10, 8, 16384, 1.0, mechanism="laplace")


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_sums_of_encodings_do_not_wrap(mechanism: str) -> None:
    """Worst-case aligned inputs at the planned width: no coordinate wraps; decoding is unbiased."""
    clients, dim = 20, 1000
    result = plan(2, 1e-5, 50, clients, 16, dim, 1.0, mechanism=mechanism)
    spec, bits = result.spec, result.spec.bits
    assert result.wrap_probability <= WRAP_TARGET
    rng = np.random.default_rng(314159)  # synthetic data only
    direction = rng.normal(size=dim)
    inputs = [direction * (1.0 + 0.01 * i) for i in range(clients)]  # all aligned, all clipped to 1
    seed = b"wrap-test-round-seed-0123456789a"
    random = counter_random(f"wrap-{mechanism}")
    total = np.sum([spec.encode(x, seed, random) for x in inputs], axis=0)
    half = 2 ** (bits - 1)
    assert np.all((total >= -half) & (total < half))
    ring = total % (1 << bits)  # what secure aggregation computes...
    signed = np.where(ring >= half, ring - (1 << bits), ring)  # ...and the server's signed reading
    assert np.array_equal(signed, total)
    decoded = spec.decode(signed, seed, dim)
    truth = clients * direction / np.linalg.norm(direction)
    mse = float(np.mean((decoded - truth) ** 2))
    per_client_mse = result.expected_mse / 16  # expected_mse is for 16 survivors
    assert 0.7 * clients * per_client_mse < mse < 1.3 * clients * per_client_mse
