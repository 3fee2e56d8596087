"""An in-memory router that runs one round between a server and its clients.

It stands in for a transport: it moves the parties' bytes, injects dropouts by stage and measures
time and bytes. Any FL stack does the same with its own messaging (see the README recipe).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .errors import SecAggError
from .protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
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


@dataclass
class RoundTrace:
    """What happened in one round, for reports and tests."""

    result: AggregateResult
    dropped: dict[int, str]
    aborted: dict[int, str] = field(default_factory=dict)
    client_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    upload_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    download_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def _deliver(server: SecAggServer, data: bytes, stage: str, trace: RoundTrace) -> None:
    start = time.perf_counter()
    try:
        server.receive(data)
    finally:
        trace.server_seconds[stage] += time.perf_counter() - start


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
    dropouts = dict(dropouts or {})
    valid = set(stages_for(server.config.threat.is_malicious))
    for client, stage in dropouts.items():
        if stage not in valid:
            raise ValueError(f"client {client}: unknown dropout stage {stage!r}; use one of {sorted(valid)}")
    partial = RoundTrace(result=None, dropped={})  # type: ignore[arg-type]
    gone: dict[int, str] = {}

    def client_step(cid: int, stage: str, make: Callable[[], bytes]) -> None:
        if cid in gone:
            return
        if dropouts.get(cid) == stage:
            gone[cid] = stage
            return
        start = time.perf_counter()
        try:
            data = make()
        except SecAggError as exc:
            partial.aborted[cid] = f"{stage}: {type(exc).__name__}: {exc}"
            gone[cid] = stage
            return
        finally:
            partial.client_seconds[stage].append(time.perf_counter() - start)
        partial.upload_bytes[cid] += len(data)
        if tap is not None:
            tap(cid, SERVER_ID, data)
        _deliver(server, data, stage, partial)

    for cid in sorted(clients):
        client_step(cid, "advertise", clients[cid].advertise)
    while True:
        stage = server.stage.value
        start = time.perf_counter()
        outbox = server.advance()
        partial.server_seconds[stage] += time.perf_counter() - start
        if server.stage is Stage.DONE:
            break
        for cid, data in sorted(outbox.items()):
            partial.download_bytes[cid] += len(data)
            if tap is not None:
                tap(SERVER_ID, cid, data)
            client_step(cid, server.stage.value, lambda c=cid, d=data: clients[c].handle(d))
    partial.result = server.result()
    partial.dropped = gone
    return partial
