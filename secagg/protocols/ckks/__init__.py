"""CKKS homomorphic aggregation (TenSEAL): one upload per client, any dropout tolerated.

Same shape as the masking protocols: a :class:`CkksConfig` shared by every party, client and server
state machines that exchange bytes in the versioned secagg envelope, and a result with
``average()`` in the caller's shape. See SECURITY.md (CKKS section) for the key model.
"""

from . import presets
from .client import CkksClient
from .common import Stage
from .config import CkksConfig
from .parallel import ChunkPool
from .presets import ADDITION_128, PRECISION_128, PRESETS, CkksPreset
from .server import CkksResult, CkksServer
from .state import CkksClientState

__all__ = [
    "CkksConfig",
    "CkksClient",
    "CkksServer",
    "CkksResult",
    "CkksClientState",
    "CkksPreset",
    "ChunkPool",
    "Stage",
    "presets",
    "PRESETS",
    "ADDITION_128",
    "PRECISION_128",
]
