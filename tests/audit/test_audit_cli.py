"""``secagg audit``: JSON contract and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from secagg.cli import main


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
