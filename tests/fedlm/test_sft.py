"""Instruction data: JSONL loading, the stdlib default set, formatting, the split, evaluation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedlm.corpus import STDLIB_DOMAINS
from fedlm.errors import InputError
from fedlm.samples import greedy
from fedlm.sft import (IGNORE_INDEX, MODULES, Example, collate, evaluate_sft, format_example,
                       load_sft_jsonl, prompt_ids, split_examples, stdlib_sft_examples)
from fedlm.tokenizer import EOS, train_tokenizer

TEXT = ["### Instruction:\nName the function documented as:\nReturn the value.\n### Response:\n"
        "sleep", "The quick brown fox jumps over the lazy dog and the cat.",
        "Which area is this docstring from (web, concurrency, numeric or text)?"] * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + EOS
                 + "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXT, vocab_size=300)


def tiny_model(tokenizer: PreTrainedTokenizerFast, hidden: int = 16, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# --- loading -----------------------------------------------------------------------------------

def test_load_sft_jsonl_reads_both_layouts_and_defaults_the_task(tmp_path: Path) -> None:
    plain = write_lines(tmp_path / "qa.jsonl", [
        json.dumps({"prompt": "2+2?", "response": "4"}), "",
        json.dumps({"prompt": "Capital of France?", "response": "Paris", "task": "geo"})])
    alpaca = write_lines(tmp_path / "alpaca.jsonl", [
        json.dumps({"instruction": "Translate", "input": "chat", "output": "cat"}),
        json.dumps({"instruction": "Say hi", "input": "", "output": "hi", "task": "greet"}),
        json.dumps({"instruction": "Say bye", "output": "bye"})])
    assert load_sft_jsonl([plain, alpaca]) == [
        Example("2+2?", "4", "qa"), Example("Capital of France?", "Paris", "geo"),
        Example("Translate\n\nchat", "cat", "alpaca"), Example("Say hi", "hi", "greet"),
        Example("Say bye", "bye", "alpaca")]


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "a", "response": ', "invalid JSON"),
    ('["prompt", "response"]', "expected a JSON object"),
    ('{"prompt": "a"}', "missing 'response'"),
    ('{"instruction": "a", "input": "b"}', "missing 'output'"),
    ('{"prompt": 3, "response": "x"}', "'prompt' must be a string"),
    ('{"instruction": "a", "input": 1, "output": "x"}', "'input' must be a string"),
    ('{"prompt": "a", "response": "x", "task": 2}', "'task' must be a string"),
    ('{"prompt": "  ", "response": "x"}', "empty 'prompt'"),
    ('{"prompt": "a", "response": ""}', "empty 'response'"),
    ('{"instruction": "", "output": "x"}', "empty 'instruction'"),
    ('{"text": "a"}', "expected 'prompt' and 'response'"),
])
def test_load_sft_jsonl_names_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "response": "ok"}), "", line])
    with pytest.raises(InputError) as err:
        load_sft_jsonl([path])
    assert f"bad.jsonl:3: {reason}" in str(err.value)


def test_load_sft_jsonl_rejects_missing_files_and_empty_data(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.jsonl: cannot read"):
        load_sft_jsonl([str(tmp_path / "nowhere.jsonl")])
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "\xe9"}\n')
    with pytest.raises(InputError, match="latin.jsonl: not UTF-8"):
        load_sft_jsonl([str(tmp_path / "latin.jsonl")])
    blank = write_lines(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(InputError, match="no examples in .*blank.jsonl"):
        load_sft_jsonl([blank])


# --- the stdlib default set ------------------------------------------------------------------

def test_stdlib_examples_are_seeded_balanced_and_short() -> None:
    examples = stdlib_sft_examples(max_per_task=80, seed=1, max_chars_per_domain=20_000)
    assert examples == stdlib_sft_examples(max_per_task=80, seed=1, max_chars_per_domain=20_000)
    by_task = Counter(e.task for e in examples)
    assert set(by_task) == {"domain", "module"} and max(by_task.values()) <= 80
    domains = Counter(e.response for e in examples if e.task == "domain")
    assert set(domains) == set(STDLIB_DOMAINS) and len(set(domains.values())) == 1
    modules = Counter(e.response for e in examples if e.task == "module")
    assert set(modules) == set(MODULES.values()) and len(set(modules.values())) == 1  # baseline 1/6
    for e in examples:
        if e.task == "module":
            assert e.response not in e.prompt.split("\n", 1)[1].lower()
    assert all(len(e.prompt.split("\n", 1)[1]) <= 160 for e in examples)


# --- formatting ------------------------------------------------------------------------------

def test_format_example_takes_the_loss_on_the_response_and_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    example = Example("Return the value.", "sleep", "name")
    ids, labels = format_example(tokenizer, example, max_len=64)
    prefix = (encode(tokenizer, "### Instruction:\n") + encode(tokenizer, "Return the value.")
              + encode(tokenizer, "\n### Response:\n"))
    response = encode(tokenizer, "sleep") + [tokenizer.eos_token_id]
    assert ids == prefix + response
    assert labels == [IGNORE_INDEX] * len(prefix) + response
    assert prompt_ids(tokenizer, example.prompt, 64) == prefix


def test_format_example_cuts_the_prompt_from_the_left(tokenizer: PreTrainedTokenizerFast) -> None:
    example = Example("one two three four five six seven eight nine ten " * 3 + "END", "sleep", "t")
    full, _ = format_example(tokenizer, example, max_len=200)
    ids, labels = format_example(tokenizer, example, max_len=30)
    response = encode(tokenizer, "sleep") + [tokenizer.eos_token_id]
    assert len(ids) == 30 < len(full)
    assert ids[-len(response):] == response == labels[-len(response):]
    assert labels[: 30 - len(response)] == [IGNORE_INDEX] * (30 - len(response))
    assert ids[:4] == full[:4]  # the template's head stays
    assert "END" in tokenizer.decode(ids) and "one two" not in tokenizer.decode(ids)
    assert prompt_ids(tokenizer, example.prompt, 30 - len(response)) == ids[: 30 - len(response)]
    with pytest.raises(InputError, match="no room for the prompt in max_len=12"):
        format_example(tokenizer, Example("a", "The quick brown fox jumps", "t"), max_len=12)


def test_format_example_uses_the_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = CHAT_TEMPLATE
    ids, labels = format_example(tokenizer, Example("2+2?", "4", "t"), max_len=64)
    prefix = (encode(tokenizer, "<|user|>") + encode(tokenizer, "2+2?")
              + encode(tokenizer, EOS + "<|assistant|>"))
    response = encode(tokenizer, "4") + [tokenizer.eos_token_id]
    assert ids == prefix + response
    assert labels == [IGNORE_INDEX] * len(prefix) + response
    generation = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}],
                                               tokenize=False, add_generation_prompt=True)
    assert prompt_ids(tokenizer, "2+2?", 64) == encode(tokenizer, str(generation))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(InputError, match="chat template does not write"):
        format_example(tokenizer, Example("2+2?", "4", "t"), max_len=64)


def test_collate_pads_on_the_right() -> None:
    ids, labels, mask = collate([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert labels.tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        collate([([1, 2], [1])], pad_id=0)


# --- the split -------------------------------------------------------------------------------

def test_split_examples_holds_out_per_task_and_skews_clients() -> None:
    examples = [Example(f"{task} {i}", str(i % 3), task) for task in "abcd" for i in range(50)]
    clients, heldout = split_examples(examples, clients=4, alpha=0.05, seed=3)
    assert sorted(heldout) == list("abcd") and all(len(v) == 5 for v in heldout.values())
    placed = [e for c in clients for e in c] + [e for v in heldout.values() for e in v]
    assert Counter(placed) == Counter(examples)
    assert all(clients)
    assert split_examples(examples, 4, 0.05, 3) == (clients, heldout)
    iid, _ = split_examples(examples, 4, 1000.0, 3)

    def purity(parts: list[list[Example]]) -> float:
        """Mean share of each client's most common task."""
        return sum(max(Counter(e.task for e in c).values()) / len(c) for c in parts) / len(parts)

    assert len({frozenset(e.task for e in c) for c in clients}) > 1
    assert all({e.task for e in c} == set("abcd") for c in iid)
    assert purity(clients) > purity(iid) + 0.3
    with pytest.raises(InputError, match="cannot cover 400 clients"):
        split_examples(examples, clients=400, alpha=1.0, seed=0)


