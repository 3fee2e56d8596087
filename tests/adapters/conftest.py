"""Fixtures shared by the Flower adapter tests."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "flower_app"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example Flower App's module (``examples/flower_app``)."""
    pytest.importorskip("flwr")
    monkeypatch.syspath_prepend(str(APP_DIR))
    from secagg_flower_example import app

    return app
