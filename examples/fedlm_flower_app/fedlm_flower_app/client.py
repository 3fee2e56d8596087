"""The App's ClientApp: one fedlm client per SuperNode (torch loads only where a node trains)."""

from fedlm.flower_app import client_app

__all__ = ["client_app"]
