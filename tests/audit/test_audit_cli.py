"""``secagg audit``: JSON contract and exit status."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from secagg.audit.transcript import read_transcript
from secagg.cli import main
from secagg.hazmat.keys import SigningKey


def run(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out)


def test_attacks_json_contract(capsys) -> None:
    code, out = run(capsys, "audit", "attacks", "--adversary", "malicious", "--protocol", "secagg+",
                    "--attack", "both-survivor-and-dropped", "--attack", "sybils-with-registry", "--json")
    assert code == 0 and out["all_ok"] is True
    assert [r["name"] for r in out["rows"]] == ["both-survivor-and-dropped", "sybils-with-registry"]
    for row in out["rows"]:
        assert {"name", "expected", "outcome", "ok"} <= set(row) and row["ok"] is True


def test_semi_honest_by_design_rows(capsys) -> None:
    code, out = run(capsys, "audit", "attacks", "--adversary", "semi-honest", "--protocol", "secagg",
                    "--attack", "key-substitution-mitm", "--json")
    assert code == 0
    (row,) = out["rows"]
    assert (row["expected"], row["outcome"], row["individual_inputs_leaked"]) == ("succeeds-by-design", "succeeded", [0])
    assert "no PKI" in row["reason"]


def test_record_then_check_transcript(capsys, tmp_path: Path) -> None:
    path = tmp_path / "round.satx"
    code, out = run(capsys, "audit", "record", str(path), "--clients", "20", "--dim", "500", "--json")
    assert code == 0 and out["protocol"] == "secagg+" and out["clients"] == 20
    code, report = run(capsys, "audit", "transcript", str(path), "--json")
    assert code == 0 and report["ok"] is True


def test_failing_transcript_exits_non_zero(capsys, tmp_path: Path) -> None:
    path = tmp_path / "round.satx"
    run(capsys, "audit", "record", str(path), "--clients", "10", "--dim", "300", "--adversary", "malicious", "--dropout", "0", "--json")
    registry = {str(i): "00" * 32 for i in range(10)}  # the wrong keys: every signature fails
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    code, report = run(capsys, "audit", "transcript", str(path), "--registry", str(tmp_path / "registry.json"), "--json")
    assert code == 1 and report["ok"] is False and report["registry_source"] == "argument"


def test_missing_transcript_is_an_error(capsys, tmp_path: Path) -> None:
    assert main(["audit", "transcript", str(tmp_path / "none.satx"), "--json"]) == 2
    assert "no transcript" in capsys.readouterr().err


def test_console_entry_point_runs_audit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "secagg", "audit", "attacks", "--adversary", "semi-honest",
                           "--protocol", "secagg", "--attack", "replay-earlier-round", "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["all_ok"] is True


def _malicious_round(capsys, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "round.satx"
    run(capsys, "audit", "record", str(path), "--clients", "10", "--dim", "300", "--adversary", "malicious", "--json")
    return path, read_transcript(path).meta["registry"]  # stands in for the registry the auditor enrolled


def test_signatures_are_checked_against_the_auditors_registry(capsys, tmp_path: Path) -> None:
    path, registry = _malicious_round(capsys, tmp_path)
    code, report = run(capsys, "audit", "transcript", str(path), "--json")
    assert code == 0 and report["signatures_checked_against_registry"] is False
    assert report["registry_source"] == "transcript"
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    code, report = run(capsys, "audit", "transcript", str(path), "--registry", str(tmp_path / "registry.json"), "--json")
    assert code == 0 and report["ok"] is True and report["signatures_checked_against_registry"] is True
    assert report["registry_source"] == "argument" and report["registry_mismatches"] == []
    swapped = {**registry, "3": SigningKey.generate().public_bytes.hex()}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    code, report = run(capsys, "audit", "transcript", str(path), "--registry", str(tmp_path / "swapped.json"), "--json")
    assert code == 1 and report["ok"] is False and report["registry_mismatches"] == [3]


def _one_line_error(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("secagg: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_malformed_registry_file_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    path, registry = _malicious_round(capsys, tmp_path)
    bad = tmp_path / "registry.json"
    for content in (b"not json", b"\xff", b"[]", b'{"0": "zz"}', b'{"x": "' + b"00" * 32 + b'"}', b'{"0": 7}',
                    b"[" * 100_000):
        bad.write_bytes(content)
        assert "registry" in _one_line_error(capsys, "audit", "transcript", str(path), "--registry", str(bad), "--json")
    assert "registry" in _one_line_error(capsys, "audit", "transcript", str(path), "--registry", str(tmp_path / "none"))
    assert "registry" in _one_line_error(capsys, "audit", "transcript", str(path), "--registry", str(tmp_path))


def test_hostile_transcript_metadata_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    path, _ = _malicious_round(capsys, tmp_path)
    data = path.read_bytes()
    head = struct.Struct("<4sHBII")
    magic, version, role, party, length = head.unpack_from(data)
    meta = json.loads(data[head.size:head.size + length])
    for change in ({"num_clients": "many"}, {"threshold": None}, {"modulus_bits": -1}, {"num_clients": 1e400},
                   {"registry": {"0": "zz"}}, {"registry": {"x": "00" * 32}}, {"registry": []}):
        blob = json.dumps({**meta, **change}).encode()
        (tmp_path / "bad.satx").write_bytes(head.pack(magic, version, role, party, len(blob)) + blob + data[head.size + length:])
        assert "metadata" in _one_line_error(capsys, "audit", "transcript", str(tmp_path / "bad.satx"), "--json")
    for blob in (b"[]", b"[" * 100_000, b"\xff"):
        (tmp_path / "bad.satx").write_bytes(head.pack(magic, version, role, party, len(blob)) + blob + data[head.size + length:])
        assert "metadata" in _one_line_error(capsys, "audit", "transcript", str(tmp_path / "bad.satx"))
