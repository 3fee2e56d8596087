"""``--model DIR``: any local Hugging Face causal LM, loaded offline the way a user's checkpoint is.

The tests save tiny random-weight checkpoints of two architectures (Llama, GPT-2 with its Conv1D
layers), each with a tokenizer, into a temporary directory, and train from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fedlm.checkpoint import lora_targets
from fedlm.cli import main
from fedlm.errors import InputError
from fedlm.loop import run
from fedlm.tokenizer import train_tokenizer
from tests.fedlm.helpers import tiny_config

TEXT = ["def add(a, b):\n    return a + b", "The quick brown fox jumps over the lazy dog."] * 50


def _save(tmp_path: Path, arch: str, with_tokenizer: bool = True) -> Path:
    directory = tmp_path / arch
    tok = train_tokenizer(TEXT, 320)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(str(directory))
    if with_tokenizer:
        tok.save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_over_secagg_plus_from_a_local_checkpoint(tmp_path: Path, arch: str) -> None:
    directory = _save(tmp_path, arch)
    report = run(tiny_config(tmp_path, model=str(directory), mode="lora", backend="secagg+", rounds=3,
                             lr=5e-2))
    assert report["final_eval_loss"] < report["initial_eval_loss"]
    assert report["secure_equals_plain"] is True and report["config"]["model"] == str(directory)
    assert any(r["dropped"] for r in report["rounds"])  # dropouts happened on the way


def test_lora_targets_per_architecture(tmp_path: Path) -> None:
    llama = LlamaForCausalLM.from_pretrained(str(_save(tmp_path, "llama")), local_files_only=True)
    gpt2 = GPT2LMHeadModel.from_pretrained(str(_save(tmp_path, "gpt2")), local_files_only=True)
    assert lora_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lora_targets(gpt2) == ["c_attn", "c_fc", "c_proj"]  # Conv1D layers; never lm_head
    assert lora_targets(gpt2, ("c_attn",)) == ["c_attn"]
    with pytest.raises(InputError, match="match no linear layer"):
        lora_targets(gpt2, ("q_proj",))


def test_continued_pretraining_and_prompt_tuning_from_a_checkpoint(tmp_path: Path) -> None:
    directory = _save(tmp_path, "gpt2")
    full = run(tiny_config(tmp_path / "a", model=str(directory), mode="pretrain", backend="plain", rounds=2))
    assert full["final_eval_loss"] < full["initial_eval_loss"]
    prompt = run(tiny_config(tmp_path / "b", model=str(directory), mode="prompt", backend="secagg", rounds=1))
    assert prompt["secure_equals_plain"] is True


@pytest.mark.parametrize("case", ["no-dir", "no-config", "no-tokenizer", "bad-target", "too-long", "dtype-alone"])
def test_bad_checkpoint_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     case: str) -> None:
    flags = ["run", "--quiet", "--rounds", "1", "--clients", "3", "--clients-per-round", "3", "--local-steps", "1",
             "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--max-chars-per-domain", "20000",
             "--backend", "plain", "--out", str(tmp_path / "o")]
    if case == "no-dir":
        flags += ["--model", str(tmp_path / "missing")]
    elif case == "no-config":
        (tmp_path / "empty").mkdir()
        flags += ["--model", str(tmp_path / "empty")]
    elif case == "no-tokenizer":
        flags += ["--model", str(_save(tmp_path, "llama", with_tokenizer=False))]
    elif case == "bad-target":
        flags += ["--model", str(_save(tmp_path, "gpt2")), "--lora-targets", "q_proj"]
    elif case == "too-long":
        flags += ["--model", str(_save(tmp_path, "gpt2")), "--seq-len", "200"]
    else:
        flags += ["--dtype", "bfloat16"]
    with pytest.raises(SystemExit) as info:
        code = main(flags)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    assert ("error" in err[-1]) and len(err[-1]) < 400


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sft_from_a_local_checkpoint_with_lora_over_secagg_plus_and_dropouts(tmp_path: Path, arch: str) -> None:
    """The issue's command: fedlm run --model DIR --task sft --data instr.jsonl --mode lora --backend secagg+."""
    import json

    data = tmp_path / "instr.jsonl"
    rows = [{"prompt": f"colour of {w}?", "response": c, "task": "colour"} for w, c in
            [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")]] * 6
    rows += [{"instruction": "double", "input": str(i), "output": str(2 * i), "task": "math"} for i in range(24)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = run(tiny_config(tmp_path, model=str(_save(tmp_path, arch)), task="sft", data=(str(data),),
                             mode="lora", backend="secagg+", rounds=3, lr=5e-2, eval_examples=8, seq_len=48))
    assert any(r["dropped"] for r in report["rounds"])  # dropouts happened on the way
    for task, scores in report["final_task_eval"].items():
        assert scores["loss"] < report["initial_task_eval"][task]["loss"]  # held-out response loss falls
    assert report["secure_equals_plain"] is True
