"""Distributed differential privacy: integer noise, rotation, rounding, accounting and planning.

Pure functions; the protocol parties call :meth:`DpSpec.encode` / :meth:`DpSpec.decode` and the
accountant. See SECURITY.md, "Distributed differential privacy", for what is and is not covered.
"""

from __future__ import annotations

from .accounting import epsilon, epsilon_of_rounds, rdp
from .rotation import padded_dim, rotate, unrotate
from .rounding import conditional_round, rounded_norm_bound
from .samplers import discrete_gaussian, skellam
from .spec import DpSpec

__all__ = [
    "DpSpec",
    "conditional_round",
    "discrete_gaussian",
    "epsilon",
    "epsilon_of_rounds",
    "padded_dim",
    "rdp",
    "rotate",
    "rounded_norm_bound",
    "skellam",
    "unrotate",
]
