"""Attacks on the messages themselves: replays from another round or session, and tampered bytes."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..encoding import FixedPoint
from ..hazmat.keys import SigningKey
from ..params import SecAggConfig
from ..protocols.secagg import messages as m
from ..wire import HEADER_BYTES, SERVER_ID
from .adversary import CONTEXT, ACCEPTED, AdversarialServer, Intercept, Play, cast, kind_name, play, plain_sum, replace_body
from .outcomes import DETECTED, REFUSED, SUCCEEDED, UNDETECTED, Observation, observe

__all__ = ["replay_earlier_round", "replay_other_session", "tampered_bytes", "MUTATIONS"]

RAW_REPLAY = {1, 2, 3}
REWRITTEN = {"key-list": 4, "delivery": 5, "unmask-request": 6}


def _record(config: SecAggConfig, identities: dict[int, SigningKey], round_number: int) -> tuple[AdversarialServer, dict[tuple[int, str], bytes]]:
    """An earlier, completed round; returns its server and every message it sent, by (client, kind)."""
    registry = {i: k.public_bytes for i, k in identities.items()} if identities else None
    parties = cast(config, range(config.num_clients), round_number=round_number, context=CONTEXT,
                   registry=registry, identities=identities or None)
    server = AdversarialServer(config, round_number=round_number, context=CONTEXT, registry=registry)
    sent: dict[tuple[int, str], bytes] = {}

    def keep(sender: int, recipient: int, data: bytes) -> None:
        if sender == SERVER_ID:
            sent.setdefault((recipient, kind_name(data)), data)

    play(server, parties.clients, tap=keep)
    return server, sent


def _replayer(old: AdversarialServer, sent: dict[tuple[int, str], bytes], new: AdversarialServer) -> Intercept:
    """Raw replays to some clients; to others, the old body re-sent under a valid new header and tag."""
    def intercept(cid: int, data: bytes) -> list[tuple[bytes, bool]]:
        kind = kind_name(data)
        stale = sent.get((cid, kind))
        if stale is None:
            return [(data, False)]
        if cid in RAW_REPLAY:
            return [(stale, True), (data, False)]
        if REWRITTEN.get(kind) == cid and (kind != "unmask-request" or new.config.threat.is_malicious):
            return [(new.seal(cid, old.read(stale)), True)]
        return [(data, False)]

    return intercept


def _replay(config: SecAggConfig, round_shift: int) -> Observation:
    identities = {i: SigningKey.generate() for i in range(config.num_clients)} if config.threat.is_malicious else {}
    old, sent = _record(config, identities, 0)
    registry = {i: k.public_bytes for i, k in identities.items()} if identities else None
    parties = cast(config, range(config.num_clients), round_number=round_shift, context=CONTEXT,
                   registry=registry, identities=identities or None, seed=7)
    new = AdversarialServer(config, round_number=round_shift, context=CONTEXT, registry=registry)
    log = play(new, parties.clients, intercept=_replayer(old, sent, new))
    note = ""
    if log.result is not None:
        exact = np.array_equal(log.result.ring_sum, plain_sum(config, parties.inputs, log.result.survivors))
        note = f"{len(log.probes)} replayed messages; the round still completed (exact: {exact})"
    return observe(log, [], {k for _, k, _ in log.probes}, note=note)


def replay_earlier_round(config: SecAggConfig) -> Observation:
    """Messages the server sent in round 0 are replayed to the clients of round 1."""
    return _replay(config, 1)


def replay_other_session(config: SecAggConfig) -> Observation:
    """Messages from an earlier attempt of the same round (same context, other keys) are replayed."""
    return _replay(config, 0)


def _flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "flip-header": lambda d: _flip(d, 16),
    "flip-first-body-byte": lambda d: _flip(d, HEADER_BYTES),
    "flip-middle": lambda d: _flip(d, (HEADER_BYTES + len(d)) // 2),
    "flip-last": lambda d: _flip(d, len(d) - 1),
    "truncate": lambda d: d[:-1],
    "extend": lambda d: d + b"\x00",
}
UPLINK = ("advertise", "shares", "masked-input", "survivor-signature", "unmask-response")
DOWNLINK = ("key-list", "delivery", "survivors", "unmask-request")
TARGET = 1


def _small(config: SecAggConfig) -> SecAggConfig:
    """A 6-client complete-graph round: these checks are per message, not per graph."""
    encoding = FixedPoint(config.encoding.clip_bound, config.encoding.fractional_bits, 1, 6)
    return SecAggConfig.secagg(6, config.schema, config.threat, encoding)


def _probe(config: SecAggConfig, kind: str, mutate: Callable[[bytes], bytes] | None) -> str:
    """Tamper with the target's first message of ``kind``; refused, detected, corrupted or missed."""
    parties = cast(config, range(config.num_clients), context=CONTEXT)
    server = AdversarialServer(config, context=CONTEXT, registry=parties.registry)
    done: list[bool] = []

    def hit(cid: int, data: bytes) -> bool:
        if cid != TARGET or kind_name(data) != kind or done:
            return False
        done.append(True)
        return True

    def down(cid: int, data: bytes) -> list[tuple[bytes, bool]]:
        if not hit(cid, data):
            return [(data, False)]
        return [(mutate(data) if mutate else _retagged_flip(server, cid, data), True), (data, False)]

    log = play(server, parties.clients, intercept=down,
               uplink=lambda cid, data: (mutate or bytes)(data) if hit(cid, data) else data)
    return _verdict(config, log, parties.inputs, kind)


