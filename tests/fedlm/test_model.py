"""The uploaded state per mode, and loading it back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlm.model import (build_base_model, load_uploaded_state, parameter_count,
                         uploaded_state, wrap_for_mode)
from tests.fedlm.helpers import tiny_config


def _model(tmp_path: Path, **overrides: object) -> tuple[torch.nn.Module, object]:
    cfg = tiny_config(tmp_path, **overrides)
    torch.manual_seed(0)
    return wrap_for_mode(build_base_model(cfg, 320, 1, 0), cfg, 0), cfg


def test_default_size_is_about_one_million_parameters(tmp_path: Path) -> None:
    from fedlm.config import RunConfig

    total, trainable = parameter_count(build_base_model(RunConfig(), 1024, 1, 0))
    assert 0.8e6 < total < 1.3e6 and trainable == total


@pytest.mark.parametrize("mode, freeze_a, expect", [
    ("pretrain", None, "model.embed_tokens.weight"),
    ("lora", False, "lora_A"),
    ("lora", True, "lora_B"),
    ("prompt", None, "prompt_embeddings"),
])
def test_uploaded_state_per_mode(tmp_path: Path, mode: str, freeze_a: bool | None,
                                 expect: str) -> None:
    model, cfg = _model(tmp_path, mode=mode, freeze_a=freeze_a)
    state = uploaded_state(model, cfg)  # type: ignore[arg-type]
    assert any(expect in k for k in state)
    if freeze_a:
        assert not any("lora_A" in k for k in state)
        assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    if mode == "prompt":
        assert list(state) == ["prompt_embeddings"]
    assert all(v.dtype == torch.float32 for v in state.values())


@pytest.mark.parametrize("mode", ["pretrain", "lora", "prompt"])
def test_load_uploaded_state_round_trips(tmp_path: Path, mode: str) -> None:
    model, cfg = _model(tmp_path, mode=mode)
    state = uploaded_state(model, cfg)  # type: ignore[arg-type]
    shifted = {k: v + 0.5 for k, v in state.items()}
    load_uploaded_state(model, shifted)
    after = uploaded_state(model, cfg)  # type: ignore[arg-type]
    for k in state:
        torch.testing.assert_close(after[k], shifted[k])


def test_soft_prompt_starts_as_the_end_of_text_embedding(tmp_path: Path) -> None:
    model, cfg = _model(tmp_path, mode="prompt")
    prompt = uploaded_state(model, cfg)["prompt_embeddings"]  # type: ignore[arg-type]
    eos = model.get_input_embeddings().weight[0]  # type: ignore[operator]
    torch.testing.assert_close(prompt, eos.detach().expand_as(prompt))
