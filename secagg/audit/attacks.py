"""The attack catalogue: what each deviation tries, and what each variant promises about it.

Every reason below is a claim SECURITY.md makes; the harness checks it, including what leaked.
"""

from __future__ import annotations

from .attacks_isolation import (
    advertise_dropout_amplification, bad_share_abort, graph_grinding, mirrored_key, restricted_delivery,
)
from .attacks_keys import different_models, key_substitution, split_sessions, sybils_with_registry, sybils_without_registry
from .attacks_unmask import both_alive_and_dropped, false_dropout_claim, inconsistent_survivor_sets
from .attacks_wire import replay_earlier_round, replay_other_session, tampered_bytes
from .outcomes import BY_DESIGN, DETECTED, REFUSED, Attack, Expectation

__all__ = ["ATTACKS", "attack_names"]

_OVERLAP = Expectation(
    REFUSED, "every variant: a client refuses an unmask request whose survivor and dropped lists overlap, "
    "so it never releases both kinds of share for one client (Flower's SecAgg+ does not check this)")
_FALSE_DROP = Expectation(
    REFUSED, "the victim refuses to be called dropped after sending its input; the others release only its "
    "mask-key shares and refuse a second request, so its input stays hidden behind its self mask "
    "(double masking, Bonawitz et al.)")
_REPLAY = Expectation(
    REFUSED, "every message header carries the round and session, after the key list every message is "
    "tagged under a per-session channel key, share ciphertexts are bound to the session, and "
    "(malicious) signatures cover the session: a replayed message is refused on arrival")

ATTACKS: tuple[Attack, ...] = (
    Attack(
        "both-survivor-and-dropped",
        "the unmask request lists one client as both surviving and dropped",
        both_alive_and_dropped, _OVERLAP, _OVERLAP,
    ),
    Attack(
        "inconsistent-survivor-sets",
        "half of the victim's neighbours hear it survived, the other half that it dropped",
        inconsistent_survivor_sets,
        Expectation(
            BY_DESIGN, "the semi-honest variant assumes the server sends every client the same lists; each "
            "request is self-consistent, so t neighbours release the victim's seed shares and t its mask-key "
            "shares, and the server unmasks its input (verified). Bonawitz et al. need the consistency round "
            "(malicious variant) against this", leaks=True),
        Expectation(
            REFUSED, "clients sign the survivor set and unmask only with a quorum (> (n + corrupt)/2 and >= t) "
            "of signatures on the set they signed; two different sets cannot both gather a quorum"),
    ),
    Attack(
        "false-dropout-claim",
        "the server received the victim's masked input but declares it dropped, then asks again",
        false_dropout_claim, _FALSE_DROP, _FALSE_DROP,
    ),
    Attack(
        "key-substitution-mitm",
        "the server replaces every other client's public keys in the victim's key list by its own",
        key_substitution,
        Expectation(
            BY_DESIGN, "the semi-honest variant has no PKI: it assumes the server relays keys faithfully. A "
            "server that substitutes them plays all the victim's peers and reads its input (verified); use "
            "the malicious variant, whose keys are signed under a registry, against this", leaks=True),
        Expectation(REFUSED, "advertised keys are signed with identity keys from the caller's registry (PKI); "
                    "a substituted key has no valid signature and the key list is refused"),
    ),
    Attack(
        "replay-earlier-round",
        "messages the server sent in round 0 are replayed into round 1 (raw, and re-tagged)",
        replay_earlier_round, _REPLAY, _REPLAY,
    ),
    Attack(
        "replay-earlier-session",
        "messages from an earlier attempt of the same round and context are replayed (raw, and re-tagged)",
        replay_other_session, _REPLAY, _REPLAY,
    ),
    Attack(
        "different-models",
        "even clients get global model A, odd clients model B (different caller contexts), in one round",
        different_models,
        Expectation(DETECTED, "the context is bound into the session id, so the two groups derive different "
                    "sessions; a share ciphertext from the other group fails authentication at its recipient "
                    "and the round aborts"),
        Expectation(REFUSED, "key advertisements are signed over the setup id, which binds the context: a "
                    "client refuses a key list holding keys signed for another model"),
    ),
    Attack(
        "split-sessions",
        "two separate sessions (half the clients each, models A and B), each told it is the whole round",
        split_sessions,
        Expectation(
            BY_DESIGN, "the semi-honest variant assumes one session per round; a deviating server can run two "
            "sessions of at least t + 1 clients and learn two partial sums, but no individual input "
            "(verified)"),
        Expectation(REFUSED, "a client refuses a key list with fewer than a quorum (> (n + corrupt)/2) of the "
                    "n clients, and two disjoint quorums cannot exist"),
    ),
    Attack(
        "tampered-bytes",
        "flipped header, body and tag bytes, truncation and extension of every message type, and a "
        "re-tagged bit flip inside a relayed share ciphertext",
        tampered_bytes,
        Expectation(DETECTED, "tagged messages, share ciphertexts and the canonical decoder refuse tampering "
                    "on arrival; a flipped key in the (untagged) key list or advertisement is accepted but "
                    "changes the session, so the next tagged message or the client's own key check fails"),
        Expectation(DETECTED, "as semi-honest, except that signatures refuse altered client keys on arrival; "
                    "the server's own channel key is not signed (there is no server identity), so a flip "
                    "there is caught at the next tagged message"),
    ),
    Attack(
        "sybils-without-registry",
        "only the victim shows up; the server fills every other seat with fake clients it controls",
        sybils_without_registry,
        Expectation(
            BY_DESIGN, "without an identity registry nothing distinguishes a Sybil from a client; the "
            "aggregate minus the Sybils' inputs is the victim's input (verified). SECURITY.md lists this "
            "limitation: use the malicious variant with a registry", leaks=True),
        Expectation(REFUSED, "the malicious variant requires a registry; a key-list entry for a client outside "
                    "it is refused"),
    ),
    Attack(
        "sybils-with-registry",
        "every seat is enrolled in the victim's registry; fake clients claim the absent ones",
        sybils_with_registry,
        Expectation(REFUSED, "a semi-honest client given a registry checks every advertisement's signature; "
                    "the Sybils cannot sign for enrolled identities"),
        Expectation(REFUSED, "advertisements must be signed by the enrolled identity key; Sybils cannot"),
    ),
)


