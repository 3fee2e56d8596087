"""Shared fixtures of the fedlm tests: one torch thread and a ``secagg`` source."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def secagg_module() -> Iterator[ModuleType]:
    """The real ``secagg`` package, whose ``aggregate`` runs the protocols in memory."""
    import secagg

    yield secagg
