"""Attack records, outcome judging and the harness entry point :func:`run_attacks`.

Outcomes (what the harness observed):

- ``refused``: an honest client raised (``ProtocolAbort``, ``IntegrityError``, ``MalformedMessage``)
  on the deviating message itself, before revealing anything that helps the attacker;
- ``detected``: the deviation was accepted on arrival but caught later (e.g. an AEAD failure at a
  peer because the sessions no longer match) and the round aborted or dropped the affected party;
- ``succeeded``: the attacker reached its goal; the harness then checks what it actually got
  (e.g. whether it recovered one client's individual input);
- ``undetected``: nobody noticed, yet the goal was not reached either.

Expected outcomes are ``refused``, ``detected`` or ``succeeds-by-design`` (an attack the variant
does not claim to stop; the reason cites the threat model in SECURITY.md). A row is ``ok`` when the
observation matches the expectation, including whether an individual input leaked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..encoding import FixedPoint, Schema
from ..params import SecAggConfig, ThreatModel
from .adversary import ACCEPTED, CONTEXT, AdversarialServer, Cast, Play

__all__ = [
    "REFUSED", "DETECTED", "SUCCEEDED", "UNDETECTED", "BY_DESIGN", "Expectation", "Observation",
    "Attack", "harness_config", "run_attacks", "observe", "leaked_inputs", "CONTEXT",
]

REFUSED, DETECTED, SUCCEEDED, UNDETECTED = "refused", "detected", "succeeded", "undetected"
BY_DESIGN = "succeeds-by-design"

HARNESS_CLIENTS = 20


@dataclass(frozen=True)
class Expectation:
    """What a variant claims about one attack, and why."""

    outcome: str
    reason: str
    leaks: bool = False


@dataclass
class Observation:
    """What the harness saw: the outcome, the evidence, and whose individual input leaked."""

    outcome: str
    evidence: str
    leaked: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Attack:
    """One scripted deviation, run against a config, with its expected outcome per adversary."""

    name: str
    summary: str
    run: Callable[[SecAggConfig], Observation]
    semi_honest: Expectation
    malicious: Expectation

    def expectation(self, malicious: bool) -> Expectation:
        return self.malicious if malicious else self.semi_honest


def harness_config(protocol: str, malicious: bool, clients: int = HARNESS_CLIENTS) -> SecAggConfig:
    """The config every attack runs against: 20 clients, 10% corrupt, 10% dropout.

    With 20 clients SecAgg+ uses a real Harary graph (k=6, t=3 semi-honest; k=10, t=8 malicious).
    """
    threat = ThreatModel.malicious(0.1, 0.1) if malicious else ThreatModel.semi_honest(0.1, 0.1)
    schema = Schema.of(np.zeros(63, dtype=np.float32))
    encoding = FixedPoint(clip_bound=4.0, fractional_bits=12, max_clients=clients)
    maker = SecAggConfig.secagg if protocol == "secagg" else SecAggConfig.secagg_plus
    return maker(clients, schema, threat, encoding)


def leaked_inputs(server: AdversarialServer, cast: Cast, owners: list[int]) -> list[int]:
    """Owners whose individual input the attacker recovered exactly from what it holds."""
    out = []
    for owner in owners:
        guess = server.recover(owner)
        if guess is not None and np.array_equal(guess, cast.inputs[owner]):
            out.append(owner)
    return out


def _evidence(log: Play, limit: int = 3) -> str:
    lines = [f"client {c} refused {r}" for c, r in sorted(log.refusals.items())]
    lines += [f"client {c} refused {r}" for c, _, r in log.probes if r != ACCEPTED]
    lines += [f"client {c} ACCEPTED a forged {k}" for c, k, r in log.probes if r == ACCEPTED]
    lines += log.rejected
    if log.server_error:
        lines.append(f"round aborted: {log.server_error}")
    shown = "; ".join(lines[:limit])
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    return (shown + more) if lines else "no party complained"


def observe(log: Play, leaked: list[int], at: set[str], goal: bool = False, note: str = "") -> Observation:
    """Judge a round: ``at`` names the message kinds the deviation altered.

    ``goal`` marks an attack whose aim is not an individual input (e.g. two partial sums).
    """
    evidence = _evidence(log) + (f". {note}" if note else "")
    if leaked or goal:
        return Observation(SUCCEEDED, evidence, leaked)
    refused_now = {r.split(":", 1)[0] for r in log.refusals.values()} | {k for _, k, r in log.probes if r != ACCEPTED}
    if refused_now & at and not any(r == ACCEPTED for _, _, r in log.probes):
        return Observation(REFUSED, evidence, leaked)
    if log.refusals or log.rejected or log.server_error:
        return Observation(DETECTED, evidence, leaked)
    return Observation(UNDETECTED, evidence, leaked)


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
    from .attacks import ATTACKS

    malicious = adversary == "malicious"
    chosen = [a for a in ATTACKS if names is None or a.name in names]
    rows = [_row(attack, protocol, malicious) for protocol in protocols for attack in chosen]
    return {"adversary": adversary, "clients": HARNESS_CLIENTS, "rows": rows,
            "all_ok": bool(rows) and all(r["ok"] for r in rows)}
