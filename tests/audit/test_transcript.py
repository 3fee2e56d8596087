"""Transcripts: format round trip, the 20-client SecAgg+ check, and doctored transcripts failing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import MalformedMessage, ParameterError
from secagg.audit.adversary import CONTEXT, AdversarialServer, cast, play
from secagg.audit.attacks_isolation import ReplayableRandom
from secagg.audit.attacks_unmask import _tell_some_victim_dropped
from secagg.audit.harness import harness_config
from secagg.audit.transcript import (
    RECEIVED, SENT, Transcript, TranscriptRecorder, config_meta, decode_untagged, read_transcript, tee,
)
from secagg.audit.transcript_check import check_transcript, parse_registry
from secagg.audit.uniformity import byte_test, chi2_sf, word_test
from secagg.hazmat.keys import SigningKey
from secagg.protocols.secagg import SecAggServer
from secagg.protocols.secagg import messages as m
from secagg.router import run_round
from secagg.wire import SERVER_ID


def record(path: Path, protocol: str = "secagg+", malicious: bool = False, dropouts=None) -> Path:
    """A recorded round whose keys, seeds and masks come from recorded seeds, so the transcript
    checker's chi-square tests (family-wise alpha 1e-3) see the same masked inputs on every run."""
    config = harness_config(protocol, malicious)
    parties = cast(config, range(20), randoms={i: ReplayableRandom(b"transcript-test-%d" % i) for i in range(20)})
    server = SecAggServer(config, context=CONTEXT, registry=parties.registry,
                          random=ReplayableRandom(b"transcript-test-server"))
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
    records[i] = type(records[i])(RECEIVED, records[i].peer, m.encode(header, m.MaskedInput(plain, config.encoding.modulus_bits), tag_key=bytes(32)))
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


# -- hostile metadata: only MalformedMessage, never another exception --------------------------------
_HEAD = struct.Struct("<4sHBII")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("recorded") / "server.satx", malicious=True)


def with_meta(path: Path, source: Path, meta: bytes) -> Path:
    """``source`` with its metadata blob replaced by ``meta`` (any bytes), records untouched."""
    data = source.read_bytes()
    magic, version, role, party, length = _HEAD.unpack_from(data)
    path.write_bytes(_HEAD.pack(magic, version, role, party, len(meta)) + meta + data[_HEAD.size + length:])
    return path


def check_file(path: Path) -> dict | None:
    """The report, or None when the file was refused with MalformedMessage; anything else escapes."""
    try:
        report = check_transcript(read_transcript(path))
    except MalformedMessage:
        return None
    json.dumps(report)  # the CLI prints it
    return report


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_numbers = st.sampled_from([0, -1, 1, 7, 64, 65, 2**20, 2**20 + 1, 2**63, -(2**70), 1.5, 1e308, True, "8", None])
_hexish = st.text(alphabet="0123456789abcdefABCDEF xg\n", max_size=70) | st.binary(max_size=33).map(bytes.hex)


@st.composite
def _mutated_meta(draw, meta: dict):
    meta = json.loads(json.dumps(meta))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["number", "any", "delete", "registry-key", "registry-value", "registry"]))
        name = draw(st.sampled_from(sorted(meta) + ["registry", "num_clients", "threshold", "modulus_bits"]))
        registry = meta.get("registry")
        if action == "number":
            meta[name] = draw(_numbers)
        elif action == "any":
            meta[name] = draw(_json)
        elif action == "delete":
            meta.pop(name, None)
        elif action == "registry" or not isinstance(registry, dict) or not registry:
            meta["registry"] = draw(_json)
        elif action == "registry-key":
            old = draw(st.sampled_from(sorted(registry)))
            registry[draw(st.text(alphabet="0123456789-+ _x\u0661", min_size=0, max_size=12))] = registry.pop(old)
        else:
            registry[draw(st.sampled_from(sorted(registry)))] = draw(_hexish | _json)
    top = draw(st.sampled_from(["object", "object", "object", "other"]))
    return meta if top == "object" else draw(_json)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_metadata_raises_only_malformed_message(recorded: Path, tmp_path: Path, data) -> None:
    meta = data.draw(_mutated_meta(read_transcript(recorded).meta))
    blob = json.dumps(meta).encode()  # NaN and Infinity become JSON's non-standard tokens
    report = check_file(with_meta(tmp_path / "fuzzed.satx", recorded, blob))
    if report is not None:
        assert isinstance(report["ok"], bool) and report["signatures_checked_against_registry"] is False


@settings(max_examples=60)
@given(blob=st.binary(max_size=64))
def test_fuzzed_metadata_bytes_raise_only_malformed_message(recorded: Path, tmp_path_factory, blob: bytes) -> None:
    check_file(with_meta(tmp_path_factory.mktemp("raw") / "raw.satx", recorded, blob))


def _meta_with(recorded: Path, **fields) -> dict:
    meta = dict(read_transcript(recorded).meta)
    meta.update(fields)
    return meta


