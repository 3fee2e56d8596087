"""The unmasking math, pure and public: what a server (or an auditor) computes from released shares.

One way to do each step, used by :class:`~secagg.protocols.secagg.SecAggServer` and by the audit
harness alike:

- :func:`reconstruct_secrets` recovers a verified 32-byte secret per owner from Shamir shares: the
  first t holders' shares are interpolated (in one batch per holder set), and a secret that fails
  verification is decoded again with Berlekamp-Welch over every held share;
- :func:`seed_verifier` and :func:`mask_key_verifier` check a secret against what its owner
  published (the seed commitment, the advertised mask key) and raise otherwise;
- :func:`pairwise_corrections` builds the streams that cancel the masks survivors added with
  clients whose mask keys are known (:func:`self_mask` and :func:`pairwise_mask`, re-exported from
  :mod:`~secagg.protocols.secagg.masking`, derive the streams themselves).

Nothing here holds state or secrets of its own; every function is deterministic in its arguments.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from ...errors import InsufficientParties, IntegrityError
from ...hazmat import shamir
from ...hazmat.keys import AgreementKeyPair
from ...hazmat.prg import MaskStream
from .common import seed_commitment
from .masking import pairwise_mask, self_mask

__all__ = [
    "Verifier", "Held", "seed_verifier", "mask_key_verifier", "reconstruct_secrets", "reconstruct_secret",
    "self_mask", "pairwise_mask", "pairwise_corrections",
]

Verifier = Callable[[int, bytes], None]
"""``verify(owner, secret)`` returns if ``secret`` is ``owner``'s, and raises IntegrityError otherwise."""
Held = Mapping[int, Mapping[int, bytes]]
"""owner -> {holder: share bytes} (little-endian uint32 field words, as clients release them)."""


def seed_verifier(session: bytes, commitments: Mapping[int, bytes]) -> Verifier:
    """A verifier of self-mask seeds against the commitments their owners sent with their shares.

    Security assumption: SHA-256 is collision resistant, so only the committed seed verifies.
    """
    def verify(owner: int, seed: bytes) -> None:
        committed = commitments.get(owner)
        if committed is None or seed_commitment(session, owner, seed) != committed:
            raise IntegrityError(f"reconstructed seed of client {owner} does not match its commitment")

    return verify


def mask_key_verifier(mask_keys: Mapping[int, bytes]) -> Verifier:
    """A verifier of private mask keys against the public mask keys their owners advertised."""
    def verify(owner: int, private: bytes) -> None:
        advertised = mask_keys.get(owner)
        if advertised is None or AgreementKeyPair.from_private_bytes(private).public_bytes != advertised:
            raise IntegrityError(f"reconstructed mask key of client {owner} does not match its advertised key")

    return verify


def _interpolate(holders: Sequence[int], owners: Sequence[int], held: Held) -> list[bytes]:
    """Lagrange interpolation of each owner's secret from exactly the shares of ``holders``."""
    stacked = np.stack([[np.frombuffer(held[o][h], dtype="<u4") for o in owners] for h in holders])
    return shamir.reconstruct([h + 1 for h in holders], stacked.astype(np.int64))


def _accepted(owner: int, secret: bytes, verify: Verifier) -> bool:
    if not secret:
        return False
    try:
        verify(owner, secret)
    except IntegrityError:
        return False
    return True


def _decode(owner: int, held: Held, threshold: int, verify: Verifier) -> bytes:
    """Find and leave out wrong shares (Berlekamp-Welch over every held share), then verify.

    Succeeds whenever the honest shares outnumber the wrong ones by at least t (the unique
    decoding radius); a random retry would almost never avoid every wrong share.
    """
    holders = sorted(held[owner])
    table = np.stack([np.frombuffer(held[owner][h], dtype="<u4") for h in holders]).astype(np.int64)
    good = [holders[i] for i in shamir.consistent_holders([h + 1 for h in holders], table[:, None, :], threshold)]
    if len(good) >= threshold:
        try:
            secret = _interpolate(good[:threshold], [owner], held)[0]
        except IntegrityError:
            secret = b""
        if _accepted(owner, secret, verify):
            return secret
    raise IntegrityError(f"no consistent set of {threshold} shares reconstructs client {owner}'s secret")


