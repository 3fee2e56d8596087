"""One exception hierarchy for everything secagg raises on purpose.

Callers catch :class:`SecAggError` for any protocol or input failure, or a more precise subclass.
"""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "ParameterError",
    "IntegrityError",
    "ProtocolAbort",
    "MalformedMessage",
    "InsufficientParties",
]


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ParameterError(ValueError, SecAggError):
    """A configuration or an input is invalid (bad shape, NaN, unsafe parameters).

    Subclasses both :class:`ValueError` and :class:`SecAggError` so either can be caught.
    """


class IntegrityError(SecAggError):
    """Authentication, decryption or signature verification failed.

    Deliberately opaque: it never says which check failed or why, like ``InvalidTag``.
    """


class ProtocolAbort(SecAggError):
    """A message was out of order, inconsistent or hostile; the party refuses to go on."""


class MalformedMessage(ProtocolAbort):
    """Bytes from the wire do not decode canonically (truncated, trailing, unknown version)."""


class InsufficientParties(ProtocolAbort):
    """Fewer parties than the threshold survived; no aggregate is released."""
