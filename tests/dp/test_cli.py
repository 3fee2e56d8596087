"""``secagg dp plan``: JSON on success, one line on stderr and exit 2 on bad input."""

from __future__ import annotations

import json

import pytest

from secagg.cli import main

ARGS = ["dp", "plan", "--epsilon", "2", "--delta", "1e-5", "--rounds", "100", "--clients", "100",
        "--min-survivors", "80", "--dim", "16384", "--clip", "1.0"]


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for field in ("epsilon", "delta", "noise_multiplier", "noise_std_per_client", "bits", "scale",
                  "expected_mse", "gaussian_mse", "mechanism", "rounds", "clients", "min_survivors", "dim",
                  "clip", "wrap_probability"):
        assert field in out
    assert out["epsilon"] <= 2 and out["bits"] <= 20 and out["mechanism"] == "ddgauss"
    assert main([*ARGS, "--mechanism", "skellam", "--bits", "22", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["mechanism"], out["bits"]) == ("skellam", 22)


@pytest.mark.parametrize("change", [("--epsilon", "-1"), ("--delta", "2"), ("--min-survivors", "101"),
                                    ("--bits", "8"), ("--dim", "0"), ("--clip", "nan")])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], change: tuple[str, str]) -> None:
    args = list(ARGS)
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += list(change)
    assert main([*args, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secagg: error:")
