"""Attacks that isolate one client (issue 8): the server, with c corrupt clients, makes a victim mask
with few enough peers that it can unmask the victim's input alone.

Restricted delivery: the victim u is shown only t - 1 share ciphertexts, those of its corrupt
neighbours C_u and of a set H of honest ones; the server then leaves H out of the survivor set and
calls it dropped. Survivors release u's self-mask seed shares (u survived) and H's mask-key shares
(H dropped); the corrupt clients' mask keys the attacker knows. Then
x_u = y_u - PRG(b_u) - sum_{v in C_u + H} +-PRG(s_uv). The variants below only change how the
attacker gets a victim with many corrupt neighbours: re-drawing the graph (grinding) or shrinking
the key list (withholding honest advertisements). SECURITY.md, lemma "isolation", says when each
must fail; :mod:`secagg.audit.search` searches the same space exhaustively for small n.

Corrupt clients run real client code with a randomness source the attacker can replay
(:func:`corrupt_random`), so it knows their mask keys without reading their memory.
:class:`Isolation` is restricted delivery as a script for any driver of an
:class:`~secagg.audit.adversarial_server.AdversarialServer`: the harness's :func:`play` here, and a
Flower ServerApp attacking real nodes (``secagg.adapters.flower.run_round(..., server=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import numpy as np

from ..hazmat.keys import AgreementKeyPair, SigningKey
from ..params import SecAggConfig
from ..protocols.secagg import Stage
from ..protocols.secagg import messages as m
from ..protocols.secagg.client import advertise_signed_bytes
from ..protocols.secagg.common import LABEL_ADVERTISE_SIG, LABEL_SERVER_CHANNEL, TO_SERVER, channel_context, message_key
from .adversary import CONTEXT, AdversarialServer, Cast, Deviation, ReplayableRandom, cast, kind_name, plain_sum, play, replace_body
from .outcomes import DETECTED, SUCCEEDED, Observation, observe

__all__ = ["restricted_delivery", "graph_grinding", "advertise_dropout_amplification", "mirrored_key",
           "bad_share_abort", "ReplayableRandom", "Isolation", "corrupt_ids", "corrupt_random"]

GRINDING_ATTEMPTS = 48
GRINDING_CONTEXTS = 24


def corrupt_ids(config: SecAggConfig) -> list[int]:
    """The last c = ``config.corrupt_bound`` ids: exactly the corrupt clients the config assumes."""
    return list(range(config.num_clients - config.corrupt_bound, config.num_clients))


def corrupt_random(cid: int) -> ReplayableRandom:
    """The randomness corrupt client ``cid`` runs with, which the attacker can replay (fresh each call)."""
    return ReplayableRandom(b"corrupt-%d" % cid)


def _corrupt_keys(cid: int) -> tuple[AgreementKeyPair, AgreementKeyPair]:
    """Replay a corrupt client's randomness: its encryption key pair first, then its mask key pair."""
    replay = corrupt_random(cid)
    return AgreementKeyPair.generate(replay), AgreementKeyPair.generate(replay)


def _corrupt_mask_key(cid: int) -> bytes:
    return _corrupt_keys(cid)[1].private_bytes()


@dataclass
class _Plan:
    victim: int
    corrupt_neighbours: tuple[int, ...]
    dropped_honest: tuple[int, ...]

    @property
    def shown(self) -> tuple[int, ...]:
        return tuple(sorted(self.corrupt_neighbours + self.dropped_honest))


def _plan(server: AdversarialServer, corrupt: set[int], candidates: list[int]) -> _Plan:
    """The victim with the most corrupt neighbours, and t - 1 - that many honest ones to drop.

    Honest peers to drop are picked greedily with the fewest links among themselves, so each keeps
    as many holders (for its mask-key shares) in the survivor set as possible.
    """
    graph, t = server.graph, server.config.threshold
    victim = max(candidates, key=lambda u: (len(set(graph[u]) & corrupt), -u))
    bad = tuple(sorted(set(graph[victim]) & corrupt))[: t - 1]
    chosen: list[int] = []
    pool = [v for v in graph[victim] if v not in corrupt]
    while len(bad) + len(chosen) < t - 1 and pool:
        pool.sort(key=lambda v: (sum(1 for w in chosen if w in graph[v]), v))
        chosen.append(pool.pop(0))
    return _Plan(victim, bad, tuple(sorted(chosen)))