def _retagged_flip(server: AdversarialServer, cid: int, data: bytes) -> bytes:
    """The server flips a bit inside a relayed share ciphertext and re-tags the message (it can)."""
    body = server.read(data)
    assert isinstance(body, m.ShareDelivery)
    first = _flip(body.ciphertexts[0], len(body.ciphertexts[0]) // 2)
    return server.seal(cid, replace_body(body, ciphertexts=(first,) + body.ciphertexts[1:]))


def _verdict(config: SecAggConfig, log: Play, inputs: dict[int, np.ndarray], kind: str) -> str:
    if kind in UPLINK:
        refused = bool(log.rejected) and f"{kind} from client {TARGET}:" in log.rejected[0]
    else:
        refused = bool(log.probes) and log.probes[0][2] != ACCEPTED
    if refused:
        return REFUSED
    if log.result is not None and not np.array_equal(log.result.ring_sum, plain_sum(config, inputs, log.result.survivors)):
        return SUCCEEDED
    if log.refusals or log.rejected or log.server_error:
        return DETECTED
    return UNDETECTED


def tampered_bytes(config: SecAggConfig) -> Observation:
    """Every message type, both directions: flipped header/body/tag bytes, truncated, extended."""
    small = _small(config)
    kinds = [k for k in UPLINK + DOWNLINK if small.threat.is_malicious or "survivor" not in k]
    verdicts: dict[str, str] = {}
    for kind in kinds:
        for name, mutate in MUTATIONS.items():
            verdicts[f"{kind}/{name}"] = _probe(small, kind, mutate)
    verdicts["delivery/retagged-ciphertext-flip"] = _probe(small, "delivery", None)
    counts = {v: sum(1 for x in verdicts.values() if x == v) for v in (REFUSED, DETECTED, SUCCEEDED, UNDETECTED)}
    later = sorted(k for k, v in verdicts.items() if v == DETECTED)
    missed = sorted(k for k, v in verdicts.items() if v in (SUCCEEDED, UNDETECTED))
    outcome = SUCCEEDED if counts[SUCCEEDED] else UNDETECTED if missed else DETECTED if later else REFUSED
    evidence = (f"{len(verdicts)} tampered messages over {len(kinds)} kinds: {counts[REFUSED]} refused on arrival, "
                f"{counts[DETECTED]} detected later ({', '.join(later) or 'none'}); missed: {', '.join(missed) or 'none'}")
    return Observation(outcome, evidence, [])
