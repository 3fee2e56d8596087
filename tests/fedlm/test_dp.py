"""fedlm under distributed DP: the accountant's epsilon after every round, the budget respected."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedlm.client import clip_l2
from fedlm.loop import run

from .helpers import tiny_config


def test_clip_l2_scales_the_whole_delta_to_the_bound() -> None:
    delta = {"a": torch.full((30, 10), 2.0), "b": torch.full((5,), -3.0)}
    clipped, fraction = clip_l2(delta, 1.5)
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in clipped.values()))
    assert norm == pytest.approx(1.5) and fraction == 1.0
    assert torch.allclose(clipped["a"] / clipped["a"][0, 0], torch.ones(30, 10))  # direction kept
    small = {"a": torch.full((4,), 0.1)}
    assert clip_l2(small, 1.5) == (small, 0.0)


def test_a_dp_run_reports_epsilon_every_round_within_the_target(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, backend="secagg+", dp_epsilon=8.0, rounds=3, dropout=0.0))
    dp = report["dp"]
    assert dp["mechanism"] == "ddgauss" and dp["delta"] == 1e-5 and dp["stopped"] is None
    assert dp["bits"] <= 32 and dp["noise_multiplier"] > 0
    spent = [r["epsilon"] for r in report["rounds"]]
    assert len(spent) == 3 and all(a < b for a, b in zip(spent, spent[1:]))  # composition grows
    assert 0 < spent[-1] == dp["epsilon"] == report["epsilon"] <= 8.0
    for record in report["rounds"]:  # functions of the noiseless deltas are withheld under DP
        assert record["max_abs_diff_vs_plain"] is record["train_loss"] is record["clipped_fraction"] is None
    assert report["secure_equals_plain"] is None and report["max_abs_diff_vs_plain"] is None
    ledger = json.loads((Path(report["artifacts"]["report"]).parent / "dp_ledger.json").read_text())
    assert [e["honest"] for e in ledger] == [len(r["survivors"]) for r in report["rounds"]]  # no corrupt at n=3
    assert report["config"]["freeze_a"] is True  # LoRA (the default mode) under DP: FFA-LoRA


def test_a_dp_run_stops_before_the_round_that_would_exceed_the_target(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, backend="secagg", dp_epsilon=8.0, dp_rounds=2, rounds=5,
                             dropout=0.0))
    dp = report["dp"]
    assert len(report["rounds"]) == 2 and "stopped before round 3" in dp["stopped"]
    assert dp["epsilon"] <= 8.0 and dp["planned_rounds"] == 2


def test_a_resumed_dp_run_keeps_its_plan_and_charges_every_release(tmp_path: Path) -> None:
    """Red-team finding: resuming with more --rounds re-planned the noise and charged the earlier
    rounds at the new, larger noise; releases after the last checkpoint were never charged."""
    from fedlm.errors import InputError

    base = dict(backend="secagg", dp_epsilon=8.0, dropout=0.0)
    first = run(tiny_config(tmp_path, rounds=2, save_every=1, **base))
    checkpoint = Path(first["artifacts"]["report"]).parent / "checkpoints" / "round-1"
    with pytest.raises(InputError, match="dp_rounds"):  # --rounds 3 would re-plan for 3 rounds
        run(tiny_config(tmp_path, rounds=3, resume=str(checkpoint), **base))
    resumed = run(tiny_config(tmp_path, rounds=3, dp_rounds=2, resume=str(checkpoint), **base))
    # Round 2 was released by the first run after its checkpoint, and again by the resumed one:
    # both count, so the third release does not fit a 2-round plan's budget.
    assert resumed["dp"]["stopped"] is not None and len(resumed["rounds"]) == 1
    assert resumed["dp"]["epsilon"] >= first["dp"]["epsilon"]


def test_dp_defaults_apply_only_to_what_the_user_did_not_set() -> None:
    from fedlm.cli import build_parser, config_from_args, explicit_fields

    argv = ["run", "--dp-epsilon", "8"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.clients, cfg.clients_per_round, cfg.backend) == ("prompt", 30, 30, "secagg+")
    argv = ["run", "--dp-epsilon", "8", "--mode", "lora", "--clients-per-round=4"]
    cfg = config_from_args(build_parser({"clients": 12}).parse_args(argv), explicit_fields(argv, {"clients": 12}))
    assert (cfg.mode, cfg.clients, cfg.clients_per_round) == ("lora", 12, 4)
    argv = ["run"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.clients, cfg.clients_per_round) == ("lora", 10, 5)


def test_the_summary_prints_a_dp_run_without_the_withheld_fields(tmp_path: Path) -> None:
    from rich.console import Console

    from fedlm.cli import print_summary

    report = run(tiny_config(tmp_path, backend="secagg", dp_epsilon=8.0, rounds=1, dropout=0.0))
    console = Console(record=True, width=200)
    print_summary(console, report)
    text = console.export_text()
    assert "distributed DP: epsilon" in text and "noise/signal" in text


def test_sft_defaults_apply_only_to_what_the_user_did_not_set() -> None:
    from fedlm.cli import build_parser, config_from_args, explicit_fields

    argv = ["run", "--task", "sft"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.lr, cfg.local_steps) == ("full", 1e-3, 20)
    argv = ["run", "--task", "sft", "--mode", "prompt"]  # the rate and steps go with the mode
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.lr, cfg.local_steps) == ("prompt", None, 10)
    argv = ["run", "--task", "sft", "--local-steps", "5"]
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.lr, cfg.local_steps) == ("full", 1e-3, 5)
    argv = ["run", "--task", "sft", "--dp-epsilon", "8"]  # DP's mode with its own rate
    cfg = config_from_args(build_parser().parse_args(argv), explicit_fields(argv, None))
    assert (cfg.mode, cfg.lr) == ("prompt", None)
