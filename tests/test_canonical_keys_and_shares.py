"""Canonical X25519 keys, pairwise-mask contexts, and Shamir decoding past bad shares.

Known answers: RFC 7748 section 6.1 (Alice and Bob's X25519 keys and shared secret), copied from
the RFC; every other value is generated in the test from a recorded seed. Hypothesis runs
derandomized, and share polynomials come from a seeded source, so a failure always reproduces.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import event, given, settings
from hypothesis import strategies as st

from secagg import (
    IntegrityError, MalformedMessage, ParameterError, ProtocolAbort, SecAggClient, SecAggConfig, SecAggServer,
    Stage, ThreatModel,
)
from secagg.audit.adversary import Play, kind_name, play
from secagg.hazmat import shamir
from secagg.hazmat.keys import AgreementKeyPair, derive_key, is_canonical_public_key
from secagg.protocols.secagg import messages as m
from secagg.protocols.secagg.common import pairwise_context, protocol_id
from secagg.wire import SERVER_ID, Header

from .helpers import CorruptClient, encoded_inputs, ring_sum, small_config

P25519 = 2**255 - 19
# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def _mirror(key: bytes) -> bytes:
    """The same u-coordinate with bit 255 set: RFC 7748 decoders ignore that bit."""
    return key[:-1] + bytes([key[-1] | 0x80])


def _u(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _raw_x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


# -- canonical public keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("bob", [BOB_PUBLIC, AgreementKeyPair.generate().public_bytes], ids=["rfc7748", "fresh"])
def test_bit_255_names_the_same_point_but_is_refused(bob: bytes) -> None:
    assert is_canonical_public_key(bob) and bob[-1] < 0x80
    mirrored = _mirror(bob)
    assert mirrored != bob
    # Why canonical encoding matters: the raw X25519 secret is identical for both encodings.
    assert _raw_x25519(ALICE_PRIVATE, mirrored) == _raw_x25519(ALICE_PRIVATE, bob)
    if bob == BOB_PUBLIC:
        assert _raw_x25519(ALICE_PRIVATE, mirrored) == SHARED
    assert not is_canonical_public_key(mirrored)
    alice = AgreementKeyPair.from_private_bytes(ALICE_PRIVATE)
    assert alice.public_bytes == ALICE_PUBLIC
    expected = derive_key(_raw_x25519(ALICE_PRIVATE, bob), b"pairwise-mask", b"ctx")
    assert alice.agree(bob, b"pairwise-mask", b"ctx") == expected
    with pytest.raises(IntegrityError, match="not canonically encoded"):
        alice.agree(mirrored, b"pairwise-mask", b"ctx")


@pytest.mark.parametrize(
    ("u", "canonical"),
    [
        (P25519, False),  # u = p: reduces to 0
        (2**255 - 1, False),  # bit 255 clear, but >= p (reduces to 18)
        (2**255 + 9, False),  # bit 255 set over the base point
        (P25519 - 1, True),  # the largest canonical u
        (9, True),  # the base point
    ],
)
def test_canonical_range_is_exactly_below_p(u: int, canonical: bool) -> None:
    key = _u(u)
    assert is_canonical_public_key(key) is canonical
    assert not is_canonical_public_key(key[:31]) and not is_canonical_public_key(key + b"\x00")
    alice = AgreementKeyPair.from_private_bytes(ALICE_PRIVATE)
    if not canonical:
        with pytest.raises(IntegrityError, match="not canonically encoded"):
            alice.agree(key, b"pairwise-mask", b"")
    elif u == P25519 - 1:  # canonical, but of small order: the all-zero secret is refused too
        with pytest.raises(IntegrityError, match=r"^invalid peer key$"):
            alice.agree(key, b"pairwise-mask", b"")
    else:
        assert len(alice.agree(key, b"pairwise-mask", b"")) == 32


def _advert_bytes(encryption: bytes, mask: bytes, setup: bytes = bytes(32), config: SecAggConfig | None = None) -> bytes:
    config = config or small_config(4, 2, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    header = Header(m.Kind.ADVERTISE, protocol_id(config), 0, setup, 1, SERVER_ID)
    return m.encode(header, m.Advertise(encryption, mask))


@pytest.mark.parametrize("u", [P25519, 2**255 - 1, None], ids=["p", "2^255-1", "mirrored"])
@pytest.mark.parametrize("field", ["encryption", "mask"])
def test_advertise_with_a_non_canonical_key_fails_to_decode(u: int | None, field: str) -> None:
    good = AgreementKeyPair.generate().public_bytes
    other = AgreementKeyPair.generate().public_bytes
    bad = _mirror(good) if u is None else _u(u)
    keys = (bad, other) if field == "encryption" else (other, bad)
    assert m.decode(_advert_bytes(good, other), max_parties=4)[1] == m.Advertise(good, other)
    with pytest.raises(MalformedMessage, match="not canonically encoded"):
        m.decode(_advert_bytes(*keys), max_parties=4)
    largest = m.decode(_advert_bytes(_u(P25519 - 1), other), max_parties=4)[1]
    assert isinstance(largest, m.Advertise) and largest.encryption_key == _u(P25519 - 1)


def test_server_and_client_refuse_mirrored_keys_on_the_wire_and_stay_usable() -> None:
    config = small_config(4, 2, threshold=2, threat=ThreatModel.semi_honest(0.0, 0.0))
    server = SecAggServer(config, context=b"ctx")
    clients = {i: SecAggClient(config, i, context=b"ctx") for i in range(4)}
    adverts = {i: c.advertise() for i, c in clients.items()}
    header, body = m.decode(adverts[1], max_parties=4)
    assert isinstance(body, m.Advertise)
    forged = m.encode(header, m.Advertise(body.encryption_key, _mirror(body.mask_key)))
    with pytest.raises(MalformedMessage, match="not canonically encoded"):
        server.receive(forged)
    for advert in adverts.values():  # the refusal left no state behind: client 1 is not a duplicate
        server.receive(advert)
    outbox = server.advance()
    header, key_list = m.decode(outbox[0], max_parties=4)
    assert isinstance(key_list, m.KeyList)
    entries = list(key_list.entries)
    entries[2] = dataclasses.replace(entries[2], mask_key=_mirror(entries[2].mask_key))
    for bad in (m.KeyList(key_list.server_key, tuple(entries)), m.KeyList(_mirror(key_list.server_key), key_list.entries)):
        with pytest.raises(MalformedMessage, match="not canonically encoded"):
            clients[0].handle(m.encode(header, bad))
        assert clients[0].stage is Stage.SHARE
    reply = clients[0].handle(outbox[0])
    assert kind_name(reply) == "shares" and clients[0].stage is Stage.MASK


# -- pairwise mask contexts ---------------------------------------------------------------------------

_KEYS = st.binary(min_size=32, max_size=32)
_IDS = st.integers(0, 2**32 - 1)


@settings(max_examples=100, derandomize=True)
@given(session=st.binary(min_size=32, max_size=32), u=_IDS, v=_IDS, ku=_KEYS, kv=_KEYS,
       which=st.sampled_from(["u", "v", "ku", "kv", "session"]), data=st.data())
def test_pairwise_context_is_symmetric_and_binds_both_ids_and_keys(
    session: bytes, u: int, v: int, ku: bytes, kv: bytes, which: str, data: st.DataObject
) -> None:
    if u == v:
        v = (u + 1) % 2**32
    ctx = pairwise_context(session, u, ku, v, kv)
    assert ctx == pairwise_context(session, v, kv, u, ku)
    assert len(ctx) == 32 + 8 + 64 and ctx.startswith(session)
    args: dict[str, Any] = {"session": session, "u": u, "ku": ku, "v": v, "kv": kv}
    old = args[which]
    new = data.draw(_IDS if which in ("u", "v") else _KEYS, label=f"new {which}")
    if new == old:  # flip the lowest bit rather than filter (hypothesis favours repeats)
        new = old ^ 1 if isinstance(old, int) else bytes([old[0] ^ 1]) + old[1:]
    args[which] = new
    changed = pairwise_context(args["session"], args["u"], args["ku"], args["v"], args["kv"])
    assert changed != ctx, which
    assert changed == pairwise_context(args["session"], args["v"], args["kv"], args["u"], args["ku"])


def test_pairwise_context_separates_a_mirrored_key_and_a_swapped_pair() -> None:
    a, b = AgreementKeyPair.generate().public_bytes, AgreementKeyPair.generate().public_bytes
    s = hashlib.sha256(b"session").digest()
    assert pairwise_context(s, 1, a, 2, b) != pairwise_context(s, 1, a, 2, _mirror(b))
    assert pairwise_context(s, 1, a, 2, b) != pairwise_context(s, 1, b, 2, a)
    assert pairwise_context(s, 1, a, 2, b) != pairwise_context(s, 3, a, 2, b)


# -- Berlekamp-Welch: consistent_holders --------------------------------------------------------------


class _Seeded:
    """Deterministic RandomSource for share polynomials (test-only)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, count: int) -> bytes:
        return self._rng.bytes(count)


