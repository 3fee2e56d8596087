"""A SecAgg client that outlives its process: exact replay from a node-local write-ahead transcript.

Flower 1.42 starts one ``flwr-clientapp`` process per message, so a :class:`~secagg.SecAggClient`
cannot simply stay in memory between stages. Its state holds secrets (two X25519 private keys, the
self-mask seed, the neighbours' shares), and :class:`~secagg.SecAggClient` refuses pickling on
purpose. :class:`NodeStore` is a :class:`~.roundstore.RoundStore` (one private file per round,
committed and fsync'ed under a lock before the reply is returned; byte-identical retries get the
recorded reply; a different message of an answered kind is refused; any failure tombstones the round:
see :mod:`.roundstore` for the rules and why) whose secret state is a single *replay key*:

- At ``advertise`` the node draws one fresh 32-byte replay key. Every random byte the client ever
  uses in this round comes from an AES-256-CTR stream keyed by HKDF(replay key, round binding), so
  the client is a deterministic function of (replay key, public parameters, server messages).
- To answer a message the store rebuilds the client by replaying the recorded transcript, then
  handles the new message live. The masked input of a replayed mask step was already sent; the
  replay feeds a zero input there, which changes only that discarded output. Every other replayed
  output must equal the recorded reply, or the replay is refused as diverged. The masked input is
  never recomputed from the real input: ``get_input`` is called once, at the mask step.

A CKKS client cannot be replayed (SEAL draws its own randomness):
:class:`~.ckksstate.CkksNodeStore` keeps its exported state instead, under the same rules.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np

from ..errors import ProtocolAbort
from ..hazmat.keys import derive_key
from ..hazmat.prg import MaskStream
from ..hazmat.random import system_random
from ..params import SecAggConfig
from ..protocols.secagg import SecAggClient, Stage
from ..protocols.secagg.messages import Kind
from .roundstore import GetInput, RoundSpec, RoundStore, _Record, message_kind

__all__ = ["NodeStore", "RoundSpec"]

_KEY_BYTES = 32
_LABEL_REPLAY = b"node-replay-random"


class _ReplayRandom:
    """The round's only randomness source: AES-256-CTR keyed by HKDF(replay key, round binding).

    Security assumption: the replay key is uniformly random, used for one round of one node, and
    never leaves the node; the stream is then indistinguishable from ``os.urandom`` output.
    """

    __slots__ = ("_stream",)

    def __init__(self, key: bytes, binding: bytes) -> None:
        self._stream = MaskStream(derive_key(key, _LABEL_REPLAY, binding))

    def __call__(self, n: int) -> bytes:
        out = np.empty(n, dtype=np.uint8)
        self._stream.fill(out)
        return out.tobytes()

    def __getstate__(self) -> None:
        raise TypeError("a replay random source holds key material and cannot be pickled")


class NodeStore(RoundStore):
    """The write-ahead record of one node's SecAgg / SecAgg+ client, one file per round (arguments: :class:`RoundStore`)."""

    protocols = ("secagg", "secagg+")

    def _start(self, spec: RoundSpec, record: _Record) -> tuple[bytes, bytes]:
        key = system_random(_KEY_BYTES)
        _, advertisement = self._rebuild(spec, replace(record, secret=key))
        return key, advertisement

    def _step(self, spec: RoundSpec, record: _Record, message: bytes, get_input: GetInput) -> tuple[bytes, bytes, bool]:
        client, _ = self._rebuild(spec, record)
        if client.stage is Stage.MASK:
            if message_kind(message) != Kind.DELIVERY:  # ask for no input in vain
                raise ProtocolAbort("expected the share delivery")
            update, weight = get_input()
            client.set_input(update, weight)
        reply = client.handle(message)
        if reply is None:  # every SecAgg stage a client handles has a reply
            raise ProtocolAbort("the client produced no reply")
        return reply, record.secret, client.stage is Stage.DONE

    # -- replay ----------------------------------------------------------------------------------------
    def _rebuild(self, spec: RoundSpec, record: _Record) -> tuple[SecAggClient, bytes]:
        assert isinstance(spec.config, SecAggConfig)  # RoundStore checked the protocol
        binding = self.scope.encode() + b"\x00" + struct.pack("<QII", record.round_number, record.client_id,
                                                             record.num_clients) + record.config_digest
        client = SecAggClient(
            spec.config, spec.client_id, round_number=spec.round_number, context=spec.context,
            random=_ReplayRandom(record.secret, binding), identity=spec.identity, registry=spec.registry,
        )
        advertisement = client.advertise()
        if record.advertisement and advertisement != record.advertisement:
            raise ProtocolAbort("replay of the advertisement diverged")
        zero = np.zeros(spec.config.dim, dtype=spec.config.encoding.dtype)
        zero[-1] = 1  # a valid encoding (all values 0, weight 1): a placeholder, never sent again
        for step, (message, recorded) in enumerate(record.steps):
            masking = client.stage is Stage.MASK
            if masking:
                # This masked input was sent in an earlier process and is discarded now; the input
                # only enters that output, never later state or randomness.
                client.set_encoded_input(zero)
            try:
                reply = client.handle(message)
            except Exception as exc:
                raise ProtocolAbort(f"replay of step {step} diverged: {type(exc).__name__}") from None
            if not masking and reply != recorded:
                raise ProtocolAbort(f"replay of step {step} diverged from the recorded reply")
        return client, advertisement
