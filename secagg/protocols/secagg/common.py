"""Pieces shared by SecAgg clients and servers: session binding, the graph, labels, masking.

Session binding: the setup id hashes the protocol version, config digest, round and
caller context; the session id additionally hashes the canonical list of advertised keys, so every
key, share ciphertext and mask is tied to one round of one session with one set of keys.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ...hazmat.keys import derive_key
from ...hazmat.prg import MaskStream
from ...params import PROTOCOL_IDS, SecAggConfig
from ...wire import WIRE_VERSION
from ..channel import LABEL_SERVER_CHANNEL, TO_CLIENT, TO_SERVER, channel_context, message_key

__all__ = [
    "Stage",
    "LABEL_SHARE_ENCRYPTION",
    "LABEL_PAIRWISE_MASK",
    "LABEL_SELF_MASK",
    "LABEL_GRAPH",
    "setup_id",
    "session_id",
    "neighbours",
    "neighbours_of",
    "ring_order",
    "pairwise_context",
    "unrecoverable_seeds",
    "share_context",
    "apply_masks",
    "protocol_id",
    "channel_context",
    "seed_commitment",
    "message_key",
    "LABEL_SERVER_CHANNEL",
    "TO_CLIENT",
    "TO_SERVER",
]

LABEL_SHARE_ENCRYPTION = b"share-encryption"
LABEL_PAIRWISE_MASK = b"pairwise-mask"
LABEL_SELF_MASK = b"self-mask"
LABEL_GRAPH = b"harary-graph"
LABEL_KEY_CHECK = b"key-check"
LABEL_ADVERTISE_SIG = b"advertise-keys"
LABEL_SURVIVORS_SIG = b"survivor-set"


class Stage(enum.Enum):
    """Where a party is in the round. Dropout schedules name these values."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


def protocol_id(config: SecAggConfig) -> int:
    return PROTOCOL_IDS[config.protocol]


def setup_id(config: SecAggConfig, round_number: int, context: bytes) -> bytes:
    """Identifier of the key-advertisement stage, known before any key is seen."""
    h = hashlib.sha256(b"secagg/v1/setup\x00")
    h.update(struct.pack("<HBQ", WIRE_VERSION, protocol_id(config), round_number))
    h.update(config.digest())
    h.update(struct.pack("<Q", len(context)) + context)
    return h.digest()


def session_id(setup: bytes, key_list_body: bytes) -> bytes:
    """Identifier binding the setup and every advertised key (in canonical order)."""
    return hashlib.sha256(b"secagg/v1/session\x00" + setup + key_list_body).digest()


def ring_order(num_clients: int, setup: bytes) -> np.ndarray:
    """Every registered client in ring order: a permutation derived from the setup id alone
    (public; a read-only array, computed once per setup id)."""
    return _ring_order(num_clients, setup)


@functools.lru_cache(maxsize=16)
def _ring_order(num_clients: int, setup: bytes) -> np.ndarray:
    keys = np.empty(num_clients, dtype="<u8")
    MaskStream(derive_key(setup, LABEL_GRAPH)).fill(keys)
    ring: np.ndarray = np.argsort(keys, kind="stable")
    ring.flags.writeable = False
    return ring


def _near(ring: np.ndarray, pos: int, half: int, members: frozenset[int] | set[int]) -> tuple[int, ...]:
    m = len(ring)
    return tuple(sorted({int(ring[(pos + off) % m]) for off in range(-half, half + 1) if off} & members))


