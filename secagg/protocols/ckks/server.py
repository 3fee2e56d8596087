"""CKKS server state machine (no I/O): relays the key, adds ciphertexts as they arrive.

Feed every client message to :meth:`CkksServer.receive`; when the caller decides a stage is over
(all arrived, or a deadline passed) call :meth:`CkksServer.advance` for the messages to send. A
malformed, duplicate, misaddressed or out-of-stage message, or a ciphertext or context that fails
validation, raises and leaves the server's state untouched. The server only ever holds the public
context; the accumulator is one ciphertext per chunk (memory O(d)), added to in place per upload.

Dropout: an upload that never arrives is simply not in the sum. If the designated generator never
delivers the key, the next advertised member is designated. If the chosen key holder does not
answer, the next key holder is asked (members that uploaded first); when none is left the round
ends with :class:`InsufficientParties`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InsufficientParties, ProtocolAbort
from ...hazmat.random import RandomSource, system_random
from ...results import WeightedSum
from ...wire import SERVER_ID, Header, Writer
from ..base import ServerParty
from ..channel import LABEL_SERVER_CHANNEL, TO_CLIENT, channel_context, finish, message_key
from . import he
from . import messages as m
from .common import PROTOCOL_ID, Stage, check_grid_sum, limits_for, session_id, setup_id
from .config import CkksConfig

__all__ = ["CkksServer", "CkksResult"]

_EXPECTED: dict[Stage, int] = {
    Stage.ADVERTISE: m.Kind.ADVERTISE,
    Stage.GENERATE: m.Kind.KEY_PACKAGE,
    Stage.UPLOAD: m.Kind.UPLOAD,
    Stage.DECRYPT: m.Kind.DECRYPT_RESPONSE,
}


@dataclass(frozen=True)
class CkksResult(WeightedSum):
    """The released aggregate: the contributors' weighted sum, their weight sum and who they are."""

    config: CkksConfig
    weighted_sum: np.ndarray
    weight_sum: int
    survivors: tuple[int, ...]
    decrypted_by: int
    dropped: dict[int, str] = field(default_factory=dict)
    """Client id -> the stage at which the server stopped hearing from it."""


