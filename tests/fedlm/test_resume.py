"""--save-every and --resume: a resumed run continues exactly where the interrupted one stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedlm.errors import InputError
from fedlm.loop import run
from tests.fedlm.helpers import tiny_config


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "aggregation_seconds"} for r in records]


def test_resuming_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    common = dict(backend="plain", server_opt="fedadam", dropout=0.3)
    whole = run(tiny_config(tmp_path / "whole", rounds=3, **common))
    cut = run(tiny_config(tmp_path / "cut", rounds=2, save_every=1, **common))
    checkpoint = tmp_path / "cut" / "run" / "checkpoints" / "round-2"
    assert (checkpoint / "state.json").is_file() and load_file(str(checkpoint / "global_state.safetensors"))
    assert _untimed(cut["rounds"]) == _untimed(whole["rounds"][:2])
    resumed = run(tiny_config(tmp_path / "resumed", rounds=3, resume=str(checkpoint), **common))
    assert _untimed(resumed["rounds"]) == _untimed(whole["rounds"])  # same samples, dropouts, losses, moments
    assert resumed["final_eval_loss"] == whole["final_eval_loss"]
    assert resumed["initial_eval_loss"] == whole["initial_eval_loss"]


def test_resume_refuses_another_configuration_or_a_finished_run(tmp_path: Path) -> None:
    run(tiny_config(tmp_path / "a", rounds=1, save_every=1, backend="plain"))
    checkpoint = str(tmp_path / "a" / "run" / "checkpoints" / "round-1")
    with pytest.raises(InputError, match="other values of .*lr"):
        run(tiny_config(tmp_path / "b", rounds=2, resume=checkpoint, backend="plain", lr=0.5))
    with pytest.raises(InputError, match="already has 1 rounds"):
        run(tiny_config(tmp_path / "c", rounds=1, resume=checkpoint, backend="plain"))
    with pytest.raises(InputError, match="not a fedlm checkpoint"):
        run(tiny_config(tmp_path / "d", rounds=2, resume=str(tmp_path), backend="plain"))


def test_resuming_keeps_every_clients_private_prompt_rows(tmp_path: Path) -> None:
    common = dict(mode="prompt", personal_tokens=2, backend="plain", lr=0.5)
    whole = run(tiny_config(tmp_path / "whole", rounds=2, **common))
    run(tiny_config(tmp_path / "cut", rounds=1, save_every=1, **common))
    checkpoint = tmp_path / "cut" / "run" / "checkpoints" / "round-1"
    resumed = run(tiny_config(tmp_path / "resumed", rounds=2, resume=str(checkpoint), **common))
    assert resumed["personalization"]["clients"] == [
        {**c, "prompt_file": c["prompt_file"].replace("/whole/", "/resumed/")}
        for c in whole["personalization"]["clients"]]
