"""An in-memory driver for one CKKS round (the counterpart of :func:`secagg.router.run_round`).

It stands in for a transport: it moves the parties' bytes, injects dropouts by stage and measures
time and bytes. Dropout stages, in protocol order:

* ``"advertise"``: a committee member never advertises its key;
* ``"generate"``: the designated generator never delivers the key package;
* ``"before-upload"``: the client receives the public context but never uploads;
* ``"after-upload"``: the client uploads, then vanishes (a key holder then cannot decrypt).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ...errors import ParameterError
from ...results import Trace
from .client import CkksClient
from .common import Stage
from .server import CkksResult, CkksServer

__all__ = ["CkksTrace", "run_ckks_round", "DROPOUT_STAGES"]

DROPOUT_STAGES = ("advertise", "generate", "before-upload", "after-upload")
_REPLY_STAGE = {Stage.GENERATE: "generate", Stage.UPLOAD: "before-upload", Stage.DECRYPT: "after-upload"}
_TIMING_STAGE = {"advertise": "advertise", "generate": "generate", "before-upload": "upload", "after-upload": "decrypt"}


@dataclass
class CkksTrace(Trace[CkksResult]):
    """The trace of a CKKS round: :class:`secagg.results.Trace` plus the ciphertext upload sizes."""

    ciphertext_upload_bytes: dict[int, int] = field(default_factory=dict)
    """Size of each client's one upload message (the per-round cost that scales with d)."""


class _Round:
    """Mutable bookkeeping of one driven round."""

    def __init__(self, server: CkksServer, clients: Mapping[int, CkksClient], dropouts: Mapping[int, str]) -> None:
        self.server, self.clients, self.dropouts = server, clients, dropouts
        self.trace = CkksTrace(result=None, dropped={})  # type: ignore[arg-type]
        self.gone = self.trace.dropped

    def step(self, cid: int, stage: str, make: Callable[[], bytes | None]) -> None:
        """Run one client action unless it dropped; deliver its reply to the server."""
        if cid not in self.clients:
            return
        timing = _TIMING_STAGE[stage]
        data = self.trace.attempt(cid, stage, self.dropouts, make, timing)
        if data is None:
            return
        if stage == "before-upload":
            self.trace.ciphertext_upload_bytes[cid] = len(data)
        start = time.perf_counter()
        try:
            self.server.receive(data)
        finally:
            self.trace.server_seconds[timing] += time.perf_counter() - start
        if stage == "before-upload" and self.dropouts.get(cid) == "after-upload":
            self.gone[cid] = "after-upload"


def run_ckks_round(
    server: CkksServer,
    clients: Mapping[int, CkksClient],
    dropouts: Mapping[int, str] | None = None,
) -> CkksTrace:
    """Run a whole round. ``dropouts`` maps a client id to one of :data:`DROPOUT_STAGES`.

    Raises:
        ParameterError: an unknown dropout stage.
        InsufficientParties: no key could be set up, too few uploads, or no live key holder.
    """
    dropouts = dict(dropouts or {})
    for cid, stage in dropouts.items():
        if stage not in DROPOUT_STAGES:
            raise ParameterError(f"client {cid}: unknown dropout stage {stage!r}; use one of {list(DROPOUT_STAGES)}")
    run = _Round(server, clients, dropouts)
    for cid in sorted(clients):
        run.step(cid, "advertise", clients[cid].advertise)
    try:
        while server.stage is not Stage.DONE:
            closing = server.stage.value
            start = time.perf_counter()
            outbox = server.advance()
            run.trace.server_seconds[closing] += time.perf_counter() - start
            reply = _REPLY_STAGE.get(server.stage)
            for cid, data in sorted(outbox.items()):
                run.trace.download_bytes[cid] += len(data)
                if reply is not None:
                    run.step(cid, reply, functools.partial(clients[cid].handle, data))
            # A client scheduled to vanish at this stage vanishes even if it was not asked anything.
            for cid, stage in dropouts.items():
                if stage == reply and cid in clients:
                    run.gone.setdefault(cid, stage)
    finally:
        for cid in sorted(set(clients) - set(run.gone)):
            clients[cid].close()
    run.trace.result = server.result()
    return run.trace
