"""Personalised soft prompts: private rows never uploaded, kept across rounds, reported per client."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedlm.config import RunConfig
from fedlm.loop import run
from tests.fedlm.helpers import tiny_config


def test_personal_rows_stay_home_and_are_reported(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, mode="prompt", backend="secagg+", personal_tokens=2, rounds=3, dropout=0.0,
                      lr=0.5)
    report = run(cfg)
    shared, width = cfg.num_virtual_tokens, cfg.hidden_size
    assert report["model"]["uploaded_numel"] == shared * width  # only the shared rows are aggregated
    assert report["secure_equals_plain"] is True
    info = report["personalization"]
    assert info["clients_evaluated"] == cfg.clients and info["personal_tokens"] == 2
    for client in info["clients"]:
        rows = load_file(client["prompt_file"])["personal_prompt"]
        assert tuple(rows.shape) == (2, width)
        assert client["rounds_trained"] == 3  # every client sampled every round, private rows kept
        assert client["personal_loss"] != client["global_loss"]
    adapter = load_file(str(Path(report["artifacts"]["model"]) / "adapter_model.safetensors"))
    (prompt,) = adapter.values()
    assert prompt.shape[0] == shared + 2  # the global adapter: shared rows and the initial private ones


def test_personal_tokens_need_prompt_mode() -> None:
    with pytest.raises(ValueError, match="--mode prompt only"):
        RunConfig(mode="lora", personal_tokens=2)