# --- evaluation ------------------------------------------------------------------------------

def test_evaluate_sft_reports_every_field(tokenizer: PreTrainedTokenizerFast) -> None:
    heldout = {"yn": [Example("first", "yes", "yn"), Example("second", " yes ", "yn"),
                      Example("third", "no", "yn")],
               "empty": [], "one": [Example("x", "y", "one")]}
    model = tiny_model(tokenizer)
    model.train()
    metrics = evaluate_sft(model, tokenizer, heldout, max_len=48, batch_size=2)
    assert sorted(metrics) == ["one", "yn"] and model.training
    assert metrics["yn"]["majority_baseline"] == pytest.approx(2 / 3)
    assert metrics["yn"]["examples"] == 3 and metrics["one"]["majority_baseline"] == 1.0
    for values in metrics.values():
        assert 0 <= values["accuracy"] <= 1 and values["loss"] > 0
    assert evaluate_sft(model, tokenizer, heldout, 48, 2, limit=1)["yn"]["examples"] == 1


def reference_greedy(model: torch.nn.Module, prefix: list[int], steps: int, stops: set[int]) -> list[int]:
    """One prompt at a time, no padding: the loop of fedlm/samples.py."""
    ids = list(prefix)
    for _ in range(steps):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] in stops:
            break
    return ids[len(prefix):]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("kind", ["plain", "prompt-tuning", "chat"])
