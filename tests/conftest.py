from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is an optional extra
    pass

settings.register_profile(
    "secagg", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("secagg")
