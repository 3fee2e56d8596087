"""Helpers for the CKKS tests: small sessions with random numpy updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from secagg.encoding import Schema
from secagg.protocols.ckks import CkksClient, CkksConfig, CkksServer


@dataclass
class Session:
    config: CkksConfig
    server: CkksServer
    clients: dict[int, CkksClient]
    updates: list[np.ndarray]
    weights: list[int]

    def exact_average(self, survivors: tuple[int, ...]) -> np.ndarray:
        c = self.config.clip_bound
        total = sum(np.clip(self.updates[i], -c, c) * self.weights[i] for i in survivors)
        return total / sum(self.weights[i] for i in survivors)


def make_session(
    n: int = 4, d: int = 300, *, seed: int = 0, weights: list[int] | None = None, **config: Any
) -> Session:
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0.0, 0.5, d) for _ in range(n)]
    weights = weights or [1] * n
    cfg = CkksConfig(n, Schema.of(updates[0]), max_weight=max(weights), **config)
    clients = {i: CkksClient(cfg, i) for i in range(n)}
    for i, client in clients.items():
        client.set_input(updates[i], weights[i])
    return Session(cfg, CkksServer(cfg), clients, updates, weights)
