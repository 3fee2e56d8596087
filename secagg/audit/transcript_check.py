"""Check a server-side transcript: what did this server learn, and could it learn more?

Four checks, each with a plain-language detail:

1. ``uniform-masked-inputs``: every masked input, and all of them pooled, pass chi-square tests
   of uniformity over the ring (per byte and on the top bits of each word), Bonferroni-corrected.
2. ``one-share-kind-per-client``: no client released both its share of a user's self-mask seed and
   of that user's mask key, and no user had both kinds released by different clients.
3. ``signatures``: every signature in the transcript (advertisements, key lists, survivor-set
   signatures, unmask requests) verifies under the identity registry, and every key the server
   recorded in its transcript's registry is the one the auditor's registry holds. Only a registry
   the auditor obtained independently (``registry=``, ``--registry FILE``) proves anything: the one
   inside the transcript was written by the server under audit. Without one, signatures are checked
   against the recorded registry for consistency only, and the report says so
   (``signatures_checked_against_registry: false``).
4. ``revealed-only-survivors-and-aggregate``: one survivor set was sent to everyone; it holds
   exactly the clients whose masked inputs arrived; the dropped list holds only clients that shared
   keys and sent no input; shares were released only as the request asked. Then the shares reveal
   the survivor set and the survivors' sum, and nothing else.

Tags are not verified (see :func:`secagg.audit.transcript.decode_untagged`). The transcript is
hostile input: malformed metadata raises :class:`~secagg.MalformedMessage`, never another exception.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import IntegrityError, MalformedMessage, ParameterError, SecAggError
from ..hazmat.keys import PUBLIC_KEY_BYTES, verify_signature
from ..protocols.secagg import messages as m
from ..protocols.secagg.client import advertise_signed_bytes, survivors_signed_bytes
from ..protocols.secagg.common import LABEL_ADVERTISE_SIG, LABEL_SURVIVORS_SIG
from ..wire import Header
from .transcript import RECEIVED, SENT, Record, Transcript, decode_untagged
from .uniformity import ChiSquare, byte_test, word_test

__all__ = ["Check", "check_transcript", "parse_registry", "read_registry"]

View = tuple[Record, Header, m.Body]
_ID = re.compile(r"0|[1-9][0-9]{0,9}")
_KEY_HEX = re.compile(f"[0-9a-fA-F]{{{2 * PUBLIC_KEY_BYTES}}}")
_MAX_ID = 2**32 - 1


def _registry(data: object, error: type[SecAggError], what: str) -> dict[int, bytes]:
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object mapping client ids to public keys")
    registry: dict[int, bytes] = {}
    for key, value in data.items():
        if not (isinstance(key, str) and _ID.fullmatch(key) and int(key) <= _MAX_ID):
            raise error(f"{what}: {str(key)[:20]!r} is not a client id (a decimal integer below 2^32)")
        if not (isinstance(value, str) and _KEY_HEX.fullmatch(value)):
            raise error(f"{what}: the key of client {key} is not {PUBLIC_KEY_BYTES} bytes of hex")
        registry[int(key)] = bytes.fromhex(value)
    return registry


def parse_registry(data: object) -> dict[int, bytes]:
    """An auditor's registry from parsed JSON: ``{"client id": "Ed25519 public key hex", ...}``.

    Raises:
        ParameterError: not an object of decimal client ids to 32-byte hex keys.
    """
    return _registry(data, ParameterError, "the registry")


def read_registry(path: str | Path) -> dict[int, bytes]:
    """Read an auditor's registry file (see :func:`parse_registry`).

    Raises:
        ParameterError: the file cannot be read or does not hold a registry.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ParameterError(f"cannot read the registry {path}: {type(exc).__name__}") from None
    return parse_registry(data)


def _checked_registry(registry: Mapping[int, bytes]) -> dict[int, bytes]:
    if not isinstance(registry, Mapping):
        raise ParameterError("registry must map client ids to Ed25519 public keys")
    for client, key in registry.items():
        if type(client) is not int or not 0 <= client <= _MAX_ID:
            raise ParameterError(f"registry: {client!r} is not a client id")
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise ParameterError(f"registry: the key of client {client} is not {PUBLIC_KEY_BYTES} bytes")
    return dict(registry)


