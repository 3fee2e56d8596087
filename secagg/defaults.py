"""The library's defaults, in one place: every entry point (configs, ``aggregate``, ``simulate``, the
CLI, the Flower adapter) takes these unless the caller says otherwise.

There is deliberately no default threat model: a caller states who it defends against
(:class:`secagg.ThreatModel`), because the thresholds, and so what the server can learn, depend on it.
"""

from __future__ import annotations

__all__ = ["CLIP_BOUND", "FRACTIONAL_BITS", "MAX_CLIENTS", "CKKS_PRESET", "CKKS_COMMITTEE_SIZE", "DP_L2_CLIP",
           "DP_DELTA", "DP_MECHANISM"]

CLIP_BOUND = 8.0
"""Per-coordinate clip c: inputs are clipped to [-c, c] before encoding (masking) or encryption (CKKS)."""

FRACTIONAL_BITS = 18
"""Fixed-point precision f of the masking protocols (quantisation step 2^-f). CKKS picks the finest
grid its noise bound allows instead, unless told."""

MAX_CLIENTS = 1000
"""Most inputs a fixed-point encoding is sized for, when the caller does not say."""

CKKS_PRESET = "addition-128"
"""The CKKS parameter preset (SECURITY.md, CKKS section)."""

CKKS_COMMITTEE_SIZE = 3
"""Key holders of a CKKS round: the first clients by id."""

DP_L2_CLIP = 1.0
"""Distributed DP: the L2 norm each client's whole update is clipped to."""

DP_DELTA = 1e-5
"""Distributed DP: the delta epsilon is reported at, unless the caller says."""

DP_MECHANISM = "ddgauss"
"""Distributed DP: the distributed discrete Gaussian (the other choice is ``skellam``)."""
