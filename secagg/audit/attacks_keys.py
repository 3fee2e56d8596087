"""Attacks on key advertisement and session binding: man in the middle, Sybils, model inconsistency.

Several attacks run a "shadow world": the attacker plays every other party of the victim's round
itself (puppet clients with keys it chose, and an honest server) so that the victim's aggregate is
the victim's input plus inputs the attacker knows. Only signatures from a registry the attacker
cannot write to (the PKI of the malicious variant) tell the victim that its peers are puppets.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict

import numpy as np

from ..errors import SecAggError
from ..hazmat.keys import SigningKey
from ..hazmat.random import RandomSource
from ..params import SecAggConfig
from ..protocols.secagg import SecAggServer, Stage
from ..protocols.secagg.common import ring_order, setup_id
from ..protocols.secagg import messages as m
from .adversary import CONTEXT, AdversarialServer, Cast, Deviation, Play, _hand, cast, kind_name, play, plain_sum, replace_body
from .outcomes import Observation, observe

__all__ = ["key_substitution", "sybils_without_registry", "sybils_with_registry", "different_models", "split_sessions"]

VICTIM = 0


def _shadow_world(config: SecAggConfig, victim: Cast, seed: int) -> tuple[Play, list[int]]:
    """Run the victim with puppets in every other seat; return the log and [victim] if it leaked."""
    ids = [i for i in range(config.num_clients) if i != VICTIM]
    identities = registry = None
    if victim.registry is not None:
        identities = {i: SigningKey.generate() for i in ids}  # the attacker's keys, not the enrolled ones
        registry = {i: k.public_bytes for i, k in identities.items()} | {VICTIM: victim.registry[VICTIM]}
    puppets = cast(config, ids, context=CONTEXT, registry=registry, identities=identities, seed=seed)
    server = SecAggServer(config, context=CONTEXT, registry=registry)
    log = play(server, {VICTIM: victim.clients[VICTIM], **puppets.clients})
    if log.result is None or VICTIM not in log.result.survivors:
        return log, []
    known = plain_sum(config, puppets.inputs, [i for i in log.result.survivors if i != VICTIM])
    guess = (log.result.ring_sum.astype(np.uint64) - known.astype(np.uint64)) & np.uint64(config.encoding.ring_mask)
    return log, [VICTIM] if np.array_equal(guess, victim.inputs[VICTIM].astype(np.uint64)) else []


def key_substitution(config: SecAggConfig) -> Observation:
    """Man in the middle: the victim's view replaces every other client's keys by the server's.

    The real clients run an honest round among themselves, unaware; the victim runs with puppets.
    """
    real = cast(config, range(config.num_clients), context=CONTEXT)
    others = {i: c for i, c in real.clients.items() if i != VICTIM}
    world = play(SecAggServer(config, context=CONTEXT, registry=real.registry), others)
    log, leaked = _shadow_world(config, real, seed=1)
    note = f"the other {len(others)} clients' own round {'completed' if world.result else 'failed'}"
    return observe(log, leaked, {"key-list"}, note=note)


def sybils_without_registry(config: SecAggConfig) -> Observation:
    """Only the victim shows up; the server fills the other seats with fake clients.

    Semi-honest clients have no registry. A malicious-variant client must have one; here it enrols
    only the victim, so every Sybil is outside it.
    """
    victim = cast(config, [VICTIM], context=CONTEXT)
    log, leaked = _shadow_world(config, victim, seed=2)
    return observe(log, leaked, {"key-list"})


def sybils_with_registry(config: SecAggConfig) -> Observation:
    """As above, but all seats are enrolled in the victim's registry; the Sybils claim them."""
    identities = {i: SigningKey.generate() for i in range(config.num_clients)}
    registry = {i: k.public_bytes for i, k in identities.items()}
    victim = cast(config, [VICTIM], context=CONTEXT, registry=registry, identities={VICTIM: identities[VICTIM]})
    log, leaked = _shadow_world(config, victim, seed=3)
    return observe(log, leaked, {"key-list"})


def _same_first_key(seed: bytes) -> RandomSource:
    """Randomness whose first 32 bytes are ``seed``: two servers share one channel key pair."""
    used = [False]

    def source(n: int) -> bytes:
        if not used[0] and n == len(seed):
            used[0] = True
            return seed
        return os.urandom(n)

    return source


def _models(config: SecAggConfig) -> tuple[dict[int, bytes], Cast]:
    contexts = {i: CONTEXT + (b"/A" if i % 2 == 0 else b"/B") for i in range(config.num_clients)}
    return contexts, cast(config, range(config.num_clients), context=contexts)


