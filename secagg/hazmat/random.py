"""The single injectable randomness source of every party.

Security assumption: the source returns bytes indistinguishable from uniform (``os.urandom``).
"""

from __future__ import annotations

import os
from typing import Callable

RandomSource = Callable[[int], bytes]
"""A callable returning ``n`` uniformly random bytes. Defaults to :func:`os.urandom`."""

system_random: RandomSource = os.urandom
