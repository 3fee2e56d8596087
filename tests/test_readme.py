"""The README's embedding loop, copied verbatim from README.md, runs for every registered protocol.

The block after ``<!-- embedding-loop -->`` is executed as written; the test only supplies configs
and inputs. If the README's loop stops working for one protocol (a party that returns the wrong
type, a server that never reaches ``done``), this fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import secagg

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_loop() -> str:
    text = README.read_text()
    match = re.search(r"<!-- embedding-loop -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its embedding loop"
    return match.group(1)


def _config(protocol: str, n: int, schema: secagg.Schema) -> object:
    if protocol == "ckks":
        return secagg.CkksConfig(n, schema, secagg.PRESETS["addition-128"], committee=(0, 1, 2), max_weight=4)
    threat = secagg.ThreatModel.semi_honest(corrupt=0.1, dropout=0.2)
    encoding = secagg.FixedPoint(max_weight=4, max_clients=n)
    return secagg.SecAggConfig.for_protocol(protocol, n, schema, threat, encoding)


def test_every_registered_protocol_is_exercised() -> None:
    assert set(secagg.PROTOCOLS) == {"secagg", "secagg+", "ckks"}


@pytest.mark.parametrize("protocol", sorted(secagg.PROTOCOLS))
def test_the_readme_embedding_loop_runs_verbatim(protocol: str) -> None:
    n = 12 if protocol == "secagg+" else 5
    rng = np.random.default_rng(7)  # ok: test inputs, recorded seed
    updates = {i: {"lora_A": rng.normal(0, 0.3, (4, 6)).astype(np.float32),
                   "lora_B": rng.normal(0, 0.3, (6, 4)).astype(np.float32)} for i in range(n)}
    weights = {i: 1 + i % 4 for i in range(n)}
    config = _config(protocol, n, secagg.Schema.of(updates[0]))
    namespace: dict[str, object] = {"secagg": secagg}
    exec(compile(readme_loop(), str(README), "exec"), namespace)  # the README's own text
    average = namespace["one_round"](config, updates, weights, 3, b"model digest")  # type: ignore[operator]
    total = sum(weights.values())
    for name in updates[0]:
        exact = sum(weights[i] * updates[i][name].astype(np.float64) for i in range(n)) / total
        assert average[name].shape == exact.shape and average[name].dtype == np.float32
        assert np.abs(average[name] - exact).max() < 1e-4
    if protocol == "secagg+":
        assert config.degree is not None and config.degree < n - 1  # a real Harary graph, not the complete one
