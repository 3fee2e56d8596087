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
    assert main(["run", "--clients", "2", "--clients-per-round", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clients_per_round=3 > clients=2" in err[0]


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

    monkeypatch.setattr(secagg, "new_server", refuse)
    flags = _flags({**TINY, "rounds": 1})
    assert main(["run", "--backend", "secagg+", "--out", str(tmp_path), *flags]) == 2
    assert "70 bits" in capsys.readouterr().err


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('mode = "prompt"\nbackend = "ckks"\nclients-per-round = 2\nlr = 0.5\ndata = ["a.txt"]\n')
    args = build_parser().parse_args(["run", "--config", str(toml), "--lr", "0.25"])
    from fedlm.cli import read_config_file
    cfg = config_from_args(build_parser(read_config_file(str(toml))).parse_args(
        ["run", "--config", str(toml), "--lr", "0.25"]))
    assert args.config == str(toml)
    assert (cfg.mode, cfg.backend, cfg.clients_per_round, cfg.lr, cfg.data) == ("prompt", "ckks", 2, 0.25, ("a.txt",))


def test_a_report_config_reproduces_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first.json"
    flags = _flags({**TINY, "rounds": 1})
    assert main(["run", "--backend", "plain", "--server-opt", "fedavgm", "--out", str(tmp_path / "a"),
                 "--report", str(first), *flags]) == 0
    second = tmp_path / "second.json"
    assert main(["run", "--config", str(first), "--out", str(tmp_path / "b"), "--report", str(second)]) == 0
    capsys.readouterr()
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert {k: v for k, v in a["config"].items() if k not in ("out", "report")} == \
           {k: v for k, v in b["config"].items() if k not in ("out", "report")}
    # Same seed, schedule and arithmetic: the same result. (A secure backend's stochastic rounding
    # draws from the OS, so it reproduces only within its error bound.)
    assert a["final_eval_loss"] == b["final_eval_loss"]


@pytest.mark.parametrize("content", ['rounds = "ten"\n', 'no_such_flag = 1\n', 'rounds = \n'])
def test_bad_config_files_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["run", "--config", str(path)]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["cuda-missing", "device-unknown", "empty-text", "dp-plain"])
def test_more_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    import torch

    flags = ["run", *_flags({**TINY, "rounds": 1}), "--backend", "plain", "--out", str(tmp_path / "o")]
    if case == "cuda-missing":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        flags += ["--device", "cuda"]
    elif case == "device-unknown":
        flags += ["--device", "tpu"]
    elif case == "empty-text":
        (tmp_path / "blank.txt").write_text("\n\n   \n\n")
        flags += ["--data", str(tmp_path / "blank.txt")]
    else:
        flags += ["--dp-epsilon", "2"]
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(flags))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and "error" in err[0]
