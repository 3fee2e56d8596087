"""The skeleton every protocol's parties share: one party interface, one way to bind and send.

A client is driven by ``advertise() -> bytes`` and then ``handle(bytes) -> bytes | None`` for each
server message; a server by ``receive(bytes)`` for each client message, ``advance() -> {client:
bytes}`` when the caller closes a stage, and ``result()`` once ``done``. The skeleton does what is
the same for every protocol:

* the stage machine's dispatch (a message in a stage that expects none is refused, state
  unchanged; a handler's :class:`~secagg.SecAggError` aborts a client for good; a server that
  cannot go on aborts the round);
* the binding checks of every header (kind for the stage, protocol, round, session, addressing);
* the authenticated channel of :mod:`secagg.protocols.channel` on every message after the key
  list, with the one-time tag key per party, direction and kind.

A protocol supplies its stage enum (with ``DONE`` and ``ABORTED`` members), message codec and
stage handlers. It guarantees nothing about the protocol's own checks: those live in the parties.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Collection, Generic, Iterable, Iterator, Mapping, MutableMapping, TypeVar

from ..errors import InsufficientParties, IntegrityError, ParameterError, ProtocolAbort, SecAggError
from ..hazmat.keys import AgreementKeyPair
from ..hazmat.random import RandomSource
from ..results import first_drops
from ..wire import SERVER_ID, Header, Writer
from .channel import TO_CLIENT, TO_SERVER, message_key

__all__ = ["ClientParty", "ServerParty", "Outbox", "check_binding"]

StageT = TypeVar("StageT", bound=enum.Enum)
ResultT = TypeVar("ResultT")
Encode = Callable[[Header, Any, "bytes | None"], bytes]


def check_binding(header: Header, kinds: Collection[int], protocol: int, round_number: int, session: bytes,
                  stage: enum.Enum) -> None:
    """Refuse a message of a kind ``stage`` does not expect, or for another protocol, round or session."""
    if header.kind not in kinds:
        raise ProtocolAbort(f"unexpected message kind {header.kind} in stage {stage.value}")
    if header.protocol != protocol or header.round != round_number:
        raise ProtocolAbort("message for another protocol or round")
    if header.session != session:
        raise ProtocolAbort("message for another session")


class _Party(Generic[StageT]):
    """What clients and servers share: config, round, setup id, stage, the message codec."""

    _stage: StageT
    _protocol: int
    _authenticated: Collection[int]
    _encode: Encode

    def _start(self, config: Any, round_number: int, setup: bytes, stage: StageT, protocol: int) -> None:
        self.config, self.round = config, round_number
        self._setup, self._session, self._stage, self._protocol = setup, b"", stage, protocol

    @property
    def stage(self) -> StageT:
        return self._stage

    @property
    def session(self) -> bytes:
        """The session id (empty until the protocol fixes it)."""
        return self._session

    @property
    def done(self) -> bool:
        """True once this party finished the round (a client: nothing more to send)."""
        return bool(self._stage.value == "done")

    @property
    def aborted(self) -> bool:
        """True once this party gave up on the round for good."""
        return bool(self._stage.value == "aborted")

    def _seal(self, kind: int, session: bytes, sender: int, recipient: int, body: Any, channel: bytes,
              direction: int) -> bytes:
        header = Header(kind, self._protocol, self.round, session, sender, recipient)
        tag_key = message_key(channel, direction, kind) if kind in self._authenticated else None
        return self._encode(header, body, tag_key)


class ClientParty(_Party[StageT]):
    """A client's state machine skeleton. Subclasses call :meth:`_start_client` and supply
    ``_handlers``, ``_decode``, ``_expected_session`` and ``_forget`` (drop every secret)."""

    _handlers: Mapping[Any, Callable[[Any], "bytes | None"]]

    def _start_client(self, config: Any, client_id: int, round_number: int, setup: bytes, stage: StageT,
                      protocol: int, kinds: Mapping[Any, Collection[int]]) -> None:
        if not 0 <= client_id < config.num_clients:
            raise ParameterError(f"client_id must be in [0, {config.num_clients}), got {client_id}")
        self._start(config, round_number, setup, stage, protocol)
        self.client_id = client_id
        self._kinds = kinds
        self._channel = b""
        self.sent_bytes = 0

    def _decode(self, data: bytes) -> tuple[Header, Any]:
        raise NotImplementedError

    def _expected_session(self) -> bytes:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    def _secrets(self) -> tuple[object, ...]:
        """Every secret-holding attribute (None or empty once dropped)."""
        raise NotImplementedError

    @property
    def holds_secrets(self) -> bool:
        """True while this client still references any secret of the round (input, keys, shares, seed,
        channel); False after :meth:`close` or an abort. (Python cannot wipe memory; this is about
        references.)"""
        return any(s is not None and (not hasattr(s, "__len__") or len(s) > 0) for s in self._secrets())

    def _inspect(self, body: Any) -> None:
        """Checks that must leave the state untouched when they fail (default: none)."""

    def handle(self, data: bytes) -> bytes | None:
        """Process one server message and return the reply (None: nothing to send).

        Raises:
            MalformedMessage, ProtocolAbort, IntegrityError: the message is not for this party, this
                stage or this session, or fails authentication (state unchanged).
            SecAggError: the message was hostile or inconsistent; the client aborted for good.
        """
        handler = self._handlers.get(self._stage)
        if handler is None:
            raise ProtocolAbort(f"client {self.client_id} expects no message in stage {self._stage.value}")
        header, body = self._decode(data)
        check_binding(header, self._kinds[self._stage], self._protocol, self.round, self._expected_session(),
                      self._stage)
        if header.sender != SERVER_ID or header.recipient != self.client_id:
            raise ProtocolAbort("message not addressed from the server to this client")
        self._inspect(body)
        try:
            return handler(body)
        except SecAggError:
            self._abort()
            raise

    def _tag_key(self, header: Header) -> bytes:
        if not self._channel:
            raise ProtocolAbort("an authenticated message arrived before the server's channel key")
        return message_key(self._channel, TO_CLIENT, header.kind)

    def _send(self, kind: int, session: bytes, body: Any) -> bytes:
        data = self._seal(kind, session, self.client_id, SERVER_ID, body, self._channel, TO_SERVER)
        self.sent_bytes += len(data)
        return data

    def _abort(self) -> None:
        self._forget()
        self._stage = type(self._stage)("aborted")

    def close(self) -> None:
        """End the round at this client whatever its stage: every secret it holds is dropped."""
        self._forget()
        if not self.aborted:
            self._stage = type(self._stage)("done")

    def __getstate__(self) -> None:
        raise TypeError("clients hold secrets and cannot be pickled")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.client_id}, round={self.round}, stage={self._stage.value})"


class Outbox(MutableMapping[int, bytes]):
    """Client -> the bytes of its message for the next stage, each built when read.

    n messages that share one large body (the key list: O(n) bytes each) cost O(n) memory until
    read, not n copies at once. Otherwise a plain mapping: reading a message twice gives equal
    bytes, and assigning stores the bytes given (e.g. a test that tampers with one).
    """

    def __init__(self, clients: Iterable[int], make: Callable[[int], bytes]) -> None:
        self._items: dict[int, bytes | None] = dict.fromkeys(clients)
        self._make = make

    def __getitem__(self, client: int) -> bytes:
        data = self._items[client]
        return self._make(client) if data is None else data

    def __setitem__(self, client: int, data: bytes) -> None:
        self._items[client] = data

    def __delitem__(self, client: int) -> None:
        del self._items[client]

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Outbox({len(self)} messages)"


class _Encoded:
    """A message body already encoded (canonically, by its own ``write``): the same for many recipients."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def write(self, w: Writer) -> None:
        w.raw(self.data)