_ISOLATION_SEMI_HONEST = Expectation(
    BY_DESIGN, "the semi-honest variant assumes the server delivers every share and reports dropouts "
    "truthfully; a server that shows the victim only corrupt (or later 'dropped') peers unmasks its input "
    "(verified). Use the malicious variant against a deviating server", leaks=True)
_ISOLATION_MALICIOUS = Expectation(
    REFUSED, "SECURITY.md, lemma 'isolation': to unmask the victim the server must keep t of its holders "
    "in the signed survivor set and q clients overall, so with 2t >= h + c_nb + 2 (or t + q >= n + c + 2) "
    "at least one honest survivor shares an unrecoverable mask with it; honest clients refuse to sign a "
    "set that leaves any survivor fewer than t holders, or fewer than q members")

ATTACKS = ATTACKS + (
    Attack(
        "restricted-delivery",
        "the victim is shown only t - 1 share holders (its corrupt neighbours and some honest ones); the "
        "honest ones are then left out of the survivor set and called dropped",
        restricted_delivery, _ISOLATION_SEMI_HONEST, _ISOLATION_MALICIOUS,
    ),
    Attack(
        "graph-grinding",
        "the server re-draws the SecAgg+ graph (a fresh channel key each time) until a victim has the most "
        "corrupt neighbours, then restricted delivery",
        graph_grinding, _ISOLATION_SEMI_HONEST,
        Expectation(REFUSED, "the graph is derived from the setup id (config, round, context) over the "
                    "registered population, before any key is seen: re-drawing the server's keys changes "
                    "nothing, and trying 2^g contexts offline is charged to sigma (GRINDING_BITS = 40); the "
                    "restricted delivery that follows is refused as above"),
    ),
    Attack(
        "advertise-dropout-amplification",
        "all but a quorum of honest advertisers are left out of the key list, so corrupt clients are dense in "
        "a graph over fewer clients, then restricted delivery",
        advertise_dropout_amplification, _ISOLATION_SEMI_HONEST,
        Expectation(REFUSED, "the graph is built over the whole registered population, so leaving honest "
                    "advertisers out does not move any corrupt client closer to the victim; the restricted "
                    "delivery that follows is refused as above"),
    ),
    Attack(
        "mirrored-key",
        "a corrupt client re-advertises an honest client's mask key with bit 255 set, signed with its own "
        "identity, so the victim's two pairwise masks would be equal and cancel",
        mirrored_key,
        Expectation(REFUSED, "every X25519 key must be canonically encoded (u < 2^255 - 19): the server's and "
                    "the clients' decoders refuse the mirrored key, and pairwise masks bind both ids and keys"),
        Expectation(REFUSED, "every X25519 key must be canonically encoded (u < 2^255 - 19): the server's and "
                    "the clients' decoders refuse the mirrored key, and pairwise masks bind both ids and keys"),
    ),
    Attack(
        "bad-share-abort",
        "a corrupt client (the lowest id, so in every subset the old retry tried) returns garbage in every "
        "share it releases, to make the round abort",
        bad_share_abort,
        Expectation(DETECTED, "the server decodes each secret's shares with Berlekamp-Welch and leaves out "
                    "wrong ones while honest shares outnumber them by t; the aggregate stays exact"),
        Expectation(DETECTED, "the server decodes each secret's shares with Berlekamp-Welch and leaves out "
                    "wrong ones while honest shares outnumber them by t; the aggregate stays exact"),
    ),
)


def attack_names() -> tuple[str, ...]:
    return tuple(a.name for a in ATTACKS)
