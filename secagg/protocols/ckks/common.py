"""Pieces shared by the CKKS client and server: stages, session binding, limits, labels.

Session binding: the setup id hashes the wire version, protocol id, round, config digest and caller
context; the session id additionally hashes the canonical committee key list (with the designated
generator) and the SHA-256 of the public context. Every upload, decryption request and sealed
secret context is bound to one session, so nothing can be replayed into another round or key.
"""

from __future__ import annotations

import enum
import hashlib
import struct

import numpy as np

from ...errors import IntegrityError
from ...params import PROTOCOL_IDS
from ...wire import WIRE_VERSION
from .config import CkksConfig
from .messages import Limits

__all__ = [
    "Stage",
    "PROTOCOL_ID",
    "LABEL_SECRET_CONTEXT",
    "setup_id",
    "session_id",
    "seal_context",
    "limits_for",
    "check_grid_sum",
]

PROTOCOL_ID = PROTOCOL_IDS["ckks"]
LABEL_SECRET_CONTEXT = b"ckks-secret-context"
_CONTEXT_SLACK = 1 << 16
_CIPHERTEXT_SLACK = 4096


class Stage(enum.Enum):
    """Where a party is in the round."""

    ADVERTISE = "advertise"
    GENERATE = "generate"
    CONTEXT = "context"
    UPLOAD = "upload"
    DECRYPT = "decrypt"
    DONE = "done"
    ABORTED = "aborted"


def setup_id(config: CkksConfig, round_number: int, context: bytes) -> bytes:
    """Identifier of the key-setup messages, known before any key exists."""
    h = hashlib.sha256(b"secagg/v1/ckks-setup\x00")
    h.update(struct.pack("<HBQ", WIRE_VERSION, PROTOCOL_ID, round_number))
    h.update(config.digest())
    h.update(struct.pack("<Q", len(context)) + context)
    return h.digest()


def session_id(setup: bytes, key_list_body: bytes, public_context: bytes) -> bytes:
    """Identifier binding the setup, the committee's keys and the public CKKS context."""
    h = hashlib.sha256(b"secagg/v1/ckks-session\x00" + setup)
    h.update(struct.pack("<Q", len(key_list_body)) + key_list_body)
    h.update(hashlib.sha256(public_context).digest())
    return h.digest()


def seal_context(session: bytes, round_number: int, sender: int, recipient: int) -> bytes:
    """Associated data and KDF context of the secret context sealed from ``sender`` to ``recipient``."""
    return session + struct.pack("<QII", round_number, sender, recipient)


def check_grid_sum(config: CkksConfig, grid: np.ndarray, n: int) -> None:
    """Refuse a released sum that ``n`` honest inputs cannot add up to (checked by the key holder
    before it releases and by the server before it accepts: a corrupt holder cannot poison the model).

    Every encoded value lies in [-M, M] (M = ``config.encoding.scaled_bound``) and every weight in
    [1, W], carried as w * 2^g.

    Raises:
        IntegrityError: a value or the weight sum is out of range.
    """
    values, weight = grid[: config.schema.size], int(grid[config.schema.size])
    if float(np.max(np.abs(values), initial=0.0)) > n * config.encoding.scaled_bound:
        raise IntegrityError("the decrypted sum is out of range")
    weight_sum, rest = divmod(weight, 1 << config.grid_bits)
    if rest or not n <= weight_sum <= n * config.max_weight:
        raise IntegrityError("the decrypted weight sum is not a sum of valid weights")


def limits_for(config: CkksConfig) -> Limits:
    """Decoder limits: contexts up to 16 public-key sizes, ciphertexts up to their raw size + slack."""
    preset = config.preset
    max_context = 16 * preset.ciphertext_bytes * 2 + _CONTEXT_SLACK
    return Limits(
        max_parties=config.num_clients,
        chunks=config.chunks,
        max_ciphertext=preset.ciphertext_bytes + _CIPHERTEXT_SLACK,
        max_context=max_context,
        dim=config.dim,
    )
