"""Scale: the streaming simulator (exactness against the held one, memory) and every batched
function against its unbatched reference."""

from __future__ import annotations

import dataclasses
import os
import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import ThreatModel
from secagg.errors import IntegrityError, MalformedMessage
from secagg.hazmat import shamir
from secagg.hazmat.keys import canonical_public_keys, is_canonical_public_key
from secagg.protocols.base import Outbox
from secagg.protocols.secagg import SecAggServer
from secagg.protocols.secagg.server import AggregateResult
from secagg.protocols.secagg import messages as m
from secagg.protocols.secagg.client import _repeats_a_key
from secagg.protocols.secagg.common import _near, neighbours, neighbours_of, ring_order
from secagg.protocols.secagg.unmask import _reconstruct_grouped, reconstruct_secrets
from secagg.simulation import DpRequest, simulate
from secagg.wire import Reader

THREAT = ThreatModel.semi_honest(0.1, 0.1)


# -- the streaming simulator -------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["secagg+", "secagg"])
@pytest.mark.parametrize("seed", [0, 3])
def test_streaming_simulation_is_exact_like_the_held_one(protocol: str, seed: int) -> None:
    held = simulate(protocol, 30, 400, 0.1, seed, threat=THREAT, streaming=False)
    streamed = simulate(protocol, 30, 400, 0.1, seed, threat=THREAT, streaming=True)
    assert held["streaming"] is False and streamed["streaming"] is True
    assert held["exact"] and streamed["exact"]
    assert streamed["dropped"] == held["dropped"] and streamed["survivors"] == held["survivors"]
    for report in (held, streamed):
        assert 0 < report["max_abs_error"] <= report["error_bound"]
        assert report["average_max_abs_error"] <= report["average_error_bound"]
        assert report["peak_rss_bytes"] > 0
    assert streamed["max_abs_error"] / held["max_abs_error"] < 10 and held["max_abs_error"] / streamed["max_abs_error"] < 10


@pytest.mark.parametrize("streaming", [False, True])
def test_exactness_check_fails_when_the_released_sum_is_off_by_one(streaming: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    release = SecAggServer.result

    def off_by_one(self: SecAggServer) -> AggregateResult:
        result = release(self)
        ring = result.ring_sum.copy()
        ring[0] ^= ring.dtype.type(1)
        return dataclasses.replace(result, ring_sum=ring)

    monkeypatch.setattr(SecAggServer, "result", off_by_one)
    assert not simulate("secagg+", 20, 300, 0.0, 0, threat=THREAT, streaming=streaming)["exact"]


def test_streaming_simulation_under_dp_reports_the_planned_noise() -> None:
    dp = DpRequest("ddgauss", epsilon=5.0)
    held = simulate("secagg+", 30, 300, 0.1, 1, threat=THREAT, dp=dp, streaming=False)
    streamed = simulate("secagg+", 30, 300, 0.1, 1, threat=THREAT, dp=dp, streaming=True)
    assert held["exact"] and streamed["exact"]
    assert streamed["dropped"] == held["dropped"]
    for report in (held, streamed):
        ratio = report["dp"]["measured_noise_std"] / report["dp"]["planned_noise_std"]
        assert 0.7 < ratio < 1.3


def test_streaming_inputs_are_derived_per_client_from_the_seed() -> None:
    a = simulate("secagg+", 20, 200, 0.0, 5, threat=THREAT, streaming=True)
    b = simulate("secagg+", 20, 200, 0.0, 5, threat=THREAT, streaming=True)
    assert a["exact"] and b["exact"] and a["dropped"] == b["dropped"]


def _traced_peak(clients: int, dim: int, streaming: bool) -> int:
    tracemalloc.start()
    try:
        report = simulate("secagg+", clients, dim, 0.05, 0, threat=THREAT, streaming=streaming)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["exact"]
    return peak


def test_streaming_memory_holds_no_n_by_d_buffer() -> None:
    """Doubling n (200 -> 400) at d = 20,000 adds only the O(n·k) protocol state: less than the 200
    extra clients' encoded inputs alone (200 * 20,000 * 4 bytes = 16 MB), which the held simulator
    keeps (with the float inputs: at least twice that), so the check can fail."""
    dim, extra = 20_000, 200 * 20_000 * 4
    small, large = _traced_peak(200, dim, True), _traced_peak(400, dim, True)
    assert large - small < extra, (small, large)
    held = _traced_peak(400, dim, False)
    assert held - large > 2 * extra, (held, large)


# -- batched functions against their references ------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, shamir.MAX_X), min_size=3, max_size=3, unique=True), min_size=1, max_size=6))
def test_lagrange_at_zero_many_matches_the_scalar(rows: list[list[int]]) -> None:
    lam = shamir.lagrange_at_zero_many(np.array(rows, dtype=np.int64))
    for row, got in zip(rows, lam.tolist()):
        assert tuple(got) == shamir.lagrange_at_zero(tuple(row))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 5), st.randoms(use_true_random=False))
