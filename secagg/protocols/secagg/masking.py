"""The client's masking step, pure: one input vector plus its self mask and pairwise masks.

:class:`~secagg.protocols.secagg.SecAggClient` masks its input with :func:`mask_input`;
:mod:`secagg.protocols.secagg.unmask` removes the same streams. Exposed so that benchmarks and
known-answer tests can run the exact masking code without driving a round; the caller supplies the
secrets (seed, mask key pair) and is responsible for them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ...encoding import FixedPoint
from ...errors import ParameterError
from ...hazmat.keys import AgreementKeyPair, derive_key
from ...hazmat.prg import MaskStream
from ...hazmat.random import RandomSource, system_random
from ...params import SecAggConfig
from .common import LABEL_PAIRWISE_MASK, LABEL_SELF_MASK, apply_masks, pairwise_context

__all__ = ["self_mask", "pairwise_mask", "mask_input"]


def self_mask(seed: bytes, session: bytes) -> MaskStream:
    """The self-mask stream a client derives from its seed (it adds the stream, +1)."""
    return MaskStream(derive_key(seed, LABEL_SELF_MASK, session))


def pairwise_mask(session: bytes, u: int, keypair_u: AgreementKeyPair, v: int, public_v: bytes) -> MaskStream:
    """The mask stream u and v share; u adds it (+1) if u < v and subtracts it otherwise.

    Security assumption: X25519 computational Diffie-Hellman; the KDF context binds both ids and keys.
    """
    context = pairwise_context(session, u, keypair_u.public_bytes, v, public_v)
    return MaskStream(keypair_u.agree(public_v, LABEL_PAIRWISE_MASK, context))


def mask_input(
    config: SecAggConfig,
    session: bytes,
    client: int,
    seed: bytes,
    masking: AgreementKeyPair,
    peer_keys: Mapping[int, bytes],
    *,
    values: np.ndarray | None = None,
    weight: int = 1,
    encoded: np.ndarray | None = None,
    random: RandomSource = system_random,
) -> np.ndarray:
    """``client``'s masked input: its input words plus its self mask and one pairwise mask per peer.

    Args:
        peer_keys: peer id -> its advertised public mask key, in the order masks are applied.
        values, weight: the flat float input, quantised here with stochastic rounding (noise drawn
            from ``random``) and its weight word; or ``encoded``, words already encoded.
    Returns:
        ``config.dim`` ring words, reduced modulo the ring.
    """
    enc = config.encoding
    fixed = enc if isinstance(enc, FixedPoint) else None
    if encoded is None and fixed is None:
        raise ParameterError("a distributed-DP input is encoded whole first (DpEncoding.encode), then masked")
    streams = [(self_mask(seed, session), +1)]
    for peer, peer_key in peer_keys.items():
        streams.append((pairwise_mask(session, client, masking, peer, peer_key), +1 if client < peer else -1))
    out = np.empty(config.dim, dtype=enc.dtype)
    d = config.schema.size
    noise = MaskStream(random(32))

    def fill(start: int, stop: int, view: np.ndarray) -> None:
        if encoded is not None:
            view[:] = encoded[start:stop]
            return
        assert values is not None and fixed is not None
        body = min(stop, d) - start
        if body > 0:
            fixed.quantize_into(values[start : start + body], weight, noise, view[:body])
        if stop > d:
            view[-1] = weight

    apply_masks(out, streams, config.chunk_size, fill)
    if enc.modulus_bits < 8 * out.dtype.itemsize:
        np.bitwise_and(out, out.dtype.type(enc.ring_mask), out=out)
    return out
