"""A replayable RandomSource for the DP tests: SHA-256 in counter mode over a recorded label."""

from __future__ import annotations

import hashlib
from typing import Callable


def counter_random(label: str) -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom: block i is SHA-256(label || i). Failures replay."""
    state = {"counter": 0}

    def draw(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(label.encode() + state["counter"].to_bytes(8, "big")).digest()
            state["counter"] += 1
        return bytes(out[:n])

    return draw