@pytest.mark.parametrize("change", [
    # int() on the wrong type or value: ValueError, TypeError, OverflowError
    {"num_clients": "many"}, {"num_clients": [20]}, {"num_clients": float("inf")}, {"num_clients": float("nan")},
    {"threshold": None}, {"threshold": "2"}, {"modulus_bits": {"bits": 8}}, {"num_clients": 1.5}, {"threshold": True},
    # negative or absurd shifts: ValueError from 1 << -1, OverflowError from np.uint64(2**1000 - 1)
    {"modulus_bits": -1}, {"modulus_bits": 0}, {"modulus_bits": 1000}, {"modulus_bits": 65},
    {"num_clients": 0}, {"num_clients": 2**64}, {"threshold": 21}, {"threshold": -3},
    # bytes.fromhex and int() on registry entries
    {"registry": {"0": "zz"}}, {"registry": {"0": 5}}, {"registry": {"0": "00" * 31}}, {"registry": {"0": " 00" * 32}},
    {"registry": {"x": "00" * 32}}, {"registry": {"-1": "00" * 32}}, {"registry": {"+1": "00" * 32}},
    {"registry": {"01": "00" * 32}}, {"registry": {"\u0661": "00" * 32}}, {"registry": {str(2**40): "00" * 32}},
    # wrong JSON types: AttributeError from .items() / .get()
    {"registry": ["00" * 32]}, {"registry": "00" * 32}, {"registry": None},
], ids=repr)
def test_each_crash_class_in_metadata_is_malformed(recorded: Path, tmp_path: Path, change: dict) -> None:
    blob = json.dumps(_meta_with(recorded, **change)).encode()
    with pytest.raises(MalformedMessage, match="metadata"):
        check_transcript(read_transcript(with_meta(tmp_path / "bad.satx", recorded, blob)))


@pytest.mark.parametrize("blob", [b"[]", b'"meta"', b"7", b"null", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}",
                                  b"{" + b'"a":{' * 50_000 + b"}" * 50_001, b"{,}"], ids=lambda b: repr(b[:8]))
def test_metadata_that_is_not_a_json_object_is_malformed(recorded: Path, tmp_path: Path, blob: bytes) -> None:
    with pytest.raises(MalformedMessage, match="metadata"):
        read_transcript(with_meta(tmp_path / "bad.satx", recorded, blob))


def test_hostile_metadata_in_a_transcript_object_is_malformed(recorded: Path) -> None:
    transcript = read_transcript(recorded)
    for meta in ([], "meta", None, {"modulus_bits": -5}):
        with pytest.raises(MalformedMessage):
            check_transcript(Transcript(transcript.role, transcript.party, meta, transcript.records))  # type: ignore[arg-type]


# -- the registry the auditor supplies, not the one the server wrote ---------------------------------
def _signatures_detail(report: dict) -> str:
    return next(c for c in report["checks"] if c["name"] == "signatures")["detail"]


def test_without_a_registry_signatures_are_not_independently_checked(recorded: Path, tmp_path: Path) -> None:
    report = check_transcript(read_transcript(recorded))
    assert report["signatures_checked_against_registry"] is False and report["registry_source"] == "transcript"
    assert "NOT checked against an independent registry" in _signatures_detail(report)
    plain = check_transcript(read_transcript(record(tmp_path / "plain.satx")))
    assert plain["signatures_checked_against_registry"] is False and plain["registry_source"] == "none"
    assert "NOT checked against an independent registry" in _signatures_detail(plain)


def test_the_auditors_registry_is_used(recorded: Path) -> None:
    transcript = read_transcript(recorded)
    registry = {int(k): bytes.fromhex(v) for k, v in transcript.meta["registry"].items()}
    report = check_transcript(transcript, registry=registry)
    assert report["ok"], failed(report)
    assert report["signatures_checked_against_registry"] is True and report["registry_source"] == "argument"
    assert report["registry_mismatches"] == [] and "auditor's registry" in _signatures_detail(report)
    assert "NOT checked" not in _signatures_detail(report)


def test_a_key_the_auditor_does_not_hold_fails(recorded: Path) -> None:
    transcript = read_transcript(recorded)
    registry = {int(k): bytes.fromhex(v) for k, v in transcript.meta["registry"].items()}
    substituted = {**registry, 5: SigningKey.generate().public_bytes}  # the server swapped client 5's key
    report = check_transcript(transcript, registry=substituted)
    assert not report["ok"] and report["registry_mismatches"] == [5]
    detail = failed(report)["signatures"]
    assert "disagrees with the auditor's for client(s) [5]" in detail and "by client 5" in detail
    unregistered = {c: k for c, k in registry.items() if c != 7}  # a client (or sybil) the auditor never enrolled
    report = check_transcript(transcript, registry=unregistered)
    assert not report["ok"] and report["registry_mismatches"] == [7]
    assert "for client(s) [7]" in failed(report)["signatures"]


def test_a_registry_for_a_transcript_without_one_checks_the_signatures(tmp_path: Path, recorded: Path) -> None:
    transcript = read_transcript(recorded)
    registry = {int(k): bytes.fromhex(v) for k, v in transcript.meta["registry"].items()}
    meta = {k: v for k, v in transcript.meta.items() if k != "registry"}
    stripped = check_transcript(Transcript(transcript.role, transcript.party, meta, transcript.records), registry=registry)
    assert stripped["ok"] and stripped["registry_mismatches"] == []
    wrong = {c: SigningKey.generate().public_bytes for c in registry}
    report = check_transcript(Transcript(transcript.role, transcript.party, meta, transcript.records), registry=wrong)
    assert "signatures fail" in failed(report)["signatures"]


@pytest.mark.parametrize("registry", [{0: b"short"}, {"0": bytes(32)}, {True: bytes(32)}, {-1: bytes(32)},
                                      {0: "00" * 32}, [bytes(32)]], ids=repr)
def test_a_malformed_registry_argument_is_a_parameter_error(recorded: Path, registry) -> None:
    with pytest.raises(ParameterError, match="registry"):
        check_transcript(read_transcript(recorded), registry=registry)


@pytest.mark.parametrize("data", [[], "x", {"0": "zz"}, {"0": 1}, {"a": "00" * 32}, {"01": "00" * 32}, {"0": "00" * 33}])
def test_parse_registry_refuses_malformed_json(data) -> None:
    with pytest.raises(ParameterError):
        parse_registry(data)
    assert parse_registry({"0": "ab" * 32, "17": "CD" * 32}) == {0: b"\xab" * 32, 17: b"\xcd" * 32}