def different_models(config: SecAggConfig) -> Observation:
    """Even clients get model A, odd clients model B, in what they are told is one round.

    The attacker runs one server per model; both share a channel key and relay every message to
    each other, so every client sees all keys and all share ciphertexts.
    """
    contexts, parties = _models(config)
    seed = os.urandom(32)
    servers = {ctx: AdversarialServer(config, context=ctx, registry=parties.registry, random=_same_first_key(seed))
               for ctx in set(contexts.values())}
    home = {i: servers[contexts[i]] for i in range(config.num_clients)}
    for server in servers.values():
        server.script = {"advertise": _all_keys(servers), "share": _all_shares(servers)}
    log = Play()
    inbound = {i: c.advertise() for i, c in parties.clients.items()}
    while all(s.stage not in (Stage.DONE, Stage.ABORTED) for s in servers.values()):
        for i, data in inbound.items():
            try:
                home[i].receive(data)
            except SecAggError as exc:
                log.rejected.append(f"server rejected {kind_name(data)} from client {i}: {type(exc).__name__}")
        if any(s.stage is Stage.ADVERTISE for s in servers.values()):
            _relay_adverts(servers, inbound)
        try:
            outbox = {i: d for s in servers.values() for i, d in s.advance().items() if home[i] is s}
        except SecAggError as exc:
            log.server_error = f"{type(exc).__name__}: {exc}"
            break
        replies = {i: _hand(parties.clients[i], i, d, log, None) for i, d in sorted(outbox.items())}
        inbound = {i: r for i, r in replies.items() if r is not None}
    return observe(log, [], {"key-list"})


def _relay_adverts(servers: dict[bytes, AdversarialServer], senders: dict[int, bytes]) -> None:
    """Hand each server the other model's advertisements, re-addressed to its own setup (they are
    untagged, so the attacker can). Where the server checks signatures it refuses them; the key-list
    script then adds them anyway."""
    for server in servers.values():
        for i, data in senders.items():
            if i in server.kept[Stage.ADVERTISE]:
                continue
            header, body = m.decode(data, max_parties=server.config.num_clients)
            try:
                server.receive(m.encode(dataclasses.replace(header, session=server.setup), body))
            except SecAggError:
                pass  # a relay the honest server refuses is the attacker's business, not a client's


def _all_keys(servers: dict[bytes, AdversarialServer]) -> Deviation:
    """Every client's keys in every key list, as advertised to whichever server."""
    def deviation(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        adverts = {c: b for s in servers.values() for c, b in s.kept[Stage.ADVERTISE].items()}
        entries = []
        for c, body in sorted(adverts.items()):
            assert isinstance(body, m.Advertise)
            entries.append(m.KeyEntry(c, body.encryption_key, body.mask_key, body.signature))

        def change(body: m.Body) -> m.Body:
            assert isinstance(body, m.KeyList)
            return replace_body(body, entries=tuple(entries))

        return server.rewrite(outbox, set(outbox), change)

    return deviation


def _all_shares(servers: dict[bytes, AdversarialServer]) -> Deviation:
    """Every share ciphertext for a client in its delivery, whichever server the sender used."""
    def deviation(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        inbound: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for other in servers.values():
            if other is server:
                continue
            for sender, body in other.kept[Stage.SHARE].items():
                assert isinstance(body, m.ShareBundle)
                for peer, ciphertext in zip(body.peers, body.ciphertexts):
                    inbound[peer].append((sender, ciphertext))

            out = dict(outbox)
        for c, data in outbox.items():
            body = server.read(data)
            assert isinstance(body, m.ShareDelivery)
            pairs = sorted(list(zip(body.peers, body.ciphertexts)) + inbound[c])
            merged = m.ShareDelivery(tuple(p for p, _ in pairs), tuple(x for _, x in pairs))
            out[c] = server.seal(c, merged)
        return out

    return deviation


def split_sessions(config: SecAggConfig) -> Observation:
    """Two separate sessions of one round, each told it is the whole round.

    The server splits the registered clients into two arcs of the (public) Harary ring, so that in a
    sparse graph each client keeps most of its neighbours, and runs one session with each arc.
    """
    ring = [int(c) for c in ring_order(config.num_clients, setup_id(config, 0, CONTEXT))]
    if config.degree is None:
        ring = sorted(ring)
    half = set(ring[: config.num_clients // 2])
    parties = cast(config, range(config.num_clients), context=CONTEXT)
    merged, sums = Play(), []
    for name, group in (("A", half), ("B", set(range(config.num_clients)) - half)):
        members = {i: c for i, c in parties.clients.items() if i in group}
        log = play(AdversarialServer(config, context=CONTEXT, registry=parties.registry), members)
        merged.refusals.update(log.refusals)
        merged.server_error = merged.server_error or log.server_error
        if log.result is not None:
            exact = np.array_equal(log.result.ring_sum, plain_sum(config, parties.inputs, log.result.survivors))
            sums.append(f"{name}: {len(log.result.survivors)} clients (exact: {exact})")
    note = f"partial sums released: {', '.join(sums) or 'none'}"
    return observe(merged, [], {"key-list"}, goal=len(sums) == 2, note=note)
