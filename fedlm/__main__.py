"""``python -m fedlm``: the same as the ``fedlm`` console script."""

from __future__ import annotations

import sys

from fedlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
