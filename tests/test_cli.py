from __future__ import annotations

import json
import subprocess
import sys

import pytest

from secagg.cli import main


def run_cli(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_params_json(capsys) -> None:
    out = run_cli(capsys, "params", "--clients", "1000", "--dropout", "0.05", "--corrupt", "0.05", "--json")
    assert (out["k"], out["t"]) == (30, 17)
    out = run_cli(capsys, "params", "--clients", "1000", "--dropout", "0.05", "--corrupt", "0.05",
                  "--adversary", "malicious", "--json")
    assert (out["k"], out["t"]) == (68, 51)  # fcp: (52, 37), isolatable; see tests/test_params.py
    assert (out["quorum"], out["corrupt_bound"]) == (526, 50)
    assert out["min_honest_inputs"] >= 2 and out["grinding_bits"] == 40


def test_params_refuses_infeasible_with_reason(capsys) -> None:
    assert main(["params", "--clients", "1000", "--dropout", "0.5", "--corrupt", "0.5", "--json"]) == 2
    assert "corrupt + dropout" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
@pytest.mark.parametrize("stage", [None, "advertise", "share", "mask", "unmask"])
def test_simulate_reports_exact(capsys, protocol: str, stage: str | None) -> None:
    args = ["simulate", "--protocol", protocol, "--clients", "12", "--dim", "2000", "--dropout", "0.2", "--json"]
    if stage:
        args += ["--stage", stage]
    out = run_cli(capsys, *args)
    for field in ("protocol", "clients", "dim", "survivors", "exact", "max_abs_error",
                  "bytes_per_client_upload", "client_seconds", "server_seconds"):
        assert field in out
    assert out["exact"] is True
    assert out["max_abs_error"] <= out["error_bound"]
    assert out["survivors"] >= out["threshold"]


def test_console_script_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "secagg", "simulate", "--clients", "5", "--dim", "10", "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["exact"] is True


def test_ckks_simulate_report_has_every_secagg_field_with_the_same_meaning(capsys) -> None:
    masked = run_cli(capsys, "simulate", "--protocol", "secagg+", "--clients", "6", "--dim", "200",
                     "--dropout", "0.2", "--json")
    ckks = run_cli(capsys, "simulate", "--protocol", "ckks", "--clients", "6", "--dim", "200",
                   "--dropout", "0.2", "--json")
    assert set(masked) <= set(ckks), sorted(set(masked) - set(ckks))
    for report in (masked, ckks):  # error_bound bounds the weighted sum; average_error_bound the average
        assert report["exact"] is True
        assert 0 <= report["max_abs_error"] <= report["error_bound"]
        assert 0 <= report["average_max_abs_error"] <= report["average_error_bound"] <= report["error_bound"]
