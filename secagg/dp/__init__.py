"""Distributed differential privacy: integer noise, rotation, rounding, accounting and planning.

Pure functions; the protocol parties call :meth:`DpSpec.encode` / :meth:`DpSpec.decode` and the
accountant. Needs the ``dp`` extra (dp-accounting, scipy); names are imported lazily so that
``import secagg.dp.cli`` (the CLI registration) works without it. See SECURITY.md, "Distributed
differential privacy", for what is and is not covered.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .accounting import epsilon, epsilon_of_rounds, rdp
    from .plan import DpPlan, plan
    from .rotation import coherence, rotate, rotated_dim, unrotate
    from .rounding import conditional_round, rounded_norm_bound
    from .samplers import discrete_gaussian, skellam
    from .spec import DpSpec

_HOME = {
    "epsilon": "accounting", "epsilon_of_rounds": "accounting", "rdp": "accounting",
    "DpPlan": "plan", "plan": "plan",
    "rotated_dim": "rotation", "coherence": "rotation", "rotate": "rotation", "unrotate": "rotation",
    "conditional_round": "rounding", "rounded_norm_bound": "rounding",
    "discrete_gaussian": "samplers", "skellam": "samplers",
    "DpSpec": "spec",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
