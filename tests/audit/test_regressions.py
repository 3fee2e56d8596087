"""Attacks found against earlier versions, kept as regressions (each once recovered an input)."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import FixedPoint, ParameterError, Schema, SecAggConfig, ThreatModel
from secagg.audit.attacks_isolation import graph_grinding
from secagg.audit.harness import SUCCEEDED
from secagg.graphparams import corrupt_count, corrupt_neighbour_bound

SCHEMA = Schema.of(np.zeros(8, dtype=np.float32))


def test_a_corrupt_fraction_just_below_a_multiple_of_one_over_n_is_counted_once() -> None:
    """Red-team finding: gamma = 0.2 - 2e-11 at n = 20 meant c = 4 in the config but 3 in the
    SecAgg+ tail bound, so t = 7 at k = 8 was accepted and 4 corrupt neighbours isolated a client."""
    threat = ThreatModel.malicious(0.2 - 2e-11, 0.1)
    assert threat.corrupt_bound(20) == corrupt_count(20, 0.2 - 2e-11) == 4
    with pytest.raises(ParameterError, match=r"max\(2t - h, t \+ q - n\) >= c_nb \+ 2"):
        SecAggConfig(20, 7, SCHEMA, FixedPoint(max_clients=20), 8, threat=threat)


@pytest.mark.parametrize("n", range(30, 120, 7))
def test_every_count_uses_the_same_c(n: int) -> None:
    for c in (1, 2, 3):
        gamma = round(c / n, 12)  # e.g. 2/31 written to 12 digits, slightly below 2/31
        config = SecAggConfig.secagg_plus(n, SCHEMA, ThreatModel.malicious(gamma, 0.05), FixedPoint(max_clients=n))
        assert config.corrupt_bound == c
        if config.degree is not None:
            t1 = corrupt_neighbour_bound(n, config.degree, gamma, True)
            assert config.corrupt_holders == t1 and 2 * config.threshold >= config.degree + t1 + 3


def test_grinding_contexts_on_the_rounding_band_config_recovers_nothing() -> None:
    """The red team's second demo: secagg_plus(31, malicious(round(2/31, 12), 0.05)), two corrupt
    clients, contexts ground until a victim has both as neighbours, then restricted delivery."""
    config = SecAggConfig.secagg_plus(31, SCHEMA, ThreatModel.malicious(round(2 / 31, 12), 0.05),
                                      FixedPoint(max_clients=31))
    seen = graph_grinding(config)
    assert seen.outcome != SUCCEEDED and seen.leaked == []
    assert "2 corrupt neighbours" in seen.evidence
