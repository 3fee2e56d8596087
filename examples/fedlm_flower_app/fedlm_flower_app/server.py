"""The App's ServerApp: fedlm's server loop (sampling, secure rounds, server optimiser, evaluation)."""

from fedlm.flower_engine import server_app

__all__ = ["server_app"]