class CkksServer(ServerParty[Stage, CkksResult]):
    """The aggregator's view of one round. It never holds a secret key.

    Args:
        config: the public session parameters (identical at every party).
        round_number, context: as for the clients.
        random: randomness for the server's channel key (default ``os.urandom``).
    """

    config: CkksConfig
    _authenticated = m.AUTHENTICATED_KINDS
    _encode = staticmethod(m.encode)

    def __init__(self, config: CkksConfig, *, round_number: int = 0, context: bytes = b"",
                 random: RandomSource = system_random) -> None:
        self._start_server(config, round_number, setup_id(config, round_number, context), Stage.ADVERTISE,
                           PROTOCOL_ID, _EXPECTED, random)
        self._limits = limits_for(config)
        self._keys: dict[int, bytes] = {}
        self._untried: list[int] = []
        self._committee: dict[int, bytes] = {}
        self._failed_generators: list[int] = []
        self._key_list: m.KeyList | None = None
        self._package: m.KeyPackage | None = None
        self._public: Any = None
        self._accumulator: list[Any] | None = None
        self._contributors: list[int] = []
        self._holders: list[int] = []
        self._silent: list[int] = []
        self._request_body = b""
        self._response: m.DecryptResponse | None = None
        self._closers = {
            Stage.ADVERTISE: self._close_advertise,
            Stage.GENERATE: self._close_generate,
            Stage.UPLOAD: self._close_upload,
            Stage.DECRYPT: self._close_decrypt,
        }

    @property
    def contributors(self) -> tuple[int, ...]:
        return tuple(sorted(self._contributors))

    # -- intake -----------------------------------------------------------------------------------
    def _decode(self, data: bytes) -> tuple[Header, m.Body]:
        return m.decode(data, self._limits, self._tag_key)

    def _receiving_session(self) -> bytes:
        return self._session if self._stage in (Stage.UPLOAD, Stage.DECRYPT) else self._setup

    def _check_sender(self, sender: int) -> None:
        allowed = {
            Stage.ADVERTISE: sender not in self._keys,
            Stage.GENERATE: self._key_list is not None and sender == self._key_list.generator,
            Stage.UPLOAD: sender in self._keys and sender not in self._contributors,
            Stage.DECRYPT: bool(self._holders) and sender == self._holders[0],
        }[self._stage]
        if not allowed:
            raise ProtocolAbort(f"client {sender} may not send this message now (or already did)")

    def _take(self, sender: int, body: m.Body) -> None:
        if isinstance(body, m.Advertise):
            self._take_key(sender, body.public_key)
        elif isinstance(body, m.KeyPackage):
            self._take_package(body)
        elif isinstance(body, m.Upload):
            self._take_upload(sender, body)
        else:
            assert isinstance(body, m.DecryptResponse)
            self._take_response(body)

    def _take_key(self, sender: int, key: bytes) -> None:
        if key in self._keys.values() or key == self._channel_key.public_bytes:
            raise ProtocolAbort("a client repeated another party's key")
        # IntegrityError for a low-order point, before anything is stored.
        channel = self._channel_key.agree(key, LABEL_SERVER_CHANNEL, channel_context(self._setup, sender))
        self._keys[sender], self._channels[sender] = key, channel

    def _take_package(self, body: m.KeyPackage) -> None:
        assert self._key_list is not None
        if self._package is not None:
            raise ProtocolAbort("the key package was already delivered")
        others = tuple(c for c in self._key_list.members if c != self._key_list.generator)
        if body.recipients != others:
            raise ProtocolAbort("the key package must seal the secret context to every other member")
        self._public = he.load_context(body.public_context, self.config.preset, self.config.log_scale, secret=False)
        self._package = body

    def _take_upload(self, sender: int, body: m.Upload) -> None:
        cfg = self.config
        vectors = he.load_ciphertexts(self._public, body.chunks, cfg.preset, cfg.log_scale)
        if self._accumulator is None:
            self._accumulator = vectors
        else:
            for acc, vec in zip(self._accumulator, vectors):
                acc.add_(vec)
        self._contributors.append(sender)

    def _take_response(self, body: m.DecryptResponse) -> None:
        if body.contributors != self.contributors:
            raise ProtocolAbort("the key holder decrypted for another set of contributors")
        check_grid_sum(self.config, body.grid_sum, len(body.contributors))  # no poisoned release
        self._response = body

    # -- stage transitions ------------------------------------------------------------------------
    def _forget(self) -> None:
        self._accumulator = None

    def _close_advertise(self) -> dict[int, bytes]:
        self._dropped["advertise"] = tuple(c for c in range(self.config.num_clients) if c not in self._keys)
        self._committee = {c: k for c, k in sorted(self._keys.items()) if c in self.config.committee}
        self._untried = sorted(self._committee)
        self._stage = Stage.GENERATE
        return self._designate()

    def _designate(self) -> dict[int, bytes]:
        """Send the key list to the next untried advertiser, who is to generate the key."""
        if not self._untried:
            raise InsufficientParties("no committee member advertised a key or delivered the CKKS context")
        generator = self._untried.pop(0)
        members = tuple(self._committee)
        server_key = self._channel_key.public_bytes
        self._key_list = m.KeyList(server_key, generator, members, tuple(self._committee[c] for c in members))
        return {generator: self._send(m.Kind.KEY_LIST, self._setup, generator, self._key_list)}

    def _close_generate(self) -> dict[int, bytes]:
        if self._package is None:
            assert self._key_list is not None
            self._failed_generators.append(self._key_list.generator)
            self._dropped["generate"] = tuple(self._failed_generators)
            return self._designate()
        assert self._key_list is not None
        package, key_list = self._package, self._key_list
        self._session = session_id(self._setup, key_list.body_bytes(), package.public_context)
        sealed = dict(zip(package.recipients, package.sealed))
        self._holders = [key_list.generator, *package.recipients]
        self._stage = Stage.UPLOAD
        return {
            c: self._send(m.Kind.CONTEXT, self._setup, c,
                          m.ContextBroadcast(key_list, package.public_context, sealed.get(c, b""), self._keys[c]))
            for c in sorted(self._keys)
        }

    def _close_upload(self) -> dict[int, bytes]:
        uploaded = self.contributors
        self._dropped["before-upload"] = tuple(sorted(set(range(self.config.num_clients)) - set(uploaded)))
        if len(uploaded) < self.config.min_contributors or self._accumulator is None:
            raise InsufficientParties(f"{len(uploaded)} uploads; at least {self.config.min_contributors} are needed")
        live = set(uploaded)
        self._holders = sorted(self._holders, key=lambda c: (c not in live, c))
        request = m.DecryptRequest(uploaded, tuple(he.serialize_all(self._accumulator)))
        self._accumulator = None
        writer = Writer()
        request.write(writer)
        self._request_body = writer.body()
        self._stage = Stage.DECRYPT
        return self._request_next()

    def _request_next(self) -> dict[int, bytes]:
        if not self._holders:
            raise InsufficientParties("no live key holder answered the decryption request")
        holder = self._holders[0]
        header = Header(m.Kind.DECRYPT_REQUEST, PROTOCOL_ID, self.round, self._session, SERVER_ID, holder)
        self._spend_key(holder, m.Kind.DECRYPT_REQUEST)
        tag_key = message_key(self._channels[holder], TO_CLIENT, m.Kind.DECRYPT_REQUEST)
        return {holder: finish(header, Writer().raw(self._request_body), m.AUTHENTICATED_KINDS, tag_key)}

    def _close_decrypt(self) -> dict[int, bytes]:
        if self._response is None:
            self._silent.append(self._holders.pop(0))
            return self._request_next()
        cfg, grid = self.config, self._response.grid_sum
        weighted = grid[: cfg.schema.size].astype(np.float64) * 2.0**-cfg.grid_bits
        weight_sum = int(grid[cfg.schema.size]) >> cfg.grid_bits
        self._dropped["after-upload"] = tuple(self._silent)
        self._result = CkksResult(cfg, weighted, weight_sum, self.contributors, self._holders[0], self.dropped)
        self._stage = Stage.DONE
        self._request_body = b""
        return {}
