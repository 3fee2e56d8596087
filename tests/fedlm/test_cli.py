"""The ``fedlm run`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlm.cli import build_parser, config_from_args, main
from tests.fedlm.helpers import TINY


def _flags(values: dict[str, object]) -> list[str]:
    out: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not False:
            out += [flag, str(value)]
    return out


def test_every_flag_maps_onto_the_config() -> None:
    args = build_parser().parse_args(
        ["run", "--mode", "prompt", "--backend", "ckks", "--clients-per-round", "2",
         "--no-freeze-a", "--data", "a.txt", "b.jsonl", "--lr", "0.5"])
    cfg = config_from_args(args)
    assert (cfg.mode, cfg.backend, cfg.clients_per_round) == ("prompt", "ckks", 2)
    assert cfg.freeze_a is False and cfg.data == ("a.txt", "b.jsonl") and cfg.lr == 0.5
    assert config_from_args(build_parser().parse_args(["run"])).freeze_a is None


def test_invalid_flags_exit_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--clients", "2", "--clients-per-round", "3"])
    assert "clients_per_round=3 > clients=2" in capsys.readouterr().err


def test_run_writes_report_and_prints_its_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "r.json"
    flags = _flags({**TINY, "quiet": False, "rounds": 1})
    assert main(["run", "--backend", "plain", "--out", str(tmp_path / "o"),
                 "--report", str(report_path), *flags]) == 0
    printed = capsys.readouterr().out
    assert str(report_path) in printed and "held-out loss" in printed
    report = json.loads(report_path.read_text())
    assert report["final_eval_loss"] < report["initial_eval_loss"]


def test_secagg_refusal_is_a_clean_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import secagg

    def refuse(*args: object, **kwargs: object) -> None:
        raise secagg.ParameterError("the sum of 5 inputs needs 70 bits (> 64)")

    monkeypatch.setattr(secagg, "aggregate", refuse)
    flags = _flags({**TINY, "rounds": 1})
    assert main(["run", "--backend", "secagg+", "--out", str(tmp_path), *flags]) == 2
    assert "70 bits" in capsys.readouterr().err
