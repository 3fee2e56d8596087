"""RunConfig validation and resolved defaults."""

from __future__ import annotations

import pytest

from fedlm.config import DEFAULT_LR, RunConfig


@pytest.mark.parametrize("overrides, fragment", [
    ({"mode": "finetune"}, "mode="),
    ({"task": "sft", "mode": "pretrain"}, "use --mode full"),
    ({"task": "qa"}, "task="),
    ({"backend": "tls"}, "backend="),
    ({"clients_per_round": 11, "clients": 10}, "clients_per_round=11 > clients=10"),
    ({"dropout": 1.0}, "dropout="),
    ({"dirichlet_alpha": 0.0}, "dirichlet_alpha="),
    ({"rounds": 0}, "rounds=0"),
    ({"hidden_size": 30, "num_heads": 4}, "divisible"),
    ({"freeze_a": True, "mode": "prompt"}, "freeze_a"),
    ({"data": ("corpus.csv",)}, ".txt or .jsonl"),
    ({"clip_bound": -1.0}, "clip_bound"),
    ({"vocab_size": 100}, "vocab_size"),
])
def test_invalid_configs_name_the_relation(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        RunConfig(**overrides)  # type: ignore[arg-type]


def test_defaults_are_valid_and_frozen() -> None:
    cfg = RunConfig()
    assert cfg.dropout > 0, "a plain run must show dropouts"
    with pytest.raises(AttributeError):
        cfg.rounds = 3  # type: ignore[misc]


def test_ffa_lora_is_default_exactly_under_dp() -> None:
    assert RunConfig(mode="lora").resolved_freeze_a is False
    dp = {"dp_epsilon": 8.0, "backend": "secagg"}
    assert RunConfig(mode="lora", **dp).resolved_freeze_a is True
    assert RunConfig(mode="lora", freeze_a=False, **dp).resolved_freeze_a is False
    assert RunConfig(mode="lora", freeze_a=True).resolved_freeze_a is True
    assert RunConfig(mode="prompt", **dp).resolved_freeze_a is False


def test_clip_bound_defaults_to_steps_times_lr() -> None:
    for mode, lr in DEFAULT_LR.items():
        cfg = RunConfig(mode=mode, local_steps=4)
        assert cfg.resolved_lr == lr
        assert cfg.resolved_clip_bound == pytest.approx(4 * lr)
    assert RunConfig(clip_bound=0.5).resolved_clip_bound == 0.5
    assert RunConfig(dp_epsilon=1.0, backend="secagg", dp_l2_clip=0.1).resolved_clip_bound == pytest.approx(0.1)


def test_dp_needs_a_masking_backend_and_sane_targets() -> None:
    for backend in ("plain", "ckks"):
        with pytest.raises(ValueError, match="secagg or secagg\\+"):
            RunConfig(dp_epsilon=2.0, backend=backend)
    for bad in ({"dp_epsilon": 0.0}, {"dp_epsilon": 2.0, "dp_delta": 1.0}, {"dp_epsilon": 2.0, "dp_rounds": 0}):
        with pytest.raises(ValueError):
            RunConfig(backend="secagg", **bad)
    assert RunConfig(dp_epsilon=2.0, backend="secagg+", rounds=7).resolved_dp_rounds == 7


def test_to_dict_has_resolved_values() -> None:
    data = RunConfig(mode="prompt", out="x").to_dict()
    assert data["lr"] == DEFAULT_LR["prompt"]
    assert data["report"].endswith("report.json")
    assert data["data"] == []


def test_dp_refuses_personal_prompts_and_pins_its_plan_in_the_config() -> None:
    with pytest.raises(ValueError, match="personal-tokens"):
        RunConfig(dp_epsilon=2.0, backend="secagg", mode="prompt", personal_tokens=2)
    assert RunConfig(dp_epsilon=2.0, backend="secagg", rounds=6).to_dict()["dp_rounds"] == 6
    assert RunConfig(rounds=6).to_dict()["dp_rounds"] is None
