"""End-to-end runs: every mode and every backend, with dropouts, on a tiny model.

Each run asserts that held-out loss falls, that dropouts were injected and the
round finished with the survivors, and that a secure backend's average equals
plain FedAvg of the same survivors within the reported error bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from safetensors.torch import load_file

from fedlm.loop import run
from tests.fedlm.helpers import tiny_config

ROUND_FIELDS = {"round", "survivors", "dropped", "train_loss", "eval_loss",
                "bytes_up_per_client", "aggregation_seconds", "max_abs_diff_vs_plain",
                "error_bound", "aborted"}


def _check_report(report: dict[str, Any], mode: str, backend: str) -> None:
    """Assertions common to every completed run."""
    assert (report["mode"], report["backend"], report["engine"]) == (mode, backend, "in-memory")
    assert report["final_eval_loss"] < report["initial_eval_loss"]
    if backend == "plain":  # plain FedAvg against itself checks nothing: the report says so
        assert report["secure_equals_plain"] is None
    else:
        assert any(not r["aborted"] for r in report["rounds"])
        assert report["secure_equals_plain"] is True
        assert report["max_abs_diff_vs_plain"] <= report["error_bound"] + report["float32_slack"]
    for rec in report["rounds"]:
        assert ROUND_FIELDS <= set(rec)
        assert set(rec["eval_loss"]) == set(report["data"]["domains"])
        for drop in rec["dropped"]:
            assert set(drop) == {"client", "stage"}
            assert drop["client"] in rec["sampled"]
    assert any(rec["dropped"] for rec in report["rounds"]), "dropouts must be injected"
    assert json.loads(Path(report["artifacts"]["report"]).read_text())["mode"] == mode
    for plot in report["artifacts"]["plots"]:
        assert Path(plot).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("mode", ["pretrain", "lora", "prompt"])
def test_each_mode_over_plain(tmp_path: Path, mode: str) -> None:
    # Two rounds of three steps barely move a soft prompt: a smaller step keeps it on the descent.
    extra = {"lr": 0.05} if mode == "prompt" else {}
    report = run(tiny_config(tmp_path, mode=mode, backend="plain", **extra))
    _check_report(report, mode, "plain")
    weights = "model.safetensors" if mode == "pretrain" else "adapter_model.safetensors"
    saved = load_file(str(Path(report["artifacts"]["model"]) / weights))
    assert saved


@pytest.mark.parametrize("mode, backend", [
    ("lora", "secagg"), ("prompt", "secagg+"), ("lora", "ckks"), ("pretrain", "secagg+"),
])
def test_secure_backends_equal_plain_within_bound(
        tmp_path: Path, secagg_module: ModuleType, mode: str, backend: str) -> None:
    # Five clients per round, so that a protocol threshold above two still
    # leaves rounds that complete despite the injected dropouts.
    report = run(tiny_config(tmp_path, mode=mode, backend=backend, clients=5,
                             clients_per_round=5))
    _check_report(report, mode, backend)
    stages = set(secagg_module.DROPOUT_STAGES[backend])
    assert {d["stage"] for r in report["rounds"] for d in r["dropped"]} <= stages
    done = [r for r in report["rounds"] if not r["aborted"]]
    assert done and all(r["error_bound"] > 0 for r in done)


def test_same_seed_drops_the_same_clients_on_every_backend(
        tmp_path: Path, secagg_module: ModuleType) -> None:
    plain = run(tiny_config(tmp_path / "p", backend="plain", rounds=1, warmup_steps=0))
    secure = run(tiny_config(tmp_path / "s", backend="ckks", rounds=1, warmup_steps=0))
    assert ({d["client"] for d in plain["rounds"][0]["dropped"]}
            == {d["client"] for d in secure["rounds"][0]["dropped"]})
    assert plain["initial_eval_loss"] == secure["initial_eval_loss"]


def test_round_with_too_few_survivors_is_aborted_and_skipped(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, backend="plain", dropout=0.99, rounds=1))
    rec = report["rounds"][0]
    assert rec["aborted"] is True and report["aborted_rounds"] == 1
    assert rec["survivors"] == [] and len(rec["dropped"]) == len(rec["sampled"])
    assert rec["bytes_up_per_client"] is None and rec["max_abs_diff_vs_plain"] is None
    assert rec["eval_loss_mean"] == pytest.approx(report["initial_eval_loss"])
    assert report["secure_equals_plain"] is None  # no round completed: nothing was checked


def test_lora_under_dp_defaults_to_ffa_and_uploads_only_b(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, mode="lora", backend="secagg", dp_epsilon=50.0,
                             dp_l2_clip=0.05, rounds=1))
    assert report["config"]["freeze_a"] is True
    saved = load_file(str(Path(report["artifacts"]["model"]) / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in saved)
    assert report["model"]["uploaded_numel"] == sum(
        v.numel() for k, v in saved.items() if "lora_B" in k)


def test_user_data_files(tmp_path: Path) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    files = []
    for domain in ("north", "south"):
        path = tmp_path / f"{domain}.txt"
        path.write_text("\n\n".join(f"{domain} " + " ".join(words[i % 7:i % 7 + 5]) * 3
                                    for i in range(40)), encoding="utf-8")
        files.append(str(path))
    report = run(tiny_config(tmp_path, backend="plain", data=tuple(files), rounds=1))
    assert report["data"]["domains"] == ["north", "south"]


def test_report_shows_generations_before_and_after_training(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, mode="pretrain", backend="plain", rounds=2, lr=2e-2))
    samples = report["samples"]
    assert {s["domain"] for s in samples} == set(report["data"]["domains"])
    assert all(s["prompt"] and isinstance(s["before"], str) and isinstance(s["after"], str) for s in samples)
    assert any(s["before"] != s["after"] for s in samples)  # training changed what the model writes
