"""Shared fixtures of the fedlm tests: one torch thread and a ``secagg`` source."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def secagg_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The real ``secagg`` when it has ``aggregate``, else the test double in its place."""
    import secagg

    if hasattr(secagg, "aggregate"):
        yield secagg
        return
    from tests.fedlm import secagg_double

    monkeypatch.setitem(sys.modules, "secagg", secagg_double)
    yield secagg_double
