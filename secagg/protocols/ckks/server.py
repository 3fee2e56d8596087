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
from ...results import WeightedSum, first_drops
from ...wire import SERVER_ID, Header, Writer
from . import he
from . import messages as m
from .common import PROTOCOL_ID, Stage, limits_for, session_id, setup_id
from .config import CkksConfig

__all__ = ["CkksServer", "CkksResult"]

_EXPECTED = {
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


class CkksServer:
    """The aggregator's view of one round. It never holds a secret key."""

    def __init__(self, config: CkksConfig, *, round_number: int = 0, context: bytes = b"") -> None:
        self.config, self.round = config, round_number
        self._setup = setup_id(config, round_number, context)
        self._limits = limits_for(config)
        self._session = b""
        self._stage = Stage.ADVERTISE
        self._keys: dict[int, bytes] = {}
        self._untried: list[int] = []
        self._key_list: m.KeyList | None = None
        self._package: m.KeyPackage | None = None
        self._public: Any = None
        self._accumulator: list[Any] | None = None
        self._contributors: list[int] = []
        self._holders: list[int] = []
        self._silent: list[int] = []
        self._request_body = b""
        self._response: m.DecryptResponse | None = None
        self._result: CkksResult | None = None
        self._dropped: dict[str, tuple[int, ...]] = {}

    @property
    def dropped(self) -> dict[int, str]:
        """Client id -> the stage whose message the server never got from it (so far)."""
        return first_drops(self._dropped)

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def session(self) -> bytes:
        return self._session

    @property
    def contributors(self) -> tuple[int, ...]:
        return tuple(sorted(self._contributors))

    # -- intake -----------------------------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Validate and take in one client message for the current stage; returns the sender id.

        Raises:
            MalformedMessage, ProtocolAbort, IntegrityError: the message is rejected and ignored.
        """
        if self._stage not in _EXPECTED:
            raise ProtocolAbort(f"the server expects no message in stage {self._stage.value}")
        header, body = m.decode(data, self._limits)
        sender = self._check_header(header)
        if isinstance(body, m.Advertise):
            if body.public_key in self._keys.values():
                raise ProtocolAbort("a committee member repeated another member's key")
            self._keys[sender] = body.public_key
        elif isinstance(body, m.KeyPackage):
            self._take_package(body)
        elif isinstance(body, m.Upload):
            self._take_upload(sender, body)
        else:
            assert isinstance(body, m.DecryptResponse)
            self._take_response(body)
        return sender

    def _check_header(self, header: Header) -> int:
        if header.kind != _EXPECTED[self._stage]:
            raise ProtocolAbort(f"unexpected message kind {header.kind} in stage {self._stage.value}")
        if header.protocol != PROTOCOL_ID or header.round != self.round:
            raise ProtocolAbort("message for another protocol or round")
        session = self._session if self._stage in (Stage.UPLOAD, Stage.DECRYPT) else self._setup
        if header.session != session:
            raise ProtocolAbort("message for another session")
        sender = header.sender
        if header.recipient != SERVER_ID or not 0 <= sender < self.config.num_clients:
            raise ProtocolAbort("message not addressed from a registered client to the server")
        allowed = {
            Stage.ADVERTISE: sender in self.config.committee and sender not in self._keys,
            Stage.GENERATE: self._key_list is not None and sender == self._key_list.generator,
            Stage.UPLOAD: sender not in self._contributors,
            Stage.DECRYPT: bool(self._holders) and sender == self._holders[0],
        }[self._stage]
        if not allowed:
            raise ProtocolAbort(f"client {sender} may not send this message now (or already did)")
        return sender

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
        self._response = body

    # -- stage transitions ------------------------------------------------------------------------
    def advance(self) -> dict[int, bytes]:
        """Close the current stage with the messages received so far.

        Returns:
            client id -> message bytes for the next stage (empty once the round is done).
        Raises:
            InsufficientParties: no key could be set up, too few uploads, or no key holder answered.
        """
        step = {
            Stage.ADVERTISE: self._close_advertise,
            Stage.GENERATE: self._close_generate,
            Stage.UPLOAD: self._close_upload,
            Stage.DECRYPT: self._close_decrypt,
        }.get(self._stage)
        if step is None:
            raise ProtocolAbort(f"nothing to advance in stage {self._stage.value}")
        try:
            return step()
        except InsufficientParties:
            self._stage = Stage.ABORTED
            self._accumulator = None
            raise

    def _close_advertise(self) -> dict[int, bytes]:
        self._dropped["advertise"] = tuple(c for c in self.config.committee if c not in self._keys)
        self._untried = sorted(self._keys)
        self._stage = Stage.GENERATE
        return self._designate()

    def _designate(self) -> dict[int, bytes]:
        """Send the key list to the next untried advertiser, who is to generate the key."""
        if not self._untried:
            raise InsufficientParties("no committee member advertised a key or delivered the CKKS context")
        generator = self._untried.pop(0)
        members = tuple(sorted(self._keys))
        self._key_list = m.KeyList(generator, members, tuple(self._keys[c] for c in members))
        return {generator: self._send(m.Kind.KEY_LIST, self._setup, generator, self._key_list)}

    def _close_generate(self) -> dict[int, bytes]:
        if self._package is None:
            return self._designate()
        assert self._key_list is not None
        package, key_list = self._package, self._key_list
        self._session = session_id(self._setup, key_list.body_bytes(), package.public_context)
        sealed = dict(zip(package.recipients, package.sealed))
        self._holders = [key_list.generator, *package.recipients]
        self._stage = Stage.UPLOAD
        return {
            c: self._send(m.Kind.CONTEXT, self._setup, c, m.ContextBroadcast(key_list, package.public_context, sealed.get(c, b"")))
            for c in range(self.config.num_clients)
        }

    def _close_upload(self) -> dict[int, bytes]:
        uploaded = self.contributors
        self._dropped["upload"] = tuple(sorted(set(range(self.config.num_clients)) - set(uploaded)))
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
        return {holder: header.encode() + self._request_body}

    def _close_decrypt(self) -> dict[int, bytes]:
        if self._response is None:
            self._silent.append(self._holders.pop(0))
            return self._request_next()
        cfg, grid = self.config, self._response.grid_sum
        weighted = grid[: cfg.schema.size].astype(np.float64) * 2.0**-cfg.grid_bits
        weight_sum = int(grid[cfg.schema.size]) >> cfg.grid_bits
        self._dropped["decrypt"] = tuple(self._silent)
        self._result = CkksResult(cfg, weighted, weight_sum, self.contributors, self._holders[0], self.dropped)
        self._stage = Stage.DONE
        self._request_body = b""
        return {}

    def _send(self, kind: m.Kind, session: bytes, client: int, body: m.Body) -> bytes:
        return m.encode(Header(kind, PROTOCOL_ID, self.round, session, SERVER_ID, client), body)

    def result(self) -> CkksResult:
        """The aggregate, once a key holder's decryption has been taken in.

        Raises:
            ProtocolAbort: the round is not finished (or was aborted).
        """
        if self._result is None:
            raise ProtocolAbort(f"no aggregate: the round is in stage {self._stage.value}")
        return self._result