def test_batched_evaluation_equals_one_at_a_time(tokenizer: PreTrainedTokenizerFast, kind: str) -> None:
    model: torch.nn.Module = tiny_model(tokenizer, seed=1)
    if kind == "prompt-tuning":
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
    if kind == "chat":
        tokenizer.chat_template = CHAT_TEMPLATE
    prompts = ["a", "the lazy dog jumps", "Return", "fox and the cat over"]
    heldout = {"t": [Example(p, "quick brown", "t") for p in prompts]}
    one = evaluate_sft(model, tokenizer, heldout, max_len=40, batch_size=1, max_new_tokens=5)
    four = evaluate_sft(model, tokenizer, heldout, max_len=40, batch_size=4, max_new_tokens=5)
    assert one["t"]["loss"] == pytest.approx(four["t"]["loss"], rel=1e-4)
    assert one["t"]["accuracy"] == four["t"]["accuracy"]
    prefixes = [prompt_ids(tokenizer, p, 40) for p in prompts]
    stops = set(tokenizer.all_special_ids)
    model.eval()  # ok: torch Module.eval(), not Python eval
    with torch.no_grad():
        batched = greedy(model, prefixes, [6, 6, 2, 6], tokenizer.pad_token_id,
                          torch.tensor(sorted(stops)), torch.device("cpu"))
        assert batched == [reference_greedy(model, p, s, stops) for p, s in zip(prefixes, [6, 6, 2, 6])]


def test_sft_training_learns_a_trivial_task(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = [Example("a", "x", "map"), Example("b", "y", "map")]
    model = tiny_model(tokenizer, hidden=32)
    ids, labels, mask = collate([format_example(tokenizer, e, 32) for e in examples],
                                tokenizer.pad_token_id)
    before = evaluate_sft(model, tokenizer, {"map": examples}, max_len=32, batch_size=2)["map"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels, attention_mask=mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate_sft(model, tokenizer, {"map": examples}, max_len=32, batch_size=2)["map"]
    assert after["accuracy"] == 1.0 and after["majority_baseline"] == 0.5
    # The decoding budget always covers the reference and its EOS.
    assert evaluate_sft(model, tokenizer, {"map": examples}, 32, 2, max_new_tokens=1)["map"]["accuracy"] == 1.0
    assert after["loss"] < 0.1 < before["loss"]
