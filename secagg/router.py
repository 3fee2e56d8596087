"""An in-memory router that runs one round between a server and its clients.

It stands in for a transport: it moves the parties' bytes, injects dropouts by stage and measures
time and bytes. Any FL stack does the same with its own messaging (see the README recipe).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Mapping

from .protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
from .results import Trace
from .wire import SERVER_ID

__all__ = ["RoundTrace", "Tap", "run_round", "stages_for"]

# Called with (sender, recipient, message bytes) for every message the router moves, e.g. to record
# transcripts (secagg.audit.transcript); SERVER_ID names the server.
Tap = Callable[[int, int, bytes], None]


def stages_for(malicious: bool) -> tuple[str, ...]:
    """Stage names at which a client can drop, in protocol order."""
    names = ["advertise", "share", "mask", "unmask"]
    if malicious:
        names.insert(3, "consistency")
    return tuple(names)


RoundTrace = Trace[AggregateResult]
"""The trace of a SecAgg / SecAgg+ round (see :class:`secagg.results.Trace`)."""


class _Router:
    """Moves one round's messages, dropping clients on schedule and recording time and bytes."""

    def __init__(self, server: SecAggServer, dropouts: dict[int, str], tap: Tap | None) -> None:
        self.server, self.dropouts, self.tap = server, dropouts, tap
        self.trace = RoundTrace(result=None, dropped={})  # type: ignore[arg-type]

    def client_step(self, cid: int, stage: str, make: Callable[[], bytes]) -> None:
        """Let client ``cid`` produce its message for ``stage`` (unless it drops) and deliver it."""
        data = self.trace.attempt(cid, stage, self.dropouts, make)
        if data is None:
            return
        if self.tap is not None:
            self.tap(cid, SERVER_ID, data)
        start = time.perf_counter()
        try:
            self.server.receive(data)
        finally:
            self.trace.server_seconds[stage] += time.perf_counter() - start

    def server_step(self) -> dict[int, bytes]:
        stage = self.server.stage.value
        start = time.perf_counter()
        outbox = self.server.advance()
        self.trace.server_seconds[stage] += time.perf_counter() - start
        for cid, data in outbox.items():
            self.trace.download_bytes[cid] += len(data)
            if self.tap is not None:
                self.tap(SERVER_ID, cid, data)
        return outbox


def run_round(
    server: SecAggServer,
    clients: Mapping[int, SecAggClient],
    dropouts: Mapping[int, str] | None = None,
    tap: Tap | None = None,
) -> RoundTrace:
    """Run a whole round. ``dropouts`` maps a client id to the stage whose message it never sends.

    ``tap``, if given, sees every message moved, in order, as (sender, recipient, bytes).
    A client that aborts (e.g. it sees too few neighbours) is treated as dropped from then on.

    Raises:
        InsufficientParties: too few clients took part at some stage; no aggregate exists.
    """
    valid = set(stages_for(server.config.threat.is_malicious))
    for client, stage in (dropouts or {}).items():
        if stage not in valid:
            raise ValueError(f"client {client}: unknown dropout stage {stage!r}; use one of {sorted(valid)}")
    router = _Router(server, dict(dropouts or {}), tap)
    for cid in sorted(clients):
        router.client_step(cid, "advertise", clients[cid].advertise)
    while True:
        outbox = router.server_step()
        if server.stage is Stage.DONE:
            break
        for cid, data in sorted(outbox.items()):
            router.client_step(cid, server.stage.value, functools.partial(clients[cid].handle, data))
    router.trace.result = server.result()
    return router.trace
