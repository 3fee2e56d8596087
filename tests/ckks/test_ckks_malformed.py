"""Ciphertexts whose TenSEAL metadata disagrees with the schema: typed errors, no state change.

TenSEAL trusts a serialized vector's ``sizes`` list: ``sizes = [1024, 1024]`` over one ciphertext
parses and decrypts to 1024 values. Such an upload used to be taken into the server's accumulator and
then crash the key holder with a numpy ``ValueError`` after it had spent its key. Every blob here is
built by hand from the protobuf layout of an honest one.
"""

from __future__ import annotations

from typing import Any

import struct
from typing import Callable

import numpy as np
import pytest
import tenseal as ts
from ckks_helpers import Session, make_session

from secagg.errors import IntegrityError, MalformedMessage, SecAggError
from secagg.protocols.ckks import Stage, he
from secagg.protocols.ckks import messages as m
from secagg.protocols.ckks.common import limits_for


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _parts(blob: bytes) -> tuple[bytes, float]:
    """(SEAL ciphertext bytes, scale) of an honest TenSEAL CKKSVector serialization."""
    pos, ciphertext, scale = 0, b"", 0.0
    while pos < len(blob):
        key = blob[pos]
        pos += 1
        if key == 0x19:
            (scale,) = struct.unpack_from("<d", blob, pos)
            pos += 8
            continue
        length, shift = 0, 0
        while True:
            byte = blob[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if key == 0x12:
            ciphertext = blob[pos : pos + length]
        pos += length
    return ciphertext, scale


def _vector(sizes: list[int], ciphertexts: list[bytes], scale: float, *, packed: bool = True) -> bytes:
    if packed:
        out = _field(1, b"".join(_varint(s) for s in sizes)) if sizes else b""
    else:
        out = b"".join(b"\x08" + _varint(s) for s in sizes)
    out += b"".join(_field(2, c) for c in ciphertexts)
    return out + b"\x19" + struct.pack("<d", scale)


def _seal_header_size(ciphertext: bytes, size: int) -> bytes:
    return ciphertext[:8] + struct.pack("<Q", size) + ciphertext[16:]


def _variants(blob: bytes, slots: int) -> dict[str, bytes]:
    """Hostile re-encodings of one honest chunk ciphertext."""
    ct, scale = _parts(blob)
    half = slots // 2
    truncated = ct[: len(ct) // 2]
    return {
        "sizes split in two": _vector([half, half], [ct], scale),
        "sizes sum to N/2 unevenly": _vector([slots - 1, 1], [ct], scale),
        "sizes with a trailing zero": _vector([slots, 0], [ct], scale),
        "sizes too short": _vector([half], [ct], scale),
        "sizes too long": _vector([2 * slots], [ct], scale),
        "no sizes": _vector([], [ct], scale),
        "sizes unpacked": _vector([slots], [ct], scale, packed=False),
        "no ciphertext": _vector([slots], [], scale),
        "two ciphertexts": _vector([half, half], [ct, ct], scale),
        "one size, two ciphertexts": _vector([slots], [ct, ct], scale),
        "other scale": _vector([slots], [ct], scale * 2),
        "truncated blob": blob[: len(blob) // 2],
        "truncated ciphertext": _vector([slots], [truncated], scale),
        "truncated ciphertext, header fixed": _vector([slots], [_seal_header_size(truncated, len(truncated))], scale),
        "SEAL header claims more": _vector([slots], [_seal_header_size(ct, len(ct) + 1)], scale),
        "trailing bytes": blob + b"\x00",
        "extra field": blob + _field(4, b"\x01"),
        "empty": b"",
    }


def _with_chunks(s: Session, data: bytes, edit: Callable[[list[bytes]], list[bytes]]) -> bytes:
    """Re-encode an upload or decryption request with its chunk list edited."""
    header, body = s.open(data)
    if isinstance(body, m.Upload):
        return s.seal(header, m.Upload(tuple(edit(list(body.chunks)))))
    assert isinstance(body, m.DecryptRequest)
    return s.seal(header, m.DecryptRequest(body.contributors, tuple(edit(list(body.chunks)))))


def _replace(index: int, blob: bytes) -> Callable[[list[bytes]], list[bytes]]:
    def edit(chunks: list[bytes]) -> list[bytes]:
        chunks[index] = blob
        return chunks

    return edit


def _check_result(s: Session, survivors: tuple[int, ...]) -> None:
    result = s.server.result()
    assert result.survivors == survivors
    assert np.abs(result.average_vector() - s.exact_average(survivors)).max() <= result.error_bound


def test_honest_chunks_have_the_checked_layout() -> None:
    s = make_session(n=3, d=50)
    cfg = s.config
    secret, public = he.generate_context(cfg.preset, cfg.log_scale)
    ctx = he.load_context(public, cfg.preset, cfg.log_scale, secret=False)
    words = np.arange(2 * cfg.slots, dtype=np.int64).reshape(2, cfg.slots) - cfg.slots
    blobs = he.encrypt_chunks(ctx, cfg.grid_bits, words)
    vectors = he.load_ciphertexts(ctx, blobs, cfg.preset, cfg.log_scale)
    vectors[0].add_(vectors[1])
    for blob in [*blobs, *he.serialize_all(vectors)]:  # fresh, and a server-side sum re-serialized
        he.check_layout(blob, cfg.preset, cfg.log_scale)
        ct, scale = _parts(blob)
        assert _vector([cfg.slots], [ct], scale) == blob  # the test's encoder matches TenSEAL's
    with pytest.raises(IntegrityError):
        he.check_layout(blobs[0], cfg.preset, cfg.log_scale + 1)


@pytest.mark.parametrize("variant", list(_variants(b"\x00" * 64, 8)))
def test_server_rejects_inconsistent_upload_first_in_and_round_completes(variant: str) -> None:
    """The hostile upload arrives first (it used to become the accumulator) and is refused."""
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    uploads = {c: s.clients[c].handle(contexts[c]) for c in range(3)}
    _, body = s.open(uploads[2])
    assert isinstance(body, m.Upload)
    bad = _variants(body.chunks[0], s.config.slots)[variant]
    # two ciphertexts in one chunk already exceed the decoder's size limit
    expected = MalformedMessage if len(bad) > limits_for(s.config).max_ciphertext else IntegrityError
    with pytest.raises(expected):
        s.server.receive(_with_chunks(s, uploads[2], _replace(0, bad)))
    assert s.server.stage is Stage.UPLOAD and s.server.contributors == ()
    for c in range(3):
        s.server.receive(uploads[c])
    ((holder, request),) = s.server.advance().items()
    s.server.receive(s.clients[holder].handle(request))
    s.server.advance()
    _check_result(s, (0, 1, 2))


@pytest.mark.parametrize("count", [0, 1, 3])
def test_wrong_chunk_count_is_malformed_at_server(count: int) -> None:
    s = make_session(n=3, d=2100)  # 2101 slots of values and weight: two chunks of 2048
    assert s.config.chunks == 2
    contexts = s.to_upload_stage()
    good = s.clients[0].handle(contexts[0])
    with pytest.raises(MalformedMessage, match="chunk ciphertexts"):
        s.server.receive(_with_chunks(s, good, lambda chunks: (chunks * 2)[:count]))
    assert s.server.contributors == ()
    s.server.receive(good)
    assert s.server.contributors == (0,)


def _decrypt_stage(s: Session) -> tuple[int, bytes]:
    contexts = s.to_upload_stage()
    for c in s.clients:
        s.server.receive(s.clients[c].handle(contexts[c]))
    ((holder, request),) = s.server.advance().items()
    return holder, request


def test_key_holder_keeps_its_key_on_malformed_requests_then_decrypts() -> None:
    """A malicious server (or the network) sends bad sums; the key holder refuses and keeps state."""
    s = make_session(n=3, d=2100)
    holder, request = _decrypt_stage(s)
    client = s.clients[holder]
    _, body = s.open(request)
    assert isinstance(body, m.DecryptRequest)
    variants = _variants(body.chunks[1], s.config.slots).values()
    hostile = [_with_chunks(s, request, _replace(1, bad)) for bad in variants]
    for data in hostile:
        with pytest.raises(MalformedMessage):  # too long for the decoder, or the layout check
            client.handle(data)
        assert client.stage is Stage.DECRYPT and client.holds_key
    for count in (1, 3):
        with pytest.raises(MalformedMessage, match="chunk ciphertexts"):
            client.handle(_with_chunks(s, request, lambda chunks: (chunks * 2)[:count]))
        assert client.stage is Stage.DECRYPT and client.holds_key
    s.server.receive(client.handle(request))
    assert client.stage is Stage.DONE and not client.holds_key
    s.server.advance()
    _check_result(s, (0, 1, 2))


def test_corrupt_payload_behind_a_valid_layout_is_refused_before_the_key_is_spent() -> None:
    """Right layout and SEAL header, garbage compressed data: TenSEAL's parser refuses it."""
    s = make_session(n=3, d=50)
    contexts = s.to_upload_stage()
    uploads = {c: s.clients[c].handle(contexts[c]) for c in range(3)}
    _, body = s.open(uploads[0])
    assert isinstance(body, m.Upload)
    ct, scale = _parts(body.chunks[0])
    corrupt = _vector([s.config.slots], [ct[:16] + bytes(len(ct) - 16)], scale)
    he.check_layout(corrupt, s.config.preset, s.config.log_scale)  # only the parser can tell
    with pytest.raises(IntegrityError):
        s.server.receive(_with_chunks(s, uploads[0], _replace(0, corrupt)))
    for c in range(3):
        s.server.receive(uploads[c])
    ((holder, request),) = s.server.advance().items()
    client = s.clients[holder]
    with pytest.raises(MalformedMessage):
        client.handle(_with_chunks(s, request, _replace(0, corrupt)))
    assert client.stage is Stage.DECRYPT and client.holds_key
    s.server.receive(client.handle(request))
    s.server.advance()
    _check_result(s, (0, 1, 2))


def _one_chunk(value: int) -> tuple[Any, Any, bytes]:
    """A session's config, a fresh secret context and one encrypted chunk of ``value`` everywhere."""
    cfg = make_session(n=2, d=50).config
    secret, _ = he.generate_context(cfg.preset, cfg.log_scale)
    sec = he.load_context(secret, cfg.preset, cfg.log_scale, secret=True)
    return cfg, sec, he.encrypt_chunks(sec, cfg.grid_bits, np.full((1, cfg.slots), value, dtype=np.int64))[0]


def test_random_metadata_mutations_only_raise_integrity_error() -> None:
    """Byte flips and truncations in the metadata region: parsed and decrypted, or IntegrityError."""
    cfg, sec, blob = _one_chunk(1)
    rng = np.random.default_rng(7)  # test data only: which bytes to mutate
    regions = [*range(0, 40), *range(len(blob) - 12, len(blob))]
    for _ in range(300):
        data = bytearray(blob)
        pos = int(rng.choice(regions))
        if rng.random() < 0.2:
            data = data[:pos]
        else:
            data[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            vectors = he.load_ciphertexts(sec, [bytes(data)], cfg.preset, cfg.log_scale)
        except IntegrityError:
            continue
        assert he.decrypt_chunks(vectors, cfg.slots).shape == (1, cfg.slots)


def test_decrypt_chunks_refuses_a_vector_of_the_wrong_length() -> None:
    """Defence in depth behind the layout check: never a numpy ValueError."""
    cfg, sec, blob = _one_chunk(0)
    ct, scale = _parts(blob)
    half = cfg.slots // 2
    vector = ts.ckks_vector_from(sec, _vector([half, half], [ct], scale))  # TenSEAL accepts it
    with pytest.raises(IntegrityError):
        he.decrypt_chunks([vector], cfg.slots)
    assert issubclass(IntegrityError, SecAggError)