def test_reconstruct_many_matches_reconstruct(t: int, m_: int, rnd: random.Random) -> None:
    secrets = [rnd.randbytes(32) for _ in range(m_)]
    points = [sorted(rnd.sample(range(1, 40), t)) for _ in range(m_)]
    table = shamir.split(secrets, t, list(range(1, 40)))
    shares = np.stack([table[np.array(p) - 1, i, :] for i, p in enumerate(points)])
    chunks, ok = shamir.reconstruct_many(np.array(points), shares)
    assert ok.all()
    for i, p in enumerate(points):
        assert chunks[i].tobytes() == shamir.reconstruct(p, table[np.array(p) - 1][:, i : i + 1, :])[0] == secrets[i]
    bad = shares.copy()
    bad[0, 0, :] = (bad[0, 0, :] + rnd.randrange(1, shamir.PRIME)) % shamir.PRIME
    chunks, ok = shamir.reconstruct_many(np.array(points), bad)
    for i, p in enumerate(points):  # wrong shares: refused exactly when the scalar refuses them
        try:
            expected = shamir.reconstruct(p, bad[i][:, None, :])[0]
        except IntegrityError:
            assert not ok[i]
        else:
            assert ok[i] and chunks[i].tobytes() == expected
    assert ok[1:].all()


def _held(secrets: dict[int, bytes], holders: dict[int, list[int]], t: int) -> dict[int, dict[int, bytes]]:
    held: dict[int, dict[int, bytes]] = {}
    for owner, secret in secrets.items():
        table = shamir.split([secret], t, [h + 1 for h in holders[owner]])
        held[owner] = {h: table[i, 0].astype("<u4").tobytes() for i, h in enumerate(holders[owner])}
    return held


@pytest.mark.parametrize("seed", range(6))
def test_reconstruct_secrets_batch_matches_the_grouped_reference(seed: int) -> None:
    rnd = random.Random(seed)
    t, n = 3, 12
    secrets = {o: rnd.randbytes(32) for o in range(n)}
    holders = {o: sorted(rnd.sample(range(n), rnd.randint(t, n))) for o in range(n)}
    held = _held(secrets, holders, t)
    wrong = rnd.randrange(n)
    first = sorted(held[wrong])[0]
    held[wrong][first] = bytes(64)  # a wrong share among the first t: decoded around, or refused
    def verify(owner: int, secret: bytes) -> None:
        if secret != secrets[owner]:
            raise IntegrityError("wrong")
    firsts = {o: sorted(held[o])[:t] for o in secrets}
    try:
        expected = _reconstruct_grouped(firsts, held, t, verify)
    except IntegrityError:
        with pytest.raises(IntegrityError):
            reconstruct_secrets(list(secrets), held, t, verify)
        return
    assert reconstruct_secrets(list(secrets), held, t, verify) == expected == secrets


