"""Attack records and outcome judging, shared by the attack modules and the harness.

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
from typing import Callable

import numpy as np

from ..params import SecAggConfig
from .adversary import ACCEPTED, AdversarialServer, Cast, Play

__all__ = [
    "REFUSED", "DETECTED", "SUCCEEDED", "UNDETECTED", "BY_DESIGN", "Expectation", "Observation",
    "Attack", "observe", "leaked_inputs",
]

REFUSED, DETECTED, SUCCEEDED, UNDETECTED = "refused", "detected", "succeeded", "undetected"
BY_DESIGN = "succeeds-by-design"


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
