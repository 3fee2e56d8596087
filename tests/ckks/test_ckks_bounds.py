"""Presets against the HE-standard table, config relations, and the error bounds as properties."""

from __future__ import annotations

import numpy as np
import pytest
from ckks_helpers import make_session
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.encoding import Schema
from secagg.errors import ParameterError
from secagg.protocols.ckks import ADDITION_128, PRECISION_128, CkksConfig, CkksPreset, he, presets
from secagg.router import run_round as run_ckks_round


@pytest.mark.parametrize(
    ("degree", "bits", "level"),
    [
        (4096, (60, 50), 128),  # 110 > 109 bits
        (8192, (60, 60, 60, 60), 128),  # 240 > 218
        (4096, (60, 49), 192),  # 109 > 75
        (8192, (60, 60, 40), 256),  # 160 > 118
        (3000, (30, 30), 128),  # not in the table
        (4096, (60,), 128),  # no special prime
        (4096, (61, 40), 128),  # SEAL primes have at most 60 bits
        (4096, (40, 40), 100),  # unknown level
    ],
)
def test_insecure_or_impossible_parameters_refused_before_tenseal(degree: int, bits: tuple[int, ...], level: int) -> None:
    with pytest.raises(ParameterError):
        presets.check_security(degree, bits, level)
    with pytest.raises(ParameterError):
        CkksPreset("bad", degree, bits, level)


def test_presets_are_rated_and_sized() -> None:
    assert ADDITION_128.data_bits == 60 and ADDITION_128.bytes_per_value == 32.0
    assert PRECISION_128.data_bits == 120 and PRECISION_128.bytes_per_value == 64.0
    presets.check_security(4096, (60, 49), 128)
    presets.check_security(8192, (60, 60, 60), 128)


def test_config_relations() -> None:
    schema = Schema.of(np.zeros(4))
    with pytest.raises(ParameterError):
        CkksConfig(10**6, schema, clip_bound=1e6)  # no scale left in a 60-bit modulus
    with pytest.raises(ParameterError):
        CkksConfig(10, schema, fractional_bits=39)  # finer than the noise allows
    with pytest.raises(ParameterError):
        CkksConfig(10, schema, committee=(10,))
    cfg = CkksConfig(10, schema)
    assert cfg.noise_bound(10) < 2.0 ** -(cfg.grid_bits + 1)
    assert presets.worst_case_noise(cfg.preset, 10, cfg.log_scale, cfg.magnitude) > cfg.noise_bound(10)
    big = CkksConfig(1000, schema, preset=PRECISION_128)
    assert big.grid_bits > CkksConfig(1000, schema).grid_bits


@settings(max_examples=10, deadline=None)
@given(
    summands=st.integers(1, 8),
    clip=st.sampled_from([0.5, 8.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_raw_ckks_noise_within_bound(summands: int, clip: float, seed: int) -> None:
    """The decrypted sum of n fresh ciphertexts is within noise(n) of the exact grid sum."""
    cfg = CkksConfig(8, Schema.of(np.zeros(10)), clip_bound=clip)
    secret, public = he.generate_context(cfg.preset, cfg.log_scale)
    pub = he.load_context(public, cfg.preset, cfg.log_scale, secret=False)
    sec = he.load_context(secret, cfg.preset, cfg.log_scale, secret=True)
    rng = np.random.default_rng(seed)
    bound = cfg.encoding.scaled_bound
    words = rng.integers(-bound, bound + 1, size=(summands, 2, cfg.slots))
    blobs = [he.encrypt_chunks(pub, cfg.grid_bits, w) for w in words]
    total = he.load_ciphertexts(pub, blobs[0], cfg.preset, cfg.log_scale)
    for more in blobs[1:]:
        for acc, vec in zip(total, he.load_ciphertexts(pub, more, cfg.preset, cfg.log_scale)):
            acc.add_(vec)
    decrypted = he.decrypt_chunks(he.load_ciphertexts(sec, he.serialize_all(total), cfg.preset, cfg.log_scale), cfg.slots)
    exact = words.sum(axis=0) * 2.0**-cfg.grid_bits
    assert np.abs(decrypted - exact).max() <= cfg.noise_bound(summands)


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(2, 5),
    d=st.integers(1, 2500),
    max_weight=st.integers(1, 20),
    clip=st.sampled_from([0.1, 1.0, 8.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_released_average_within_documented_bound(n: int, d: int, max_weight: int, clip: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = [int(w) for w in rng.integers(1, max_weight + 1, size=n)]
    weights[0] = max_weight
    s = make_session(n=n, d=d, seed=seed, weights=weights, clip_bound=clip)
    result = run_ckks_round(s.server, s.clients).result
    error = np.abs(result.average_vector() - s.exact_average(result.survivors)).max()
    assert error <= result.error_bound
    assert result.weight_sum == sum(weights)