@dataclass(frozen=True)
class _Session:
    """The transcript metadata the checks use, validated: the server wrote it, so it is hostile."""

    num_clients: int
    threshold: int
    modulus_bits: int
    registry: dict[int, bytes] | None


def _meta_int(meta: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = meta.get(name, default)
    if type(value) is not int or not low <= value <= high:  # not bool, float or string
        raise MalformedMessage(f"transcript metadata: {name} must be an integer in [{low}, {high}]")
    return value


def _session(meta: object) -> _Session:
    if not isinstance(meta, dict):
        raise MalformedMessage("transcript metadata is not a JSON object")
    num_clients = _meta_int(meta, "num_clients", m.MAX_PARTIES, 1, m.MAX_PARTIES)
    threshold = _meta_int(meta, "threshold", 1, 1, num_clients)
    bits = _meta_int(meta, "modulus_bits", 64, 1, 64)
    recorded = _registry(meta["registry"], MalformedMessage, "transcript metadata: registry") if "registry" in meta else None
    return _Session(num_clients, threshold, bits, recorded)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _decode(transcript: Transcript, limit: int) -> tuple[list[View], list[str]]:
    views, errors = [], []
    for i, record in enumerate(transcript.records):
        try:
            header, body = decode_untagged(record.data, limit)
        except SecAggError as exc:
            errors.append(f"record {i}: {exc}")
            continue
        views.append((record, header, body))
    return views, errors


def _bodies(views: list[View], direction: int, kind: type) -> list[tuple[Header, Any]]:
    return [(h, b) for r, h, b in views if r.direction == direction and isinstance(b, kind)]


def _uniformity(views: list[View], bits: int, alpha: float) -> tuple[Check, list[ChiSquare]]:
    vectors = [(h.sender, b.vector) for h, b in _bodies(views, RECEIVED, m.MaskedInput)]
    if not vectors:
        return Check("uniform-masked-inputs", True, "no masked input in this transcript"), []
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    words = {c: v.astype(np.uint64) & mask for c, v in vectors}
    tests: list[ChiSquare | None] = []
    for client, w in sorted(words.items()):
        tests += [byte_test(f"client {client}: bytes", w, bits), word_test(f"client {client}: top bits", w, bits)]
    pooled = np.concatenate(list(words.values()))
    tests += [byte_test("all inputs: bytes", pooled, bits), word_test("all inputs: top bits", pooled, bits)]
    done = [t for t in tests if t is not None]
    cutoff = alpha / max(len(done), 1)
    bad = [t for t in done if t.p_value < cutoff]
    smallest = min((t.p_value for t in done), default=1.0)
    detail = (f"{len(vectors)} masked inputs over Z_2^{bits}, {len(done)} chi-square tests, smallest p = {smallest:.3g} "
              f"(cutoff {cutoff:.2g} = {alpha:g} / {len(done)})")
    if bad:
        detail = "NOT uniform: " + "; ".join(f"{t.name} p = {t.p_value:.3g}" for t in bad[:5]) + ". " + detail
    return Check("uniform-masked-inputs", not bad, detail), done


def _share_release(views: list[View]) -> Check:
    per_holder: dict[tuple[int, int], set[int]] = defaultdict(set)
    holders: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    responses = _bodies(views, RECEIVED, m.UnmaskResponse)
    for header, body in responses:
        for owner, kind in zip(body.owners, body.kinds):
            per_holder[(header.sender, owner)].add(kind)
            holders[owner][kind].add(header.sender)
    both = sorted(hk for hk, kinds in per_holder.items() if len(kinds) == 2)
    if both:
        h, o = both[0]
        return Check("one-share-kind-per-client", False,
                     f"client {h} released both its share of client {o}'s self-mask seed and of its mask key "
                     f"({len(both)} such pairs): with t of each the server unmasks client {o}'s individual input")
    mixed = sorted(o for o, kinds in holders.items() if len(kinds) == 2)
    if mixed:
        o = mixed[0]
        seeds, keys = sorted(holders[o][m.ShareKind.SELF_MASK_SEED]), sorted(holders[o][m.ShareKind.MASK_KEY])
        return Check("one-share-kind-per-client", False,
                     f"client {o}'s self-mask seed shares came from {seeds} and its mask-key shares from {keys}: "
                     "the server showed clients different survivor sets and may unmask its input")
    return Check("one-share-kind-per-client", True,
                 f"{len(responses)} unmask responses; every user's shares were released of one kind only")


def _verifier(registry: Mapping[int, bytes] | None) -> tuple[Any, list[str], list[int]]:
    seen: set[tuple[int, bytes, bytes]] = set()
    failures: list[str] = []
    count = [0]

    def verify(who: int, signature: bytes, label: bytes, message: bytes, what: str) -> None:
        if not signature or (who, signature, message) in seen:
            return
        seen.add((who, signature, message))
        count[0] += 1
        try:
            if registry is None or who not in registry:
                raise IntegrityError("no registry entry")
            verify_signature(registry[who], signature, label, message)
        except IntegrityError:
            failures.append(f"{what} by client {who}")

    return verify, failures, count


def _signatures(views: list[View], registry: Mapping[int, bytes] | None, independent: bool,
                mismatched: list[int]) -> Check:
    verify, failures, count = _verifier(registry)
    signed_sets: dict[int, tuple[int, ...]] = {}
    for record, header, body in views:
        if isinstance(body, m.Advertise) and record.direction == RECEIVED:
            msg = advertise_signed_bytes(header.session, header.sender, body.encryption_key, body.mask_key)
            verify(header.sender, body.signature, LABEL_ADVERTISE_SIG, msg, "advertisement")
        elif isinstance(body, m.KeyList):
            for e in body.entries:
                msg = advertise_signed_bytes(header.session, e.client, e.encryption_key, e.mask_key)
                verify(e.client, e.signature, LABEL_ADVERTISE_SIG, msg, "key-list entry")
        elif isinstance(body, m.SurvivorList) and record.direction == SENT:
            signed_sets[header.recipient] = body.survivors
        elif isinstance(body, m.SurvivorSignature):
            msg = survivors_signed_bytes(header.session, signed_sets.get(header.sender, ()))
            verify(header.sender, body.signature, LABEL_SURVIVORS_SIG, msg, "survivor-set signature")
        elif isinstance(body, m.UnmaskRequest):
            for signer, sig in zip(body.signers, body.signatures):
                msg = survivors_signed_bytes(header.session, body.alive)
                verify(signer, sig, LABEL_SURVIVORS_SIG, msg, "signature in an unmask request")
    caveat = "" if independent else (
        "; NOT checked against an independent registry (the transcript's own was written by the server): "
        "supply the auditor's registry (--registry FILE)")
    problems = []
    if mismatched:
        more = f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        problems.append(f"the server's recorded registry disagrees with the auditor's for client(s) "
                        f"{mismatched[:5]}{more}: substituted or unregistered identity keys")
    if failures:
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        why = "" if registry is not None else " (no registry to check them against)"
        problems.append(f"{len(failures)} of {count[0]} signatures fail{why}: {'; '.join(failures[:3])}{more}")
    if problems:
        return Check("signatures", False, "; ".join(problems) + caveat)
    if not count[0]:
        return Check("signatures", True, "no signatures in this transcript (semi-honest variant)" + caveat)
    under = "the auditor's registry" if independent else "the registry the server recorded"
    return Check("signatures", True, f"all {count[0]} distinct signatures verify under {under}" + caveat)


def _request_problems(alive: set[int], dropped: set[int], masked: set[int], shared: set[int], t: int) -> list[str]:
    problems = []
    if alive & dropped:
        problems.append(f"clients {sorted(alive & dropped)} are listed as both surviving and dropped")
    if dropped & masked:
        problems.append(f"the masked inputs of {sorted(dropped & masked)} arrived, yet they were declared dropped")
    if dropped - shared:
        problems.append(f"clients {sorted(dropped - shared)} are declared dropped but never shared keys")
    if alive - masked:
        problems.append(f"the survivor set names {sorted(alive - masked)}, whose masked inputs never arrived")
    if masked - alive - dropped:
        problems.append(f"the masked inputs of {sorted(masked - alive - dropped)} arrived but are in neither list")
    if len(alive) < t:
        problems.append(f"only {len(alive)} survivors, below the threshold t = {t}")
    return problems


def _revealed(views: list[View], threshold: int) -> tuple[Check, dict[str, Any]]:
    name = "revealed-only-survivors-and-aggregate"
    masked = {h.sender for h, _ in _bodies(views, RECEIVED, m.MaskedInput)}
    shared = {h.sender for h, _ in _bodies(views, RECEIVED, m.ShareBundle)}
    requests = {(b.alive, b.dropped) for _, b in _bodies(views, SENT, m.UnmaskRequest)}
    if not requests:
        return Check(name, True, "no unmask request was sent: the server learned no aggregate"), {}
    if len(requests) > 1:
        return Check(name, False, f"the server sent {len(requests)} different survivor/dropped lists to different "
                     "clients: it may unmask an individual input"), {}
    alive_t, dropped_t = next(iter(requests))
    alive, dropped = set(alive_t), set(dropped_t)
    problems = _request_problems(alive, dropped, masked, shared, threshold)
    for header, body in _bodies(views, RECEIVED, m.UnmaskResponse):
        for owner, kind in zip(body.owners, body.kinds):
            allowed = alive if kind == m.ShareKind.SELF_MASK_SEED else dropped
            if owner not in allowed:
                problems.append(f"client {header.sender} released a share of client {owner} the request did not ask for")
    revealed = {"survivors": sorted(alive), "dropped_after_sharing": sorted(dropped), "aggregate_over": len(alive)}
    if problems:
        return Check(name, False, "; ".join(problems[:4])), revealed
    return Check(name, True, f"one survivor set of {len(alive)} clients was sent to all; shares reveal their sum "
                 f"and the {len(dropped)} dropped clients' mask keys only"), revealed


def _mismatches(independent: Mapping[int, bytes], recorded: Mapping[int, bytes] | None) -> list[int]:
    """Clients whose key in the server's recorded registry is absent from or differs in the auditor's."""
    return sorted(c for c, key in (recorded or {}).items() if independent.get(c) != key)


def check_transcript(transcript: Transcript, registry: Mapping[int, bytes] | None = None,
                     alpha: float = 1e-3) -> dict[str, Any]:
    """Run every check on a server transcript.

    Args:
        transcript: a parsed transcript (e.g. from :func:`~secagg.audit.transcript.read_transcript`).
        registry: the auditor's own registry (client id -> Ed25519 public key), obtained
            independently of the server. Without it, signatures are checked only against the
            registry the server recorded, and ``signatures_checked_against_registry`` is false.
        alpha: family-wise significance of the chi-square tests.
    Returns:
        The report: ``ok``, the list of ``checks``, what was ``revealed`` and the ``chi_square`` tests.
    Raises:
        MalformedMessage: the transcript's metadata is malformed.
        ParameterError: ``registry`` is not a mapping of client ids to 32-byte keys.
    """
    session = _session(transcript.meta)
    independent = registry is not None
    if registry is not None:
        registry = _checked_registry(registry)
        mismatched = _mismatches(registry, session.registry)
    else:
        registry, mismatched = session.registry, []
    source = "argument" if independent else "transcript" if session.registry is not None else "none"
    views, errors = _decode(transcript, session.num_clients)
    checks = [Check("decodes", not errors, f"{len(views)} messages decoded" if not errors else "; ".join(errors[:3]))]
    if transcript.role != "server":
        checks.append(Check("server-transcript", False, "this is a client's transcript; record the server's"))
    uniform, tests = _uniformity(views, session.modulus_bits, alpha)
    revealed_check, revealed = _revealed(views, session.threshold)
    checks += [uniform, _share_release(views), _signatures(views, registry, independent, mismatched), revealed_check]
    return {
        "ok": all(c.ok for c in checks),
        "role": transcript.role,
        "messages": len(transcript.records),
        "registry_source": source,
        "signatures_checked_against_registry": independent,
        "registry_mismatches": mismatched,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "revealed": revealed,
        "chi_square": [{"test": t.name, "statistic": round(t.statistic, 3), "df": t.df, "samples": t.samples,
                        "p_value": t.p_value} for t in tests],
    }