def test_graph_matches_the_per_client_reference_exhaustively() -> None:
    rnd = random.Random(7)
    for n in range(2, 24):
        for degree in range(1, n + 1):
            ids = sorted(rnd.sample(range(n), rnd.randint(1, n)))
            setup = os.urandom(32)
            ring = ring_order(n, setup)
            graph = neighbours(ids, degree, setup, n)
            if degree < n - 1:
                reference = {int(u): _near(ring, pos, degree // 2, set(ids)) for pos, u in enumerate(ring) if int(u) in ids}
                assert graph == reference
            for u in ids:
                assert neighbours_of(u, np.array(ids, dtype=np.uint32), degree, setup, n) == graph[u]


def test_canonical_public_keys_matches_the_scalar_on_the_edges() -> None:
    p = 2**255 - 19
    values = [0, 1, p - 1, p, p + 1, 2**255 - 1, 2**255, 2**256 - 1, p - 2**8, p + 2**8]
    keys = [v.to_bytes(32, "little") for v in values] + [os.urandom(32) for _ in range(200)]
    got = canonical_public_keys(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32))
    assert got.tolist() == [is_canonical_public_key(k) for k in keys]


def _key_list(n: int, signed: bool) -> m.KeyList:
    sig = lambda: os.urandom(64) if signed else b""  # noqa: E731
    keys = [bytes([i % 251]) + os.urandom(30) + b"\x00" for i in range(2 * n + 1)]
    entries = tuple(m.KeyEntry(3 * i, keys[2 * i + 1], keys[2 * i + 2], sig()) for i in range(n))
    return m.KeyList(keys[0], entries)


def _read(body: bytes) -> m.KeyList:
    reader = Reader(memoryview(body))
    out = m.KeyList.read(reader, 1 << 20)
    reader.done()
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_key_table_reads_what_the_entry_reader_reads(signed: bool) -> None:
    key_list = _key_list(9, signed)
    decoded = _read(key_list.body_bytes())
    assert isinstance(decoded.entries, m.KeyTable)
    assert decoded == key_list and decoded.entries == key_list.entries and tuple(decoded.entries) == key_list.entries
    assert decoded.body_bytes() == key_list.body_bytes()
    assert decoded.entries.entry(6) == key_list.entries[2] and decoded.entries.entry(7) is None
    assert key_list.table() == decoded.entries
    mixed = m.KeyList(key_list.server_key, (m.KeyEntry(0, key_list.entries[0].encryption_key,
                                                       key_list.entries[0].mask_key, os.urandom(64)),
                                            *(e for e in key_list.entries[1:] if not signed)))
    again = _read(mixed.body_bytes())
    assert again == mixed and again.table().entry(0) == mixed.entries[0]
    noncanonical = bytearray(key_list.body_bytes())
    noncanonical[32 + 4 + 4 * 9 + 31] |= 0x80  # bit 255 of the first listed key
    with pytest.raises(MalformedMessage):
        _read(bytes(noncanonical))


def test_repeat_check_finds_repeats() -> None:
    key_list = _key_list(50, False)
    table = key_list.table()
    assert not _repeats_a_key(table, key_list.server_key)
    assert _repeats_a_key(table, key_list.entries[7].mask_key)
    entries = list(key_list.entries)
    entries[3] = m.KeyEntry(entries[3].client, entries[3].encryption_key, entries[9].encryption_key)
    assert _repeats_a_key(m.KeyList(key_list.server_key, tuple(entries)).table(), key_list.server_key)


def test_outbox_builds_each_message_when_read_and_keeps_assignments() -> None:
    built: list[int] = []
    def make(client: int) -> bytes:
        built.append(client)
        return bytes([client])
    outbox = Outbox([3, 1, 2], make)
    assert built == [] and len(outbox) == 3 and list(outbox) == [3, 1, 2]
    assert sorted(outbox.items()) == [(1, b"\x01"), (2, b"\x02"), (3, b"\x03")]
    outbox[2] = b"tampered"
    assert outbox[2] == b"tampered" and dict(outbox) == {3: b"\x03", 1: b"\x01", 2: b"tampered"}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=6)), max_size=6),
       st.booleans(), st.integers(0, 3))
def test_blob_lists_read_in_one_pass_like_record_by_record(records: list[tuple[bytes, bytes]], uniform: bool,
                                                           cut: int) -> None:
    if uniform and records:
        records = [(p, records[0][1]) for p, _ in records]
    data = b"".join(p + len(b).to_bytes(4, "little") + b for p, b in records)
    data = data[: len(data) - cut] if cut <= len(data) else data

    def slow() -> tuple[list[bytes], list[bytes]]:
        r = Reader(memoryview(data))
        out = [(bytes(r.fixed(1)), r.blob(4)) for _ in records]
        r.done()
        return [p for p, _ in out], [b for _, b in out]

    def fast() -> tuple[list[bytes], list[bytes]]:
        r = Reader(memoryview(data))
        prefixes, blobs = r.blobs(len(records), 4, prefix=1)
        r.done()
        return [row.tobytes() for row in prefixes], list(blobs)

    try:
        expected = slow()
    except MalformedMessage:
        with pytest.raises(MalformedMessage):
            fast()
        return
    assert fast() == expected


def test_entries_of_matches_entry() -> None:
    table = _key_list(20, False).table()
    wanted = [0, 1, 3, 4, 57, 60, 99]
    assert table.entries_of(wanted) == {c: e for c in wanted if (e := table.entry(c)) is not None}
    assert table.entries_of([]) == {}
