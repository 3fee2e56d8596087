"""Transcripts: format round trip, the 20-client SecAgg+ check, and doctored transcripts failing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secagg import MalformedMessage
from secagg.audit.adversary import CONTEXT, AdversarialServer, cast, play
from secagg.audit.attacks_unmask import _tell_some_victim_dropped
from secagg.audit.harness import harness_config
from secagg.audit.transcript import (
    RECEIVED, SENT, Transcript, TranscriptRecorder, config_meta, decode_untagged, read_transcript, tee,
)
from secagg.audit.transcript_check import check_transcript
from secagg.audit.uniformity import byte_test, chi2_sf, word_test
from secagg.protocols.secagg import SecAggServer
from secagg.protocols.secagg import messages as m
from secagg.router import run_round
from secagg.wire import SERVER_ID


def record(path: Path, protocol: str = "secagg+", malicious: bool = False, dropouts=None) -> Path:
    config = harness_config(protocol, malicious)
    parties = cast(config, range(20))
    server = SecAggServer(config, context=CONTEXT, registry=parties.registry)
    with TranscriptRecorder.open(path, SERVER_ID, config_meta(config, 0, parties.registry)) as rec, \
            TranscriptRecorder.open(path.with_suffix(".client3"), 3, config_meta(config)) as client:
        run_round(server, parties.clients, dropouts or {4: "mask", 9: "unmask"}, tap=tee(rec, client))
    return path


def rewrite(path: Path, transcript: Transcript, records) -> Path:
    with TranscriptRecorder.open(path, transcript.party, transcript.meta) as rec:
        for r in records:
            (rec.sent if r.direction == SENT else rec.received)(r.peer, r.data)
    return path


def failed(report: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


@pytest.mark.parametrize("malicious", [False, True])
def test_recorded_20_client_secagg_plus_round_passes(tmp_path: Path, malicious: bool) -> None:
    transcript = read_transcript(record(tmp_path / "server.satx", malicious=malicious))
    report = check_transcript(transcript)
    assert report["ok"], failed(report)
    assert transcript.role == "server" and transcript.meta["protocol"] == "secagg+"
    assert report["revealed"]["dropped_after_sharing"] == [4]
    assert 4 not in report["revealed"]["survivors"] and len(report["revealed"]["survivors"]) == 19
    assert all(0 <= t["p_value"] <= 1 for t in report["chi_square"]) and len(report["chi_square"]) == 40
    signatures = next(c for c in report["checks"] if c["name"] == "signatures")["detail"]
    assert ("verify under the registry" in signatures) == malicious


def test_client_transcript_holds_only_its_messages(tmp_path: Path) -> None:
    record(tmp_path / "server.satx")
    mine = read_transcript(tmp_path / "server.client3")
    assert mine.role == "client" and mine.party == 3
    assert {r.peer for r in mine.records} == {SERVER_ID}
    assert [r.direction for r in mine.records[:2]] == [SENT, RECEIVED]
    assert "server" in failed(check_transcript(mine))["server-transcript"]


def test_doctored_transcript_with_a_client_revealing_both_shares_fails(tmp_path: Path) -> None:
    transcript = read_transcript(record(tmp_path / "server.satx"))
    last = next(r for r in reversed(transcript.records) if decode_untagged(r.data)[0].kind == m.Kind.UNMASK_RESPONSE)
    header, body = decode_untagged(last.data)
    assert isinstance(body, m.UnmaskResponse)
    owner = body.owners[0]
    other = m.ShareKind.MASK_KEY if body.kinds[0] == m.ShareKind.SELF_MASK_SEED else m.ShareKind.SELF_MASK_SEED
    forged = m.encode(header, m.UnmaskResponse((owner,), (int(other),), (body.shares[0],)), tag_key=bytes(32))
    doctored = rewrite(tmp_path / "doctored.satx", transcript, transcript.records + (type(last)(RECEIVED, last.peer, forged),))
    report = check_transcript(read_transcript(doctored))
    assert not report["ok"]
    detail = failed(report)["one-share-kind-per-client"]
    assert f"client {header.sender} released both its share of client {owner}'s self-mask seed and of its mask key" in detail


def test_inconsistent_survivor_sets_are_flagged(tmp_path: Path) -> None:
    config = harness_config("secagg", False)
    parties = cast(config, range(20))
    server = AdversarialServer(config, context=CONTEXT, script={"mask": _tell_some_victim_dropped})
    with TranscriptRecorder.open(tmp_path / "bad.satx", SERVER_ID, config_meta(config)) as rec:
        play(server, parties.clients, tap=rec)
    problems = failed(check_transcript(read_transcript(tmp_path / "bad.satx")))
    assert "different survivor/dropped lists" in problems["revealed-only-survivors-and-aggregate"]
    assert "client 0's self-mask seed shares came from" in problems["one-share-kind-per-client"]


def test_an_unmasked_input_fails_the_uniformity_test(tmp_path: Path) -> None:
    transcript = read_transcript(record(tmp_path / "server.satx"))
    config = harness_config("secagg+", False)
    records = list(transcript.records)
    i = next(k for k, r in enumerate(records) if decode_untagged(r.data)[0].kind == m.Kind.MASKED_INPUT)
    header, _ = decode_untagged(records[i].data)
    plain = config.encoding.encode(np.random.default_rng(0).normal(size=config.schema.size))
    records[i] = type(records[i])(RECEIVED, records[i].peer, m.encode(header, m.MaskedInput(plain), tag_key=bytes(32)))
    report = check_transcript(read_transcript(rewrite(tmp_path / "plain.satx", transcript, records)))
    assert f"NOT uniform: client {header.sender}" in failed(report)["uniform-masked-inputs"]


def test_a_forged_signature_fails(tmp_path: Path) -> None:
    transcript = read_transcript(record(tmp_path / "server.satx", malicious=True))
    records = list(transcript.records)
    i = next(k for k, r in enumerate(records) if decode_untagged(r.data)[0].kind == m.Kind.ADVERTISE)
    data = bytearray(records[i].data)
    data[-1] ^= 1
    records[i] = type(records[i])(RECEIVED, records[i].peer, bytes(data))
    report = check_transcript(read_transcript(rewrite(tmp_path / "sig.satx", transcript, records)))
    assert "1 of" in failed(report)["signatures"] and "advertisement by client" in failed(report)["signatures"]


def test_malformed_files_are_rejected(tmp_path: Path) -> None:
    good = record(tmp_path / "server.satx").read_bytes()
    for bad in (b"", b"XXXX" + good[4:], good[:-1]):
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(MalformedMessage):
            read_transcript(tmp_path / "bad")


def test_decode_untagged_reads_every_kind(tmp_path: Path) -> None:
    transcript = read_transcript(record(tmp_path / "server.satx", malicious=True))
    kinds = {decode_untagged(r.data)[0].kind for r in transcript.records}
    assert kinds == set(m.Kind)


def test_chi_square_p_values() -> None:
    assert abs(chi2_sf(3.841458820694124, 1) - 0.05) < 1e-12
    assert abs(chi2_sf(10.0, 2) - np.exp(-5)) < 1e-12
    assert abs(chi2_sf(310.4574, 255) - 0.01) < 1e-6
    rng = np.random.default_rng(1)
    uniform = rng.integers(0, 1 << 27, size=4000, dtype=np.uint64)
    assert byte_test("u", uniform, 27).p_value > 1e-4 and word_test("u", uniform, 27).p_value > 1e-4
    skewed = uniform % 1000
    assert byte_test("s", skewed, 27).p_value < 1e-10 and word_test("s", skewed, 27).p_value < 1e-10
