"""``secagg bench``: the quick run works end to end and its report has every promised field.

No timing is asserted (CI machines vary); only that each headline ratio exists and is positive,
that Flower's real workflow completed and summed correctly, and that the plots are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from secagg.cli import main

HEADLINES = ("client_mask_vs_flower", "client_mask_vs_bound", "server_unmask_vs_flower",
             "ckks_bytes_vs_nvflare", "ckks_time_vs_nvflare")


def test_the_core_cli_does_not_load_the_benchmark_dependencies() -> None:
    # TenSEAL is not on the list: ``import secagg`` loads it for the CKKS protocol, bench or not.
    code = ("import sys; from secagg.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('flwr', 'matplotlib', 'benchmarks.bench', 'benchmarks.flower_inprocess') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_quick_bench_reports_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flwr")
    pytest.importorskip("tenseal")
    pytest.importorskip("matplotlib")
    report_path, plots = tmp_path / "bench.json", tmp_path / "plots"
    assert main(["bench", "--quick", "--json", str(report_path), "--plots", str(plots)]) == 0
    assert "headline ratios" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    for field in HEADLINES:
        assert isinstance(report[field], float) and report[field] > 0, field
        assert field in report["ratio_definitions"]
    assert report["quick"] is True and report["date"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"] and report["machine"]["python"]
    assert report["machine"]["versions"]["flwr"]
    sections = report["sections"]
    assert set(sections) == {"client_masking", "server_vs_dropout", "n_sweep", "ckks", "upload_bytes"}
    for row in sections["server_vs_dropout"]:
        assert row["flower_completed"], row["flower_errors"]
        assert row["flower_max_abs_error"] < 1e-4 and row["ours_max_abs_error"] < 1e-4
        assert row["ours_server_s"] > 0 and row["flower_server_s"] > 0
    assert all(r["exact"] for r in sections["n_sweep"])
    systems = {r["system"] for r in sections["upload_bytes"]}
    assert {"secagg", "secagg+", "secagg+ with distributed DP", "ckks (addition-128)", "plain float32"} <= systems
    assert any(s.startswith("Flower") for s in systems)
    assert all(r["bytes_per_parameter"] > 0 for r in sections["upload_bytes"])
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(f"bench_{s}.png" for s in sections)


def test_flower_even_share_count_crash_is_reported_not_raised() -> None:
    """flwr 1.42 sends clients an even ``share_num`` but builds an odd neighbourhood: every client fails
    in share_keys with an IndexError and the workflow halts. The in-process grid reports it."""
    pytest.importorskip("flwr")
    from benchmarks.flower_inprocess import run_flower_round

    crashed = run_flower_round(6, 100, 4, 2, [])
    assert not crashed.completed
    assert crashed.client_errors and all("IndexError" in e for e in crashed.client_errors)
    ok = run_flower_round(6, 100, 5, 2, [1])
    assert ok.completed and ok.max_abs_error is not None and ok.max_abs_error < 1e-4


def test_flower_overhead_quick_run_completes_and_sums_exactly(tmp_path: Path) -> None:
    """``benchmarks.flower_overhead --quick``: every system runs both rounds with and without a dropped
    node over the serialising grid, and each final model matches the exact one."""
    pytest.importorskip("flwr")
    pytest.importorskip("tenseal")
    from benchmarks.flower_overhead import FLOWER, PLAIN, main as overhead

    report_path = tmp_path / "overhead.json"
    assert overhead(["--quick", "--json", str(report_path), "--text", str(tmp_path / "overhead.txt")]) == 0
    rows = json.loads(report_path.read_text())["rows"]
    assert {r["system"] for r in rows} >= {PLAIN, "ours secagg+", "ours secagg", "ours ckks", FLOWER}
    assert {r["drop"] for r in rows} == {False, True}
    for row in rows:
        assert row["completed"] and row["max_abs_error"] < 1e-4, row
        assert row["seconds"] > 0 and row["vs_plain"] > 0 and row["vs_flower"] > 0
        assert row["upload_bytes"] > 0 and row["download_bytes"] > 0
    assert "vs Flower" in (tmp_path / "overhead.txt").read_text()
