"""Hostile and malformed bytes: the server and clients raise, never crash, and keep their state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ckks_helpers import Session, make_session

from secagg.errors import IntegrityError, MalformedMessage, ProtocolAbort, SecAggError
from secagg.protocols.ckks import Stage
from secagg.protocols.ckks import messages as m
from secagg.wire import HEADER_BYTES, Header


def _replace_chunk(s: Session, upload: bytes, index: int, blob: bytes) -> bytes:
    header, body = s.open(upload)
    assert isinstance(body, m.Upload)
    chunks = list(body.chunks)
    chunks[index] = blob
    return s.seal(header, m.Upload(tuple(chunks)))


def test_every_message_round_trips_canonically() -> None:
    s = make_session(n=3, d=50)
    seen = [s.clients[cid].advertise() for cid in range(3)]
    for data in seen:
        s.server.receive(data)
    outbox = s.server.advance()
    seen += list(outbox.values())
    package = s.clients[0].handle(outbox[0])
    seen.append(package)
    s.server.receive(package)
    contexts = s.server.advance()
    seen += list(contexts.values())
    uploads = [s.clients[c].handle(contexts[c]) for c in range(3)]
    seen += uploads
    for u in uploads:
        s.server.receive(u)
    (holder, request), = s.server.advance().items()
    response = s.clients[holder].handle(request)
    seen += [request, response]
    for data in seen:
        header, body = s.open(data)
        assert s.seal(header, body) == data
        # An authenticated kind fails its tag first; the others fail parsing.
        broken = IntegrityError if header.kind in m.AUTHENTICATED_KINDS else MalformedMessage
        with pytest.raises(broken):
            s.open(data[:-1])
        with pytest.raises(broken):
            s.open(data + b"\x00")
    assert {s.open(d)[0].kind for d in seen} == set(m.Kind)
    assert {s.open(d)[0].kind for d in seen if d[-16:] and s.open(d)[0].kind in m.AUTHENTICATED_KINDS} == set(
        m.AUTHENTICATED_KINDS)


def test_tampered_ciphertext_metadata_rejected_without_state_change() -> None:
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    good = s.clients[1].handle(contexts[1])
    _, body = s.open(good)
    assert isinstance(body, m.Upload)
    for bad_blob in (b"", b"\x00" * 100, body.chunks[0][: len(body.chunks[0]) // 2], bytes(64)):
        with pytest.raises(IntegrityError):
            s.server.receive(_replace_chunk(s, good, 0, bad_blob))
    with pytest.raises(IntegrityError, match="authentication"):  # truncated: its tag no longer verifies
        s.server.receive(good[: HEADER_BYTES + 10])
    flipped = bytearray(good)
    flipped[HEADER_BYTES + 40] ^= 1  # altered in transit by someone without the channel key
    with pytest.raises(IntegrityError, match="authentication"):
        s.server.receive(bytes(flipped))
    s.server.receive(good)  # the honest upload is still accepted afterwards
    assert s.server.contributors == (1,)
    with pytest.raises(ProtocolAbort):
        s.server.receive(good)  # duplicate


def test_ciphertext_of_another_session_scale_rejected() -> None:
    s = make_session(n=3, d=50)
    other = make_session(n=3, d=50, clip_bound=1000.0)
    contexts = s.to_upload_stage()
    foreign_contexts = other.to_upload_stage()
    foreign = other.clients[1].handle(foreign_contexts[1])
    good = s.clients[1].handle(contexts[1])
    _, foreign_body = other.open(foreign)
    with pytest.raises(IntegrityError):
        s.server.receive(_replace_chunk(s, good, 0, foreign_body.chunks[0]))


def test_flipped_coefficient_is_caught_by_the_key_holder() -> None:
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    uploads = {c: s.clients[c].handle(contexts[c]) for c in range(3)}
    _, body = s.open(uploads[2])
    blob = bytearray(body.chunks[0])
    blob[len(blob) // 2] ^= 0x10  # inside the compressed coefficients: still a well-formed ciphertext
    try:
        s.server.receive(_replace_chunk(s, uploads[2], 0, bytes(blob)))
    except IntegrityError:
        pytest.skip("this flip broke the encoding; the server caught it")
    for c in (0, 1):
        s.server.receive(uploads[c])
    (holder, request), = s.server.advance().items()
    with pytest.raises(IntegrityError):
        s.clients[holder].handle(request)
    assert s.clients[holder].stage is Stage.ABORTED and not s.clients[holder].holds_key


def test_malformed_public_context_rejected_by_server() -> None:
    s = make_session(n=3, d=50)
    for cid in sorted(s.clients):
        s.server.receive(s.clients[cid].advertise())
    (generator, key_list), = s.server.advance().items()
    package = s.clients[generator].handle(key_list)
    header, body = s.open(package)
    assert isinstance(body, m.KeyPackage)
    broken = body.public_context[:-100] + bytes(100)
    for public in (b"", broken, body.public_context[: len(body.public_context) // 3]):
        with pytest.raises(IntegrityError):
            s.server.receive(s.seal(header, m.KeyPackage(public, body.recipients, body.sealed)))
    assert s.server.stage is Stage.GENERATE
    s.server.receive(package)
    assert len(s.server.advance()) == 3


def test_context_with_secret_key_or_wrong_preset_rejected() -> None:
    from secagg.protocols.ckks import PRECISION_128, he

    s = make_session(n=3, d=50)
    cfg = s.config
    secret, _public = he.generate_context(cfg.preset, cfg.log_scale)
    with pytest.raises(IntegrityError):
        he.load_context(secret, cfg.preset, cfg.log_scale, secret=False)
    _, other = he.generate_context(PRECISION_128, cfg.log_scale)
    with pytest.raises(IntegrityError):
        he.load_context(other, cfg.preset, cfg.log_scale, secret=False)
    _, public = he.generate_context(cfg.preset, cfg.log_scale - 1)
    with pytest.raises(IntegrityError):
        he.load_context(public, cfg.preset, cfg.log_scale, secret=False)


def test_server_substituting_the_public_context_is_detected() -> None:
    from secagg.protocols.ckks import he

    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    _, own_public = he.generate_context(s.config.preset, s.config.log_scale)
    for cid in (0, 1):
        header, body = s.open(contexts[cid])
        assert isinstance(body, m.ContextBroadcast)
        forged = s.seal(header, dataclasses.replace(body, public_context=own_public))
        with pytest.raises(IntegrityError):
            s.clients[cid].handle(forged)
        assert s.clients[cid].stage is Stage.ABORTED


def test_tampered_sealed_secret_context_rejected() -> None:
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    header, body = s.open(contexts[1])
    assert isinstance(body, m.ContextBroadcast) and body.sealed
    sealed = bytearray(body.sealed)
    sealed[40] ^= 1
    with pytest.raises(IntegrityError):
        s.clients[1].handle(s.seal(header, dataclasses.replace(body, sealed=bytes(sealed))))


def test_wrong_session_round_or_recipient_leaves_client_unchanged() -> None:
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    header, body = s.open(contexts[2])
    variants = [
        Header(header.kind, header.protocol, header.round + 1, header.session, header.sender, header.recipient),
        Header(header.kind, header.protocol, header.round, bytes(32), header.sender, header.recipient),
        Header(header.kind, header.protocol, header.round, header.session, header.sender, 1),
        Header(m.Kind.DECRYPT_REQUEST, header.protocol, header.round, header.session, header.sender, 2),
    ]
    before = s.clients[2].stage
    for variant in variants:
        with pytest.raises(SecAggError):
            s.clients[2].handle(s.seal(variant, body))
        assert s.clients[2].stage is before
    assert s.clients[2].handle(contexts[2])


def test_key_holder_refuses_small_sums_and_decrypts_once() -> None:
    s = make_session(n=3, d=50, min_contributors=2)
    contexts = s.to_upload_stage()
    uploads = {c: s.clients[c].handle(contexts[c]) for c in range(3)}
    s.server.receive(uploads[0])
    s.server.receive(uploads[1])
    (holder, request), = s.server.advance().items()
    header, body = s.open(request)
    assert isinstance(body, m.DecryptRequest)
    lonely = s.seal(header, m.DecryptRequest((0,), body.chunks))
    probe = make_session(n=3, d=50, min_contributors=2)
    probe_contexts = probe.to_upload_stage()
    probe.clients[0].handle(probe_contexts[0])
    with pytest.raises(SecAggError):
        probe.clients[0].handle(lonely)  # another session's holder: wrong session
    response = s.clients[holder].handle(request)
    assert s.clients[holder].stage is Stage.DONE and not s.clients[holder].holds_key
    with pytest.raises(ProtocolAbort):
        s.clients[holder].handle(request)
    s.server.receive(response)
    s.server.advance()
    assert s.server.result().survivors == (0, 1)


def test_key_holder_refuses_a_sum_of_one() -> None:
    s = make_session(n=3, d=50, min_contributors=2)
    contexts = s.to_upload_stage()
    uploads = {c: s.clients[c].handle(contexts[c]) for c in range(3)}
    s.server.receive(uploads[1])
    s.server.receive(uploads[2])
    (holder, request), = s.server.advance().items()
    header, body = s.open(request)
    assert isinstance(body, m.DecryptRequest)
    from secagg.errors import InsufficientParties

    with pytest.raises(InsufficientParties):
        s.clients[holder].handle(s.seal(header, m.DecryptRequest((1,), body.chunks)))
    assert not s.clients[holder].holds_key


def test_random_byte_flips_never_crash_the_server() -> None:
    """Every one of 40 flips (seeded positions) is refused with a SecAggError or accepted; an
    accepted one is stored, so the next flip goes to a fresh session rather than being refused as
    a duplicate upload."""
    rng = np.random.default_rng(1)
    refused = accepted = 0
    s = good = None
    for _ in range(40):
        if s is None:
            s = make_session(n=3, d=50)
            good = s.clients[1].handle(s.to_upload_stage()[1])
        assert good is not None
        data = bytearray(good)
        pos = int(rng.integers(0, min(len(data), HEADER_BYTES + 400)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            s.server.receive(bytes(data))
        except SecAggError:
            refused += 1
            assert s.server.stage is Stage.UPLOAD
            continue
        accepted += 1
        assert s.server.stage is Stage.UPLOAD
        s = None
    assert refused + accepted == 40 and refused > 0