class Isolation:
    """Restricted delivery as a server script, whatever moves the messages.

    When the share stage closes it picks the victim (:func:`_plan`: the honest client of the key
    list with the most corrupt neighbours), hands it only t - 1 peers' share ciphertexts and makes
    the server hold back the masked inputs of the honest ones among them, so they look dropped.
    Corrupt clients must run with :func:`corrupt_random` (the attacker replays their mask keys).
    It guarantees nothing about the outcome: :meth:`recover` says what the attacker got.

    Args:
        corrupt: the corrupt client ids (usually :func:`corrupt_ids`).
    """

    def __init__(self, corrupt: Collection[int]) -> None:
        self.corrupt = frozenset(corrupt)
        self.plan: _Plan | None = None

    @property
    def script(self) -> dict[str, Deviation]:
        """The script to give :class:`AdversarialServer` (``script=``)."""
        return {"share": self._restrict}

    def _restrict(self, server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        plan = self.plan = _plan(server, set(self.corrupt), [u for u in sorted(server.view.keys) if u not in self.corrupt])
        server.forget_masked(plan.dropped_honest)  # claim they never arrived; ``server.masked`` keeps them

        def change(body: m.Body) -> m.Body:
            assert isinstance(body, m.ShareDelivery)
            keep = [i for i, p in enumerate(body.peers) if p in plan.shown]
            return replace_body(body, peers=tuple(body.peers[i] for i in keep),
                                ciphertexts=tuple(body.ciphertexts[i] for i in keep))

        return server.rewrite(outbox, {plan.victim}, change)

    def recover(self, server: AdversarialServer) -> np.ndarray | None:
        """The victim's input (encoded ring words) unmasked from what clients released, or None."""
        if self.plan is None:
            return None
        known = {c: _corrupt_mask_key(c) for c in self.plan.corrupt_neighbours}
        return server.recover_isolated(self.plan.victim, self.plan.shown, known)


def _isolate(config: SecAggConfig, *, attempts: int = 1, contexts: int = 1, withhold: bool = False) -> Observation:
    """Restricted delivery after grinding: ``contexts`` caller contexts (model digests the server
    may perturb) times ``attempts`` server channel keys, optionally over shrunken key lists."""
    corrupt = corrupt_ids(config)
    best: tuple[int, AdversarialServer, dict[int, bytes], list[int], Cast] | None = None
    graphs, draws = set(), 0
    for index in range(contexts):
        context = CONTEXT if index == 0 else CONTEXT + b"/perturbed-%d" % index
        parties = cast(config, range(config.num_clients), context=context,
                       randoms={c: corrupt_random(c) for c in corrupt})
        adverts = {cid: client.advertise() for cid, client in parties.clients.items()}
        for listed in _key_lists(config, sorted(adverts), corrupt, withhold):
            for _ in range(attempts):
                honest = [u for u in listed if u not in corrupt]
                server = AdversarialServer(config, context=context, registry=parties.registry)
                for cid in listed:
                    server.receive(adverts[cid])
                opened = server.advance()
                draws += 1
                graphs.add(tuple(sorted((u, tuple(v)) for u, v in server.graph.items())))
                score = max(len(set(server.graph[u]) & set(corrupt)) for u in honest)
                if best is None or score > best[0]:
                    best = (score, server, opened, listed, parties)
    assert best is not None
    _, server, opened, listed, parties = best
    attack = Isolation(corrupt)
    server.script = attack.script
    members = {cid: parties.clients[cid] for cid in listed}
    log = play(server, members, opened=opened)
    plan, guess = attack.plan, attack.recover(server)
    if plan is None:  # the round ended before the share stage closed: no victim was ever isolated
        return observe(log, [], {"key-list", "survivors", "unmask-request", "delivery"},
                       note=f"the round ended before the shares were delivered; key list of {len(listed)}")
    leaked = [plan.victim] if guess is not None and np.array_equal(guess, parties.inputs[plan.victim]) else []
    note = (f"victim {plan.victim}: {len(plan.corrupt_neighbours)} corrupt neighbours, shown "
            f"{len(plan.shown)} peers, honest peers dropped {list(plan.dropped_honest)}; "
            f"{draws} graph draws gave {len(graphs)} distinct graph(s) over the key list; key list of {len(listed)}")
    return observe(log, leaked, {"survivors", "unmask-request", "delivery"}, note=note)


def _key_lists(config: SecAggConfig, everyone: list[int], corrupt: list[int], withhold: bool) -> list[list[int]]:
    """Every advertiser, or (``withhold``) windows of honest advertisers left out of the key list:
    just enough that the survivor set can still lose t - 1 - c peers and keep q members, and at
    least half the clients; which ones are left out is another lever over the graph."""
    if not withhold:
        return [everyone]
    honest = [u for u in everyone if u not in corrupt]
    size = min(config.num_clients, max(config.quorum + config.threshold - 1, config.num_clients // 2 + len(corrupt)))
    drop = config.num_clients - size
    windows = {tuple(sorted(set(everyone) - set(honest[i:i + drop]))) for i in range(len(honest) - drop + 1)}
    return [list(w) for w in sorted(windows)]


def restricted_delivery(config: SecAggConfig) -> Observation:
    """Show the victim t - 1 share holders, then call the honest ones dropped (issue 8, finding 1)."""
    return _isolate(config)


def graph_grinding(config: SecAggConfig) -> Observation:
    """Re-draw the SecAgg+ graph until a victim has the most corrupt neighbours, then restricted
    delivery (finding 3): a fresh server channel key per draw (the lever before the fix) and a
    perturbed caller context (the lever left, charged to sigma)."""
    return _isolate(config, attempts=GRINDING_ATTEMPTS // GRINDING_CONTEXTS, contexts=GRINDING_CONTEXTS)


def advertise_dropout_amplification(config: SecAggConfig) -> Observation:
    """Leave all but a quorum of honest advertisers out of the key list, so corrupt clients are a
    larger share of a graph built over fewer clients, then restricted delivery (finding 4)."""
    return _isolate(config, withhold=True)


def _mirror(key: bytes) -> bytes:
    """The same X25519 point under a non-canonical encoding: bit 255 set (RFC 7748 decoders ignore it)."""
    return key[:-1] + bytes([key[-1] | 0x80])


def mirrored_key(config: SecAggConfig) -> Observation:
    """A corrupt client re-advertises an honest client's mask key with bit 255 set (finding 2).

    Under the old derivation the victim's mask with the corrupt client equals its mask with the
    honest one, and with opposite signs the two cancel inside the victim's masked input. The
    harness checks the first step: whether the mirrored key gets into a key list honest clients
    accept (goal reached), or is refused by the server's decoder or by every client.
    """
    corrupt, honest = corrupt_ids(config)[-1], 0
    identities = {i: SigningKey.generate() for i in range(config.num_clients)}
    parties = cast(config, range(config.num_clients), context=CONTEXT, identities=identities)
    seen: dict[int, tuple[bytes, bytes]] = {}  # client -> (encryption key, mask key) as advertised

    def mirrored(setup: bytes) -> m.Advertise:
        encryption, mask = seen[corrupt][0], _mirror(seen[honest][1])
        signed = advertise_signed_bytes(setup, corrupt, encryption, mask)
        return m.Advertise(encryption, mask, identities[corrupt].sign(LABEL_ADVERTISE_SIG, signed))

    def uplink(cid: int, data: bytes) -> bytes:
        if kind_name(data) != "advertise":
            return data
        header, body = m.decode(data, max_parties=config.num_clients)
        if not isinstance(body, m.Advertise):
            return data
        seen[cid] = (body.encryption_key, body.mask_key)
        return m.encode(header, mirrored(header.session)) if cid == corrupt else data

    def inject(server: AdversarialServer, outbox: dict[int, bytes]) -> dict[int, bytes]:
        """If the server's decoder refused the advertisement, put the mirrored key in the list anyway."""
        def change(body: m.Body) -> m.Body:
            assert isinstance(body, m.KeyList)
            if any(e.client == corrupt for e in body.entries):
                return body
            advert = mirrored(server.setup)
            entry = m.KeyEntry(corrupt, advert.encryption_key, advert.mask_key, advert.signature)
            return replace_body(body, entries=tuple(sorted((*body.entries, entry), key=lambda e: e.client)))

        return {cid: server.seal(cid, change(server.read(data))) for cid, data in outbox.items()}

    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry, script={"advertise": inject})
    log = play(server, parties.clients, uplink=uplink)
    accepted = [c for c, client in parties.clients.items()
                if c != corrupt and client.stage not in (Stage.SHARE, Stage.ABORTED)]
    note = f"{len(accepted)} honest clients accepted a key list holding client {honest}'s mask key mirrored"
    return observe(log, [], {"key-list", "advertise"}, goal=bool(accepted), note=note)


def bad_share_abort(config: SecAggConfig) -> Observation:
    """Corrupt clients return garbage in every share of their unmask responses (finding 7).

    The goal is a denial of service: an aborted round. Fewer bad shares than the honest surplus must
    be found and left out, and the aggregate must still be exact.
    """
    corrupt = 0  # the lowest id: the old retry tried only subsets that contain holder 0
    parties = cast(config, range(config.num_clients), context=CONTEXT, randoms={corrupt: corrupt_random(corrupt)})
    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry)

    def garble(cid: int, data: bytes) -> bytes:
        """The corrupt client re-tags its garbled response with its own channel key (it can)."""
        if cid != corrupt or server.stage is not Stage.UNMASK:
            return data
        header, body = server.open(data)
        assert isinstance(body, m.UnmaskResponse)
        bad = tuple(bytes((b + 1) % 256 for b in share[:4]) + share[4:] for share in body.shares)
        context = channel_context(header.session, cid)
        channel = _corrupt_keys(cid)[0].agree(server.view.server_key, LABEL_SERVER_CHANNEL, context)
        return m.encode(header, replace_body(body, shares=bad), message_key(channel, TO_SERVER, header.kind))

    log = play(server, parties.clients, uplink=garble)
    if server.aggregate_error or log.result is None:
        log.server_error = log.server_error or server.aggregate_error
        return observe(log, [], {"unmask-response"}, goal=True, note=f"round aborted by bad shares from {[corrupt]}")
    exact = np.array_equal(log.result.ring_sum, plain_sum(config, parties.inputs, log.result.survivors))
    if not exact:
        return Observation(SUCCEEDED, "the round released a wrong sum")
    return Observation(DETECTED, f"bad shares from clients {[corrupt]} were identified and left out; "
                                 f"aggregate over {len(log.result.survivors)} survivors exact")

