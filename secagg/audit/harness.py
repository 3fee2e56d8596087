"""The harness entry point :func:`run_attacks`: every attack of :mod:`secagg.audit.attacks`
against both protocols, judged by :mod:`secagg.audit.outcomes`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..encoding import FixedPoint, Schema
from ..params import SecAggConfig, ThreatModel
from .adversary import CONTEXT
from .attacks import ATTACKS
from .outcomes import (
    BY_DESIGN, DETECTED, REFUSED, SUCCEEDED, UNDETECTED, Attack, Expectation, Observation, leaked_inputs, observe,
)

__all__ = [
    "REFUSED", "DETECTED", "SUCCEEDED", "UNDETECTED", "BY_DESIGN", "Expectation", "Observation",
    "Attack", "harness_config", "run_attacks", "observe", "leaked_inputs", "CONTEXT",
]

HARNESS_CLIENTS = 20


def harness_config(protocol: str, malicious: bool, clients: int = HARNESS_CLIENTS) -> SecAggConfig:
    """The config every attack runs against: 20 clients, 10% corrupt, 10% dropout.

    With 20 clients SecAgg+ uses a real Harary graph (k=6, t=3 semi-honest; k=10, t=8 malicious).
    """
    threat = ThreatModel.malicious(0.1, 0.1) if malicious else ThreatModel.semi_honest(0.1, 0.1)
    schema = Schema.of(np.zeros(63, dtype=np.float32))
    encoding = FixedPoint(clip_bound=4.0, fractional_bits=12, max_clients=clients)
    maker = SecAggConfig.secagg if protocol == "secagg" else SecAggConfig.secagg_plus
    return maker(clients, schema, threat, encoding)


def _row(attack: Attack, protocol: str, malicious: bool) -> dict[str, Any]:
    config = harness_config(protocol, malicious)
    want = attack.expectation(malicious)
    seen = attack.run(config)
    matches = seen.outcome == want.outcome or (want.outcome == BY_DESIGN and seen.outcome == SUCCEEDED)
    return {
        "name": attack.name,
        "protocol": config.protocol,
        "expected": want.outcome,
        "outcome": seen.outcome,
        "ok": bool(matches and bool(seen.leaked) == want.leaks),
        "individual_inputs_leaked": seen.leaked,
        "reason": want.reason,
        "evidence": seen.evidence,
        "summary": attack.summary,
    }


def run_attacks(adversary: str, protocols: tuple[str, ...] = ("secagg", "secagg+"),
                names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run every attack (or those named) against each protocol in the given variant.

    Returns:
        ``{"adversary", "clients", "rows": [...], "all_ok"}``; each row has ``name``, ``expected``,
        ``outcome``, ``ok`` and the evidence behind them.
    """
    malicious = adversary == "malicious"
    chosen = [a for a in ATTACKS if names is None or a.name in names]
    rows = [_row(attack, protocol, malicious) for protocol in protocols for attack in chosen]
    return {"adversary": adversary, "clients": HARNESS_CLIENTS, "rows": rows,
            "all_ok": bool(rows) and all(r["ok"] for r in rows)}
