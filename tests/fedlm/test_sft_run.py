"""``--task sft`` end to end: instruction data over secure aggregation, per-task evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlm.loop import run
from tests.fedlm.helpers import tiny_config


def test_sft_on_user_jsonl_with_lora_over_secagg(tmp_path: Path) -> None:
    data = tmp_path / "instr.jsonl"
    rows = [{"prompt": f"colour of {w}?", "response": c, "task": "colour"} for w, c in
            [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")]] * 6
    rows += [{"instruction": "double", "input": str(i), "output": str(2 * i), "task": "math"} for i in range(24)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = run(tiny_config(tmp_path, task="sft", data=(str(data),), mode="lora", backend="secagg",
                             rounds=2, eval_examples=8, dropout=0.0))
    assert report["task"] == "sft" and set(report["final_task_eval"]) == {"colour", "math"}
    for task, scores in report["final_task_eval"].items():
        assert 0 <= scores["accuracy"] <= 1 and scores["examples"] >= 1
        assert scores["loss"] < report["initial_task_eval"][task]["loss"]  # response loss falls
    assert all("task_eval" in r for r in report["rounds"])
    assert report["secure_equals_plain"] is True
    assert any(p.endswith("accuracy.png") and Path(p).is_file() for p in report["artifacts"]["plots"])


def test_sft_full_fine_tuning_and_personal_prompts_on_the_default_data(tmp_path: Path) -> None:
    full = run(tiny_config(tmp_path / "f", task="sft", mode="full", backend="plain", rounds=1, seq_len=64,
                           eval_examples=4, sft_examples=8))
    assert set(full["final_task_eval"]) == {"domain", "module"}
    prompt = run(tiny_config(tmp_path / "p", task="sft", mode="prompt", personal_tokens=2, backend="plain", seq_len=64,
                             rounds=1, eval_examples=4, sft_examples=8))
    client = prompt["personalization"]["clients"][0]
    assert {"global_loss", "personal_loss", "global_accuracy", "personal_accuracy"} <= set(client)


def test_sft_refuses_text_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jsonl files only"):
        tiny_config(tmp_path, task="sft", data=("notes.txt",))
