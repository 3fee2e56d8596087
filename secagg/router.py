"""The in-memory router: the one driver that runs a round of any registered protocol.

It stands in for a transport: it moves the parties' bytes, injects dropouts by stage and measures
time and bytes. Any FL stack does the same with its own messaging (the README's embedding loop is
this loop without the bookkeeping); the Flower adapter and the audit harness drive parties through
the same party interface (:mod:`secagg.protocols.base`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping

from .protocols.registry import protocol_of
from .results import Ledger, Trace
from .wire import SERVER_ID

__all__ = ["RoundTrace", "Tap", "Turn", "run_round", "stages_for"]

# Called with (sender, recipient, message bytes) for every message the router moves, e.g. to record
# transcripts (secagg.audit.transcript); SERVER_ID names the server.
Tap = Callable[[int, int, bytes], None]

# Called with (client, dropout stage) just before a client that has not dropped acts at that stage,
# outside the client's timing: e.g. to hand a client its input only when it masks (the streaming
# simulator, secagg.simulation_stream).
Turn = Callable[[int, str], None]

RoundTrace = Trace[Any]
"""The trace of a round (see :class:`secagg.results.Trace`)."""


def stages_for(config: Any) -> tuple[str, ...]:
    """The stage names at which a client of ``config``'s protocol can drop, in protocol order."""
    return protocol_of(config).stage_names(config)


class _Router:
    """Moves one round's messages, dropping clients on schedule and recording time and bytes."""

    def __init__(self, server: Any, clients: Mapping[int, Any], dropouts: dict[int, str], tap: Tap | None,
                 turn: Turn | None = None) -> None:
        self.server, self.clients, self.dropouts, self.tap, self.turn = server, clients, dropouts, tap, turn
        self.ledger = Ledger()

    def client_step(self, cid: int, stage: str, timing: str, make: Callable[[], bytes | None]) -> None:
        """Let client ``cid`` produce its message at dropout stage ``stage`` (unless it drops) and
        deliver it to the server."""
        if self.turn is not None and cid not in self.ledger.dropped and self.dropouts.get(cid) != stage:
            self.turn(cid, stage)
        data = self.ledger.attempt(cid, stage, self.dropouts, make, timing)
        if data is None:
            return
        if self.tap is not None:
            self.tap(cid, SERVER_ID, data)
        start = time.perf_counter()
        try:
            self.server.receive(data)
        finally:
            self.ledger.server_seconds[timing] += time.perf_counter() - start

    def server_step(self) -> dict[int, bytes]:
        stage = self.server.stage.value
        start = time.perf_counter()
        outbox: dict[int, bytes] = self.server.advance()
        self.ledger.server_seconds[stage] += time.perf_counter() - start
        for cid in outbox:
            data = outbox[cid]
            self.ledger.download_bytes[cid] += len(data)
            if self.tap is not None:
                self.tap(SERVER_ID, cid, data)
        return outbox

    def vanish(self, stage: str) -> None:
        """Clients scheduled to drop at ``stage`` are gone once it opens, asked or not."""
        for cid, when in self.dropouts.items():
            if when == stage and cid in self.clients:
                self.ledger.dropped.setdefault(cid, stage)


def run_round(
    server: Any,
    clients: Mapping[int, Any],
    dropouts: Mapping[int, str] | None = None,
    tap: Tap | None = None,
    turn: Turn | None = None,
) -> RoundTrace:
    """Run a whole round of any registered protocol. ``dropouts`` maps a client id to the dropout
    stage whose message it never sends (see :func:`stages_for`); it sends nothing after either.

    ``tap``, if given, sees every message moved, in order, as (sender, recipient, bytes).
    ``turn``, if given, is called as (client, dropout stage) before each client that has not
    dropped acts, outside its timing (see :data:`Turn`).
    A client that aborts (e.g. it sees too few neighbours) is treated as dropped from then on.
    Every client is closed when the round ends, however it ends (every secret it holds is dropped;
    in memory, a dropped client is still an object that holds them).

    Raises:
        ParameterError: a dropout stage the protocol does not have.
        InsufficientParties: too few clients took part at some stage; no aggregate exists.
    """
    protocol = protocol_of(server.config)
    schedule = dict(dropouts or {})
    protocol.check_dropouts(server.config, schedule)
    stage_name = {s.server_stage: s.name for s in protocol.dropout_stages(server.config)}
    router = _Router(server, clients, schedule, tap, turn)
    try:
        router.vanish("advertise")
        for cid in sorted(clients):
            router.client_step(cid, "advertise", "advertise", clients[cid].advertise)
        while not server.done:
            outbox = router.server_step()
            now = server.stage.value
            name = stage_name.get(now, now)
            router.vanish(name)
            for cid in sorted(outbox):
                if cid in clients:
                    router.client_step(cid, name, now, functools.partial(clients[cid].handle, outbox[cid]))
    finally:
        for cid in sorted(clients):
            clients[cid].close()
    return Trace.of(router.ledger, server.result())
