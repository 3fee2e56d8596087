from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "flower: runs a real Flower deployment on loopback (slow, needs flwr)")
