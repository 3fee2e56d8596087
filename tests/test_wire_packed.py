"""Bit-packed ring vectors: round trips at every width, canonical rejection, and what a round sends."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import FixedPoint, MalformedMessage, ParameterError, ThreatModel
from secagg.encoding import word_dtype
from secagg.simulation import simulate
from secagg.wire import HEADER_BYTES, TAG_BYTES, Reader, Writer

PREFIX = 9  # width u8 + count u64


def _reference(words: list[int], bits: int) -> bytes:
    stream = sum(w << (i * bits) for i, w in enumerate(words))
    return stream.to_bytes(-(-len(words) * bits // 8), "little")


@st.composite
def vectors(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.integers(1, 64))
    count = draw(st.integers(0, 300))
    word = st.one_of(st.integers(0, (1 << bits) - 1), st.sampled_from([0, (1 << bits) - 1]))
    return bits, draw(st.lists(word, min_size=count, max_size=count))


@settings(max_examples=400, deadline=None)
@given(vectors())
def test_packed_round_trips_at_every_width(case: tuple[int, list[int]]) -> None:
    bits, words = case
    array = np.asarray(words, dtype=word_dtype(bits))
    body = Writer().packed(array, bits).body()
    assert len(body) == PREFIX + math.ceil(len(words) * bits / 8)
    assert body[PREFIX:] == _reference(words, bits)
    for dtype in {word_dtype(bits), np.dtype("<u8")}:
        reader = Reader(memoryview(body))
        assert reader.packed(len(words), bits, dtype).tolist() == words
        reader.done()
    assert Writer().packed(array.astype(np.uint64), bits).body() == body  # the word type is not sent


@pytest.mark.parametrize("bits", range(1, 65))
def test_every_width_round_trips_across_many_chunks(bits: int) -> None:
    count = (1 << 15) + 2 * 64 + 13  # two chunks, full groups and a partial last group
    rng = np.random.default_rng(bits)
    words = rng.integers(0, 1 << 63, count, dtype=np.uint64, endpoint=True)
    words &= np.uint64((1 << bits) - 1)
    words = words.astype(word_dtype(bits))
    body = bytes(3) + Writer().packed(words, bits).body()  # at an unaligned offset, as inside a message
    out = np.full(count, 7, dtype=word_dtype(bits))
    reader = Reader(memoryview(body)[3:])
    back = reader.packed(count, bits, word_dtype(bits), out=out)
    reader.done()
    assert back is out or bits in (8, 16, 32, 64)  # whole machine words come back zero-copy
    assert np.array_equal(back, words)


@pytest.mark.parametrize("bits", [b for b in range(1, 64) if b % 8])
def test_non_zero_padding_is_rejected(bits: int) -> None:
    count = next(n for n in range(1, 9) if n * bits % 8)
    body = bytearray(Writer().packed(np.zeros(count, dtype=word_dtype(bits)), bits).body())
    for bit in range(count * bits % 8, 8):
        bad = bytearray(body)
        bad[-1] |= 1 << bit
        with pytest.raises(MalformedMessage, match="padding"):
            Reader(memoryview(bytes(bad))).packed(count, bits, word_dtype(bits))
    last_data_bit = count * bits % 8 - 1
    ok = bytearray(body)
    ok[-1] |= 1 << last_data_bit  # a data bit, not padding: accepted, and the word is below 2^bits
    words = Reader(memoryview(bytes(ok))).packed(count, bits, word_dtype(bits))
    assert int(words[-1]) == 1 << (bits - 1)


@pytest.mark.parametrize("bits", [1, 12, 20, 37, 64])
def test_wrong_lengths_widths_and_counts_are_rejected(bits: int) -> None:
    count = 100
    body = Writer().packed(np.ones(count, dtype=word_dtype(bits)), bits).body()
    dtype = word_dtype(bits)
    with pytest.raises(MalformedMessage):
        Reader(memoryview(body[:-1])).packed(count, bits, dtype)  # truncated
    reader = Reader(memoryview(body + b"\x00"))
    reader.packed(count, bits, dtype)
    with pytest.raises(MalformedMessage):
        reader.done()  # trailing byte
    with pytest.raises(MalformedMessage):
        Reader(memoryview(body)).packed(count + 1, bits, dtype)  # another count
    with pytest.raises(MalformedMessage):
        Reader(memoryview(body)).packed(count, bits - 1 if bits > 1 else 2, np.uint64)  # another width
    huge = bytes([bits]) + (2**64 - 1).to_bytes(8, "little")  # a count claim far beyond the bytes
    with pytest.raises(MalformedMessage):
        Reader(memoryview(huge)).packed(2**64 - 1, bits, dtype)


def test_writer_refuses_words_outside_the_ring_and_bad_widths() -> None:
    with pytest.raises(ParameterError):
        Writer().packed(np.array([0, 1 << 20], dtype=np.uint32), 20)
    with pytest.raises(ParameterError):
        Writer().packed(np.array([1 << 40], dtype=np.uint64), 37)
    with pytest.raises(ParameterError):
        Writer().packed(np.array([256], dtype=np.uint16), 8)
    for bits in (0, 65, True):
        with pytest.raises(ParameterError):
            Writer().packed(np.zeros(3, dtype=np.uint64), bits)
    with pytest.raises(ParameterError):
        Writer().packed(np.zeros(3, dtype=np.int32), 20)
    with pytest.raises(ParameterError):
        Reader(memoryview(bytes(20))).packed(3, 20, np.uint16)  # 20-bit words do not fit 16 bits


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
@pytest.mark.parametrize("fractional_bits", [4, 16])
def test_simulated_round_sends_ring_bits_per_parameter(protocol: str, fractional_bits: int) -> None:
    clients = 8
    encoding = FixedPoint(clip_bound=2.0, fractional_bits=fractional_bits, max_clients=clients)
    bits = encoding.modulus_bits
    threat = ThreatModel.semi_honest(0.1, 0.1)
    reports = {dim: simulate(protocol, clients, dim, 0.0, 1, threat=threat, encoding=encoding) for dim in (3001, 20000)}
    rest = []
    for dim, report in reports.items():
        assert report["ring_bits"] == bits and report["word_bytes"] == encoding.dtype.itemsize
        vector = math.ceil(dim * bits / 8)
        rest.append(report["bytes_per_client_upload"] - vector)  # headers, tags and the small messages
        assert report["bytes_per_parameter"] == pytest.approx(vector / dim, abs=3000 / dim)
    # the rest does not grow with the dimension (a byte or two of it varies from run to run)
    assert HEADER_BYTES + PREFIX + TAG_BYTES <= min(rest) and max(rest) < 3000 and max(rest) - min(rest) <= 8
    assert reports[20000]["bytes_per_parameter"] < bits / 8 + 0.15