def reconstruct_secrets(owners: Sequence[int], held: Held, threshold: int, verify: Verifier) -> dict[int, bytes]:
    """Recover and verify one 32-byte secret per owner from t of its shares.

    Every owner is interpolated from its first t holders (by id), all owners in one batch
    (:func:`~secagg.hazmat.shamir.reconstruct_many`). A secret that fails ``verify`` (or whose
    interpolation shows a wrong share) is decoded again over every held share before giving up.

    Returns:
        owner -> its secret, each one accepted by ``verify``.
    Raises:
        InsufficientParties: an owner has fewer than ``threshold`` shares.
        IntegrityError: no consistent set of shares gives a secret that verifies.
    """
    firsts: dict[int, list[int]] = {}
    for owner in owners:
        holders = sorted(held.get(owner, {}))
        if len(holders) < threshold:
            raise InsufficientParties(f"only {len(holders)} shares for client {owner}; threshold is {threshold}")
        if holders[0] < 0 or holders[-1] + 1 > shamir.MAX_X:
            raise IntegrityError(f"a share of client {owner} names a holder outside the field's points")
        firsts[owner] = holders[:threshold]
    if not firsts:
        return {}
    order = list(firsts)
    size = len(held[order[0]][firsts[order[0]][0]])
    parts = [held[o][h] for o in order for h in firsts[o]]
    if size == 0 or size % 4 or any(len(p) != size for p in parts):
        return _reconstruct_grouped(firsts, held, threshold, verify)
    words = np.frombuffer(b"".join(parts), dtype="<u4").reshape(len(order), threshold, size // 4)
    xs = np.asarray([[h + 1 for h in firsts[o]] for o in order], dtype=np.int64)
    chunks, ok = shamir.reconstruct_many(xs, words.astype(np.int64))
    secrets: dict[int, bytes] = {}
    for owner, row, good in zip(order, chunks, ok.tolist()):
        secret = row.tobytes() if good else b""
        secrets[owner] = secret if _accepted(owner, secret, verify) else _decode(owner, held, threshold, verify)
    return secrets


def _reconstruct_grouped(firsts: Mapping[int, Sequence[int]], held: Held, threshold: int,
                         verify: Verifier) -> dict[int, bytes]:
    """:func:`reconstruct_secrets` group by group (owners whose first t holders coincide are
    interpolated together): for shares of irregular sizes, and the reference the batch is tested against."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for owner, first in firsts.items():
        groups[tuple(first)].append(owner)
    secrets: dict[int, bytes] = {}
    for first_holders, batch in groups.items():
        try:
            recovered = _interpolate(first_holders, batch, held)
        except (IntegrityError, ValueError):
            recovered = [b""] * len(batch)
        for owner, secret in zip(batch, recovered):
            secrets[owner] = secret if _accepted(owner, secret, verify) else _decode(owner, held, threshold, verify)
    return secrets


def reconstruct_secret(owner: int, shares: Mapping[int, bytes], threshold: int, verify: Verifier) -> bytes:
    """:func:`reconstruct_secrets` for one owner whose shares are ``holder -> share``.

    Raises:
        InsufficientParties, IntegrityError: as :func:`reconstruct_secrets`.
    """
    return reconstruct_secrets((owner,), {owner: shares}, threshold, verify)[owner]


def pairwise_corrections(
    session: bytes,
    mask_keys: Mapping[int, bytes],
    graph: Mapping[int, Sequence[int]],
    public_mask_keys: Mapping[int, bytes],
    alive: Collection[int],
) -> list[tuple[MaskStream, int]]:
    """Streams (with signs) that cancel the masks members of ``alive`` added with each owner.

    Args:
        session: the session id.
        mask_keys: owner -> its private mask key (reconstructed, or known to an auditor).
        graph: the public mask graph (each owner's neighbours).
        public_mask_keys: client -> its advertised public mask key.
        alive: the clients whose masked inputs are in the sum being corrected.
    Returns:
        for every owner u and neighbour v of u in ``alive``: the stream v shares with u, signed to
        undo what v added. Negating every sign instead removes the owner's own pairwise masks.
    """
    streams = []
    for u, private in mask_keys.items():
        keypair = AgreementKeyPair.from_private_bytes(private)
        for v in graph[u]:
            if v in alive:
                # v added +p if v < u and -p otherwise; undo it.
                streams.append((pairwise_mask(session, u, keypair, v, public_mask_keys[v]), -1 if v < u else +1))
    return streams
