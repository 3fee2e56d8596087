"""A CKKS client that outlives its process: its exported state in a node-local write-ahead record.

A masking client can be rebuilt by replay (:mod:`.nodestate`); a CKKS client cannot, because SEAL
draws its own randomness for the key and every encryption. :class:`CkksNodeStore` therefore keeps
the client's exported state (:meth:`~secagg.protocols.ckks.CkksClient.export_state`: its X25519
key, the session, and for a key holder the CKKS secret context) in the round's record, under the
rules of :class:`~.roundstore.RoundStore`: the new state and the reply are committed and fsync'ed
under the node's lock before the reply is returned, so each message is answered from exactly one
state, once; a retry gets the recorded bytes (the same upload, never a second encryption of the
input); a different message of an answered kind is refused; any failure tombstones the round.

The record holds the state **unencrypted** (mode 0600 in a 0700 directory of the node's user; put
it on a tmpfs if secrets must never reach a disk). It is dropped as soon as the client is done: a
committee member after its decryption (or after its upload if it is not asked), anyone else after
its upload.
"""

from __future__ import annotations

from ..errors import ProtocolAbort
from ..protocols.ckks import CkksClient, CkksClientState, CkksConfig
from ..protocols.ckks.messages import Kind
from .roundstore import GetInput, RoundSpec, RoundStore, _Record, message_kind

__all__ = ["CkksNodeStore"]


class CkksNodeStore(RoundStore):
    """The write-ahead record of one node's CKKS client, one file per round (arguments: :class:`RoundStore`)."""

    protocols = ("ckks",)

    def _start(self, spec: RoundSpec, record: _Record) -> tuple[bytes, bytes]:
        client = self._client(spec, None)
        try:
            advertisement = client.advertise()
            return client.export_state().data, advertisement
        finally:
            client.close()

    def _step(self, spec: RoundSpec, record: _Record, message: bytes, get_input: GetInput) -> tuple[bytes, bytes, bool]:
        client = self._client(spec, CkksClientState(record.secret))
        try:
            if message_kind(message) == Kind.CONTEXT:  # the one message answered with the upload
                update, weight = get_input()
                client.set_input(update, weight)
            reply = client.handle(message)
            if reply is None:  # every CKKS message a client handles has a reply
                raise ProtocolAbort("the client produced no reply")
            done = client.done
            return reply, b"" if done else client.export_state().data, done
        finally:
            client.close()  # this process keeps no reference to the round's secrets

    @staticmethod
    def _client(spec: RoundSpec, state: CkksClientState | None) -> CkksClient:
        """The one place this store makes a client: fresh (``state`` None) or from its saved state."""
        config = spec.config
        assert isinstance(config, CkksConfig)  # RoundStore checked the protocol
        if state is None:
            return CkksClient(config, spec.client_id, round_number=spec.round_number, context=spec.context)
        return CkksClient.import_state(config, spec.client_id, state, round_number=spec.round_number,
                                       context=spec.context)