def neighbours(ids: Sequence[int], degree: int | None, setup: bytes, num_clients: int) -> dict[int, tuple[int, ...]]:
    """The share/mask graph among the clients ``ids`` that advertised keys.

    ``degree=None`` (or degree >= num_clients - 1) is the complete graph. Otherwise the Harary graph
    H(num_clients, k) over every registered client, restricted to ``ids``: clients are placed on a
    ring by a permutation derived from the setup id (config, round and caller context), so the
    graph is fixed before any key is advertised; neither who advertises nor the server's keys can
    change it (SECURITY.md: graph grinding, dropout amplification).
    """
    members = set(ids)
    if degree is None or degree >= num_clients - 1:
        everyone = tuple(sorted(members))
        return {u: tuple(v for v in everyone if v != u) for u in everyone}
    ring = ring_order(num_clients, setup)
    return _window_graph(ring, degree // 2, members)


def _window_graph(ring: np.ndarray, half: int, members: set[int]) -> dict[int, tuple[int, ...]]:
    """Each member on the ring -> the members within ``half`` places of it, sorted (one batch:
    a (members, 2 * half) table of ring neighbours, filtered and sorted row-wise)."""
    m = len(ring)
    listed = np.zeros(m, dtype=bool)
    listed[[u for u in members if 0 <= u < m]] = True
    positions = np.flatnonzero(listed[ring])
    offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
    table = ring[(positions[:, None] + offsets[None, :]) % m]
    table = np.where(listed[table] & (table != ring[positions][:, None]), table, m)  # m: not a neighbour
    table.sort(axis=1)
    graph: dict[int, tuple[int, ...]] = {}
    for u, row in zip(ring[positions].tolist(), table.tolist()):
        # a small ring can reach one client from both sides: keep each neighbour once
        graph[u] = tuple(sorted(set(v for v in row if v < m))) if 2 * half >= m else tuple(v for v in row if v < m)
    return graph


def neighbours_of(client: int, ids: Sequence[int] | np.ndarray, degree: int | None, setup: bytes,
                  num_clients: int) -> tuple[int, ...]:
    """``neighbours(ids, degree, setup, num_clients)[client]`` without building the whole graph
    (for SecAgg+, O(k log n) once the ring order is known: membership by binary search in ``ids``)."""
    if degree is None or degree >= num_clients - 1:
        return tuple(sorted(int(v) for v in set(np.asarray(ids).tolist()) if v != client))
    ring = ring_order(num_clients, setup)
    pos = int(_ring_positions(num_clients, setup)[client])
    half = degree // 2
    near = np.unique(ring[(pos + np.arange(-half, half + 1)) % len(ring)])
    near = near[near != client]
    listed = np.asarray(ids, dtype=np.int64)
    if listed.size > 1 and not (listed[1:] > listed[:-1]).all():
        listed = np.unique(listed)
    if listed.size == 0:
        return ()
    found = np.minimum(np.searchsorted(listed, near), listed.size - 1)
    return tuple(int(v) for v in near[listed[found] == near])


@functools.lru_cache(maxsize=16)
def _ring_positions(num_clients: int, setup: bytes) -> np.ndarray:
    """Client -> its place on the ring (the inverse permutation of :func:`ring_order`)."""
    ring = ring_order(num_clients, setup)
    positions = np.empty(num_clients, dtype=np.int64)
    positions[ring] = np.arange(num_clients)
    positions.flags.writeable = False
    return positions


def unrecoverable_seeds(alive: Sequence[int], graph: Mapping[int, Sequence[int]], threshold: int) -> list[int]:
    """Members of ``alive`` with fewer than t of their share holders (themselves included) in it.

    Their self-mask seeds need t shares from holders who answer as if they survived, so no round
    with such a survivor set can finish: the server aborts before the unmask stage, and in the
    malicious variant an honest client refuses to sign such a set. That refusal is what stops a
    server that shows a client few holders and leaves the honest ones out (SECURITY.md, lemma
    "isolation"): it must keep t of the client's holders in the set.
    """
    members = set(alive)
    return [u for u in sorted(members) if 1 + sum(1 for v in graph.get(u, ()) if v in members) < threshold]


def pairwise_context(session: bytes, u: int, key_u: bytes, v: int, key_v: bytes) -> bytes:
    """KDF context of the pairwise mask of u and v: the session and the sorted (id, mask key) pairs.

    Binding both identities and both keys means a key advertised under another client's id (e.g. an
    honest key re-advertised by a corrupt client) never yields the same mask as the honest pair.
    """
    (a, ka), (b, kb) = sorted(((u, key_u), (v, key_v)))
    return session + struct.pack("<II", a, b) + ka + kb


def share_context(session: bytes, round_number: int, sender: int, recipient: int) -> bytes:
    """Associated data (and KDF context) for a share ciphertext from ``sender`` to ``recipient``."""
    return session + struct.pack("<QII", round_number, sender, recipient)


def seed_commitment(session: bytes, client: int, seed: bytes) -> bytes:
    """Hiding, binding commitment to a 32-byte uniformly random self-mask seed."""
    return hashlib.sha256(b"secagg/v1/seed-commitment\x00" + session + struct.pack("<I", client) + seed).digest()


def apply_masks(
    out: np.ndarray,
    streams: Iterable[tuple[MaskStream, int]],
    chunk_size: int,
    fill_chunk: Callable[[int, int, np.ndarray], None] | None = None,
) -> None:
    """Add (+1) or subtract (-1) each keystream to ``out`` in place, chunk by chunk.

    Streams are consumed in order inside each chunk, so the whole working set stays in cache.
    ``fill_chunk(start, stop, view)`` may first write the chunk's base values (e.g. quantised input).
    Arithmetic wraps modulo the word size, a multiple of the ring modulus.
    """
    pairs = list(streams)
    scratch = np.empty(min(chunk_size, out.shape[0]), dtype=out.dtype)
    for start in range(0, out.shape[0], chunk_size):
        stop = min(start + chunk_size, out.shape[0])
        view = out[start:stop]
        if fill_chunk is not None:
            fill_chunk(start, stop, view)
        buf = scratch[: stop - start]
        for stream, sign in pairs:
            stream.fill(buf)
            if sign > 0:
                np.add(view, buf, out=view)
            else:
                np.subtract(view, buf, out=view)