def _corrupt(shares: np.ndarray, rows: list[int], everywhere: bool, seed: int) -> np.ndarray:
    """Add a uniform nonzero field error to every chunk of ``rows``, or to a random non-empty subset."""
    rng = np.random.default_rng(seed)
    out = shares.copy()
    for row in rows:
        mask = np.ones(out.shape[1:], dtype=bool) if everywhere else rng.random(out.shape[1:]) < 0.3
        mask.flat[rng.integers(mask.size)] = True
        errors = rng.integers(1, shamir.PRIME, size=out.shape[1:])
        out[row] = np.where(mask, (out[row] + errors) % shamir.PRIME, out[row])
    assert ((out >= 0) & (out < shamir.PRIME)).all()
    return out


def _case(data: st.DataObject, t: int, m: int, secrets: int) -> tuple[list[int], list[bytes], np.ndarray, int]:
    xs = data.draw(st.lists(st.integers(1, shamir.MAX_X), min_size=m, max_size=m, unique=True), label="xs")
    values = [data.draw(st.binary(min_size=32, max_size=32), label="secret") for _ in range(secrets)]
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    return xs, values, shamir.split(values, t, xs, _Seeded(seed)), seed


@settings(max_examples=150, derandomize=True)
@given(t=st.integers(2, 8), extra=st.integers(0, 10), secrets=st.integers(1, 2),
       everywhere=st.booleans(), data=st.data())
