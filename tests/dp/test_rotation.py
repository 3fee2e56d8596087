"""The seeded rotation (Hadamard for powers of two, DCT-II otherwise): exact inverse, norm
preserving, seeded, no padding, entries within the stated coherence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.dp.rotation import coherence, rotate, rotated_dim, unrotate
from secagg.errors import ParameterError

SEED = b"rotation-test-seed-0123456789abc"


def test_rotated_dim_needs_no_padding_and_coherence_bounds_every_entry() -> None:
    assert [rotated_dim(d) for d in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 3, 1000, 1024, 1025]
    for bad in (0, -3):
        with pytest.raises(ParameterError):
            rotated_dim(bad)
    for d in (8, 12, 100, 1024, 1025):
        # The transform's matrix, column by column (rotating a signed basis vector), within coherence(d).
        columns = np.stack([np.abs(rotate(np.eye(d)[j], SEED)) for j in range(d)])
        assert columns.max() ** 2 <= coherence(d) * (1 + 1e-12)
    assert coherence(1024) == 1 / 1024 and coherence(1000) == 2 / 1000


@given(dim=st.integers(1, 3000), data_seed=st.integers(0, 2**32 - 1))
def test_round_trip_and_norm(dim: int, data_seed: int) -> None:
    x = np.random.default_rng(data_seed).normal(size=dim) * 10
    y = rotate(x, SEED)
    assert y.dtype == np.float64 and y.shape == (rotated_dim(dim),)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) <= 1e-12 * max(1.0, np.linalg.norm(x))
    assert np.max(np.abs(unrotate(y, SEED, dim) - x)) <= 1e-12 * max(1.0, np.max(np.abs(x)))


def test_rotation_spreads_energy_and_depends_on_seed() -> None:
    x = np.zeros(4096)
    x[7] = 1.0
    y = rotate(x, SEED)
    assert np.allclose(np.abs(y), 1 / 64)  # a basis vector becomes perfectly flat
    assert not np.array_equal(y, rotate(x, b"another-seed-of-sixteen+bytes"))
    assert np.array_equal(y, rotate(x, SEED))


def test_rotation_rejects_bad_input() -> None:
    with pytest.raises(ParameterError):
        rotate(np.ones(4), b"short")
    with pytest.raises(ParameterError):
        rotate(np.array([1.0, np.nan]), SEED)
    with pytest.raises(ParameterError):
        unrotate(np.ones(8), SEED, 9)
