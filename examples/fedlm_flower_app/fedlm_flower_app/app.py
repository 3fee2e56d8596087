"""The App's components: fedlm's ServerApp and ClientApp, as installed with the secagg package."""

from fedlm.flower_app import client_app
from fedlm.flower_engine import server_app

__all__ = ["client_app", "server_app"]
