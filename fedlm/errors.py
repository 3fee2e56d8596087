"""The one error type fedlm raises for bad input it can only see at run time (a checkpoint
directory without a tokenizer, a LoRA target that matches nothing, ...). The command line prints
its message on one line and exits with status 2; flag values are checked earlier, by
:class:`fedlm.config.RunConfig`, with a ``ValueError``."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input found while running; the message says what and how to fix it."""