class ServerParty(_Party[StageT], Generic[StageT, ResultT]):
    """A server's state machine skeleton. Subclasses call :meth:`_start_server` and supply
    ``_closers`` (stage -> close function), ``_decode``, ``_check_sender`` and ``_take``."""

    _closers: Mapping[Any, Callable[[], MutableMapping[int, bytes]]]

    def _start_server(self, config: Any, round_number: int, setup: bytes, stage: StageT, protocol: int,
                      kinds: Mapping[Any, int], random: RandomSource) -> None:
        self._start(config, round_number, setup, stage, protocol)
        self._expected = kinds
        self._channel_key = AgreementKeyPair.generate(random)
        self._channels: dict[int, bytes] = {}
        self._dropped: dict[str, tuple[int, ...]] = {}  # stage -> clients, in stage order
        self._sealed: set[tuple[int, int]] = set()  # (client, kind) whose one-time tag key is spent
        self._result: ResultT | None = None

    def _decode(self, data: bytes) -> tuple[Header, Any]:
        raise NotImplementedError

    def _check_sender(self, sender: int) -> None:
        raise NotImplementedError

    def _take(self, sender: int, body: Any) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop what an aborted round must not keep (default: nothing)."""

    @property
    def dropped(self) -> dict[int, str]:
        """Client id -> the stage whose message the server never got from it (so far)."""
        return first_drops(self._dropped)

    def receive(self, data: bytes) -> int:
        """Validate and take in one client message for the current stage; returns the sender id.

        Raises:
            MalformedMessage, ProtocolAbort, IntegrityError: the message is rejected and ignored
                (the server's state is unchanged).
        """
        kind = self._expected.get(self._stage)
        if kind is None:
            raise ProtocolAbort(f"the server expects no message in stage {self._stage.value}")
        header, body = self._decode(data)
        check_binding(header, (kind,), self._protocol, self.round, self._receiving_session(), self._stage)
        if header.recipient != SERVER_ID or not 0 <= header.sender < self.config.num_clients:
            raise ProtocolAbort("message not addressed from a registered client to the server")
        self._check_sender(header.sender)
        self._take(header.sender, body)
        return header.sender

    def _receiving_session(self) -> bytes:
        return self._session

    def _tag_key(self, header: Header) -> bytes:
        channel = self._channels.get(header.sender)
        if channel is None:
            raise ProtocolAbort(f"no authenticated channel with client {header.sender}")
        return message_key(channel, TO_SERVER, header.kind)

    def _send(self, kind: int, session: bytes, client: int, body: Any, *, reuse_key: bool = False) -> bytes:
        """Encode a message to ``client``; an authenticated kind uses its one-time key once only."""
        self._spend_key(client, kind, reuse_key)
        return self._seal(kind, session, SERVER_ID, client, body, self._channels.get(client, b""), TO_CLIENT)

    def _broadcast(self, kind: int, session: bytes, clients: Iterable[int], body: Any) -> dict[int, bytes]:
        """:meth:`_send` of one body to many clients: encoded once, then a header (and tag) each."""
        w = Writer()
        body.write(w)
        encoded = _Encoded(w.body())
        return {c: self._send(kind, session, c, encoded) for c in clients}

    def _spend_key(self, client: int, kind: int, reuse_key: bool = False) -> None:
        """Record that the one-time tag key of (``client``, ``kind``) is used; refuse a second use."""
        if kind not in self._authenticated:
            return
        if (client, kind) in self._sealed and not reuse_key:
            raise ProtocolAbort(f"message kind {kind} was already sent to client {client}: its one-time "
                                "tag key must not be used twice")
        self._sealed.add((client, kind))

    def advance(self) -> MutableMapping[int, bytes]:
        """Close the current stage with the messages received so far.

        Returns:
            client id -> message bytes for the next stage (empty once the round is done).
        Raises:
            InsufficientParties, IntegrityError: the round cannot go on; it is over (``aborted``).
        """
        step = self._closers.get(self._stage)
        if step is None:
            raise ProtocolAbort(f"nothing to advance in stage {self._stage.value}")
        try:
            return step()
        except (InsufficientParties, IntegrityError):
            self._forget()
            self._stage = type(self._stage)("aborted")
            raise

    def result(self) -> ResultT:
        """The aggregate, once the round is done.

        Raises:
            ProtocolAbort: the round is not finished (or was aborted).
        """
        if self._result is None:
            raise ProtocolAbort(f"no aggregate: the round is in stage {self._stage.value}")
        return self._result
