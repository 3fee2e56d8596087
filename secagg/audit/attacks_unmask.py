"""Attacks on the unmask stage: lies about who survived, aimed at one victim's individual input.

The attacker wants both kinds of share for one client u: shares of its self-mask seed b_u (released
for survivors) and of its mask key s_sk_u (released for clients that dropped after sharing). With
t of each, y_u - PRG(b_u) - (u's pairwise masks) is u's input. Each attack ends with the server
trying exactly that (:meth:`AdversarialServer.recover`) and the harness comparing with u's input.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import SecAggError
from ..params import SecAggConfig
from ..protocols.secagg import SecAggClient, Stage
from ..protocols.secagg import messages as m
from .adversary import CONTEXT, AdversarialServer, Deviation, Play, cast, play, plain_sum, replace_body
from .outcomes import Observation, leaked_inputs, observe

__all__ = ["VICTIM", "both_alive_and_dropped", "inconsistent_survivor_sets", "inconsistent_view", "false_dropout_claim"]

VICTIM = 0


def _with(ids: tuple[int, ...], extra: int) -> tuple[int, ...]:
    return tuple(sorted(set(ids) | {extra}))


def _without(ids: tuple[int, ...], gone: int) -> tuple[int, ...]:
    return tuple(i for i in ids if i != gone)


def _closing_stage(config: SecAggConfig) -> str:
    """The stage whose close sends the unmask request."""
    return "consistency" if config.threat.is_malicious else "mask"


def both_alive_and_dropped(config: SecAggConfig) -> Observation:
    """The unmask request lists the victim as surviving and as dropped (Flower accepts this)."""
    parties = cast(config, range(config.num_clients))

    def lie(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        def change(body: m.Body) -> m.Body:
            assert isinstance(body, m.UnmaskRequest)
            return replace_body(body, dropped=_with(body.dropped, VICTIM))

        return server.rewrite(outbox, set(outbox), change)

    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry, script={_closing_stage(config): lie})
    log = play(server, parties.clients)
    return observe(log, leaked_inputs(server, parties, [VICTIM]), {"unmask-request"})


def _victim_split(server: AdversarialServer) -> set[int]:
    """Half of the victim's neighbours and half of the rest: told the victim dropped; others, not.

    Both groups are as large as they can be, to give each the best chance to gather signatures.
    """
    neighbours = server.graph[VICTIM]
    rest = [c for c in sorted(server.graph) if c != VICTIM and c not in neighbours]
    return set(neighbours[: len(neighbours) // 2]) | set(rest[::2])


def _tell_some_victim_dropped(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
    """Semi-honest: unmask requests that differ between the two groups."""
    def change(body: m.Body) -> m.Body:
        assert isinstance(body, m.UnmaskRequest)
        return replace_body(body, alive=_without(body.alive, VICTIM), dropped=_with(body.dropped, VICTIM))

    return server.rewrite(outbox, _victim_split(server), change)


def _survivor_lists(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
    """Malicious: the consistency round shows the two groups different survivor sets."""
    def change(body: m.Body) -> m.Body:
        assert isinstance(body, m.SurvivorList)
        return m.SurvivorList(_without(body.survivors, VICTIM))

    return server.rewrite(outbox, _victim_split(server), change)


def _split_requests(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
    """Malicious: each group gets the set it signed, with the signatures gathered on that set."""
    group = _victim_split(server)
    alive, dropped = server.survivors, tuple(sorted(c for c, s in server.dropped.items() if s == "mask"))
    out = {}
    for members, lie in ((group, True), (set(server.signatures) - group, False)):
        signers = tuple(sorted(members & set(server.signatures)))
        request = m.UnmaskRequest(
            _without(alive, VICTIM) if lie else alive,
            _with(dropped, VICTIM) if lie else dropped,
            signers,
            tuple(server.signatures[s] for s in signers),
        )
        out.update({c: server.seal(c, request) for c in members & set(outbox)})
    return out


def inconsistent_view(config: SecAggConfig) -> dict[str, Deviation]:
    """The server script of :func:`inconsistent_survivor_sets`, for any driver of an
    :class:`AdversarialServer` (afterwards ``server.recover(VICTIM)`` says whether it worked)."""
    if config.threat.is_malicious:
        return {"mask": _survivor_lists, "consistency": _split_requests}
    return {"mask": _tell_some_victim_dropped}


def inconsistent_survivor_sets(config: SecAggConfig) -> Observation:
    """Half of the victim's neighbours hear it dropped, the rest that it survived."""
    parties = cast(config, range(config.num_clients))
    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry, script=inconsistent_view(config))
    log = play(server, parties.clients)
    return observe(log, leaked_inputs(server, parties, [VICTIM]), {"unmask-request", "survivors"})


def _ask_again(server: AdversarialServer, parties_clients: Mapping[int, SecAggClient], log: Play) -> None:
    """After the mask-key shares, ask every client for the victim's self-mask seed share too."""
    request = m.UnmaskRequest(_with(server.survivors, VICTIM), ())
    for cid, client in sorted(parties_clients.items()):
        if client.stage is not Stage.DONE:
            continue
        data = server.seal(cid, request)
        try:
            reply = client.handle(data)
            log.probes.append((cid, "unmask-request", "accepted"))
            if reply is not None:
                server.keep_response(reply)
        except SecAggError as exc:
            log.probes.append((cid, "unmask-request", f"unmask-request (asked again): {type(exc).__name__}: {exc}"))


def _tell_victim(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
    """Send the victim the same list as everyone else (which calls it dropped)."""
    any_client = min(outbox)
    return {**outbox, VICTIM: server.seal(VICTIM, server.read(outbox[any_client]))}


def false_dropout_claim(config: SecAggConfig) -> Observation:
    """The server received the victim's masked input but declares it dropped, then asks again."""
    parties = cast(config, range(config.num_clients))
    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry, script={"mask": _tell_victim})
    server.forget_masked([VICTIM])  # its masked input arrives and is kept, but never delivered
    log = play(server, parties.clients)
    _ask_again(server, parties.clients, log)
    note = ""
    if log.result is not None:
        others = [c for c in log.result.survivors if c != VICTIM]
        exact = np.array_equal(log.result.ring_sum, plain_sum(config, parties.inputs, others))
        note = f"the server's aggregate covers the other {len(others)} survivors (exact: {exact})"
    return observe(log, leaked_inputs(server, parties, [VICTIM]), {"unmask-request", "survivors"}, note=note)