def test_consistent_holders_finds_every_bad_share_within_the_radius(
    t: int, extra: int, secrets: int, everywhere: bool, data: st.DataObject
) -> None:
    """b <= (m - t)//2 corrupted holders: exactly the others come back; the first and last t of
    them reconstruct every secret."""
    m = t + extra
    xs, values, shares, seed = _case(data, t, m, secrets)
    b = data.draw(st.integers(0, (m - t) // 2), label="b")
    bad = sorted(data.draw(st.permutations(range(m)), label="order")[:b])
    corrupted = _corrupt(shares, bad, everywhere, seed + 1)
    honest = [i for i in range(m) if i not in bad]
    assert shamir.consistent_holders(xs, corrupted, t) == honest
    for chosen in (honest[:t], honest[-t:]):
        assert shamir.reconstruct([xs[i] for i in chosen], corrupted[chosen]) == values


@settings(max_examples=150, derandomize=True)
@given(t=st.integers(2, 8), extra=st.integers(2, 10), everywhere=st.booleans(), data=st.data())
def test_consistent_holders_never_vouches_for_a_bad_share_past_the_radius(
    t: int, extra: int, everywhere: bool, data: st.DataObject
) -> None:
    """b = (m - t)//2 + 1 (radius >= 1; still m - b >= t honest holders).

    What we assert: the result is either [] or exactly the honest holders, never a set holding a
    corrupted one (so nothing wrong reconstructs silently); exactly the honest holders can only come
    back when no single chunk carries more than the radius in errors, and then they reconstruct the
    secret. With every chunk of every bad row corrupted, the result is [].
    """
    m = t + extra
    xs, values, shares, seed = _case(data, t, m, 1)
    bad = sorted(data.draw(st.permutations(range(m)), label="order")[: (m - t) // 2 + 1])
    corrupted = _corrupt(shares, bad, everywhere, seed + 1)
    honest = [i for i in range(m) if i not in bad]
    got = shamir.consistent_holders(xs, corrupted, t)
    assert got in ([], honest), (got, bad)
    errors_per_chunk = (corrupted != shares).sum(axis=0).max()
    event(f"some chunk past the radius: {errors_per_chunk > (m - t) // 2}")
    if errors_per_chunk > (m - t) // 2:
        assert got == [], "a chunk beyond the radius cannot be decoded"
    else:
        assert got == honest
        assert shamir.reconstruct([xs[i] for i in got[:t]], corrupted[got[:t]]) == values
    if everywhere:
        assert got == []


def test_consistent_holders_at_radius_zero_decodes_nothing_and_reconstruction_notices() -> None:
    """m - t < 2: no error can be located, so every row comes back (documented); the caller's
    reconstruction from a set with a bad row does not give the secret (the server then checks a
    commitment)."""
    xs = [1, 2, 3]
    secret = [bytes(range(32))]
    shares = shamir.split(secret, 3, xs, _Seeded(7))
    bad = _corrupt(shares, [1], True, 8)
    assert shamir.consistent_holders(xs, bad, 3) == [0, 1, 2]
    try:
        wrong = shamir.reconstruct(xs, bad)
    except IntegrityError as exc:
        assert str(exc) == "secret reconstruction failed"
    else:
        assert wrong != secret


def test_consistent_holders_does_not_vouch_for_out_of_field_share_words() -> None:
    """LIBRARY BUG (left failing on purpose): a share word w + p (p = 2^31 - 1) fits in the u32 wire
    word but is not a field element. consistent_holders reduces mod p, so it calls that row
    consistent; reconstruct then refuses it ("share out of field range"). A caller following
    consistent_holders (the server's _retry) gives up although only one of nine shares is bad.
    Expected: the row is left out, or the input is refused with IntegrityError / ParameterError.
    """
    xs, t = list(range(1, 10)), 3
    shares = shamir.split([bytes(range(32))], t, xs, _Seeded(3))
    bad = shares.copy()
    bad[0] = bad[0] + shamir.PRIME
    assert (bad[0] < 2**32).all()
    try:
        got = shamir.consistent_holders(xs, bad, t)
    except (IntegrityError, ParameterError):
        return
    assert 0 not in got, f"row 0 holds words >= p but was returned as consistent: {got}"
    assert shamir.reconstruct([xs[i] for i in got[:t]], bad[got[:t]]) == [bytes(range(32))]


# -- a full round with bad unmask shares ---------------------------------------------------------------


def _field_errors(seed: int) -> Callable[[bytes], bytes]:
    rng = np.random.default_rng(seed)

    def corrupt(share: bytes) -> bytes:
        words = np.frombuffer(share, dtype="<u4").astype(np.int64)
        return ((words + rng.integers(1, shamir.PRIME, size=words.shape)) % shamir.PRIME).astype("<u4").tobytes()

    return corrupt


def _out_of_field(share: bytes) -> bytes:
    """The same field values, each word re-encoded as w + p (still a u32)."""
    return (np.frombuffer(share, dtype="<u4").astype(np.int64) + shamir.PRIME).astype("<u4").tobytes()


def _round_config() -> SecAggConfig:
    config = small_config(9, 4, "secagg", ThreatModel.semi_honest(0.3, 0.2))
    assert (config.threshold, config.degree, config.corrupt_bound) == (3, None, 2)  # t = c + 1
    return config


def _bad_share_round(
    bad: set[int], corrupt: Callable[[bytes], bytes], drop_at_mask: frozenset[int] | set[int] = frozenset()
) -> tuple[SecAggConfig, SecAggServer, dict[int, np.ndarray], Play]:
    config = _round_config()
    server = SecAggServer(config, context=b"ctx")
    clients = {
        i: CorruptClient(config, i, context=b"ctx", corrupt=corrupt) if i in bad else SecAggClient(config, i, context=b"ctx")
        for i in range(config.num_clients)
    }
    encoded = encoded_inputs(config, clients, seed=len(bad))

    def intercept(cid: int, data: bytes) -> list[tuple[bytes, bool]]:
        return [] if cid in drop_at_mask and kind_name(data) == "delivery" else [(data, False)]

    return config, server, encoded, play(server, clients, intercept=intercept)


@pytest.mark.parametrize(
    ("bad", "dropped"),
    [({0}, set()), ({0, 1}, set()), ({0, 1, 2}, set()), ({0, 1}, {8}), ({4, 7}, {0})],
    ids=["1-bad-radius-3", "2-bad-radius-3", "3-bad-radius-3", "2-bad-radius-2-with-dropout", "2-bad-late-ids"],
)
def test_round_within_the_decoding_radius_is_exact(bad: set[int], dropped: set[int]) -> None:
    """n = 9, t = 3: each secret has 9 - |dropped| holders, radius (holders - t)//2."""
    config, server, encoded, log = _bad_share_round(bad, _field_errors(1), dropped)
    assert len(bad) <= (config.num_clients - len(dropped) - config.threshold) // 2
    assert log.server_error == "" and log.rejected == [] and log.refusals == {}
    assert log.result is not None and server.stage is Stage.DONE
    survivors = [i for i in range(config.num_clients) if i not in dropped]
    assert list(log.result.survivors) == survivors
    assert sorted(c for c, s in log.result.dropped.items() if s == "mask") == sorted(dropped)
    assert np.array_equal(log.result.ring_sum, ring_sum(config, encoded, survivors))


@pytest.mark.parametrize(("bad", "dropped"), [({0, 1, 2, 3}, set()), ({0, 1, 2}, {8})],
                         ids=["4-bad-radius-3", "3-bad-radius-2-with-dropout"])
def test_round_past_the_decoding_radius_releases_nothing(bad: set[int], dropped: set[int]) -> None:
    config, server, _, log = _bad_share_round(bad, _field_errors(2), dropped)
    assert len(bad) > (config.num_clients - len(dropped) - config.threshold) // 2
    assert log.server_error.startswith("IntegrityError: no consistent set of 3 shares reconstructs client"), log.server_error
    assert log.result is None and server.stage is not Stage.DONE
    with pytest.raises(ProtocolAbort, match="no aggregate"):
        server.result()


def test_round_survives_one_client_sending_out_of_field_share_words() -> None:
    """LIBRARY BUG (left failing on purpose): one corrupt client of nine (radius 3) re-encodes each
    share word w as w + p. The server's unmask check only checks share sizes, Berlekamp-Welch
    (mod p) calls the row consistent, reconstruct refuses it as out of field range, and _retry
    raises IntegrityError: one client aborts the round. Expected: the bad response is refused or
    left out and the sum is exact (the server may reject that response on receipt instead).
    """
    config, server, encoded, log = _bad_share_round({0}, _out_of_field)
    assert log.server_error == "", f"one out-of-field share aborted the round: {log.server_error}"
    assert log.result is not None
    survivors = list(range(config.num_clients))
    assert list(log.result.survivors) == survivors
    assert np.array_equal(log.result.ring_sum, ring_sum(config, encoded, survivors))
