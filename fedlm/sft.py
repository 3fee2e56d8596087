"""Supervised instruction data (SFT): loading, an offline default set, formatting and evaluation.

An :class:`Example` is a prompt, a short response and the task it belongs to. Examples come from
the user's JSONL files (:func:`load_sft_jsonl`) or, offline, from the installed standard library
(:func:`stdlib_sft_examples`: which domain a docstring is from, and which function it documents).
:func:`format_example` turns an example into token ids and labels that take the loss on the
response only; :func:`split_examples` holds out evaluation examples per task and spreads the rest
over clients with the same Dirichlet split as the LM corpus; :func:`evaluate_sft` reports, per task,
the held-out response loss, the exact-match accuracy of greedy answers and the majority baseline.
"""

from __future__ import annotations

import ast
import json
import random  # ok: data shuffling, not a secret
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedlm.corpus import _module_files, dirichlet_split, stdlib_documents
from fedlm.errors import InputError
from fedlm.samples import greedy

__all__ = ["Example", "load_sft_jsonl", "stdlib_sft_examples", "format_example", "prompt_ids",
           "collate", "split_examples", "evaluate_sft", "IGNORE_INDEX", "PLAIN_TEMPLATE"]

#: Label of positions that take no loss (the prompt and padding), as in ``torch.nn.CrossEntropyLoss``.
IGNORE_INDEX = -100
#: The prompt layout used when the tokenizer has no chat template; the response and EOS follow it.
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n### Response:\n"
DOMAIN_QUESTION = "Which area is this docstring from (web, concurrency, numeric or text)?\n"
MODULES = {"email": "email", "asyncio": "asyncio", "_pydecimal": "decimal", "ipaddress": "ipaddress",
           "http": "http", "datetime": "datetime"}
"""The "module" task's modules (source package -> the answer): each has 50+ documented functions."""
MODULE_QUESTION = "Which module is this function from (email, asyncio, decimal, ipaddress, http or datetime)?\n"
SENTENCE_CHARS = 160
MIN_SENTENCE_CHARS = 20
# Private-use characters: no chat template or user text is expected to contain them.
_USER_SLOT = "\ue000fedlm-prompt\ue001"
_ASSISTANT_SLOT = "\ue002fedlm-response\ue003"


@dataclass(frozen=True)
class Example:
    """One instruction example.

    Attributes:
        prompt: What the model is given.
        response: The expected answer (exact match is scored after ``strip()``).
        task: The task it belongs to (held-out metrics and the client split are per task).
    """

    prompt: str
    response: str
    task: str


def _string_field(record: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    """``record[key]`` as a string; raises InputError naming ``where`` if absent or mistyped."""
    if key not in record or record[key] is None:
        if required:
            raise InputError(f"{where}: missing {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _parse_record(record: Any, where: str, default_task: str) -> Example:
    """One JSONL record in either layout as an Example (raises InputError naming ``where``)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt" in record or "response" in record:
        fields = {key: _string_field(record, key, where) for key in ("prompt", "response")}
        prompt, response = fields["prompt"], fields["response"]
    elif "instruction" in record or "output" in record:
        fields = {key: _string_field(record, key, where) for key in ("instruction", "output")}
        extra = _string_field(record, "input", where, required=False)
        prompt = f"{fields['instruction']}\n\n{extra}" if extra.strip() else fields["instruction"]
        response = fields["output"]
    else:
        raise InputError(f"{where}: expected 'prompt' and 'response' keys "
                         "(or 'instruction', optional 'input', and 'output')")
    for key, value in fields.items():
        if not value.strip():
            raise InputError(f"{where}: empty {key!r}")
    task = _string_field(record, "task", where, required=False) or default_task
    if not task.strip():
        raise InputError(f"{where}: empty 'task'")
    return Example(prompt=prompt, response=response, task=task)


def load_sft_jsonl(paths: Sequence[str]) -> list[Example]:
    """Reads instruction examples from JSONL files, one JSON object per line.

    Two layouts are accepted: ``{"prompt", "response", "task"?}`` and the common
    ``{"instruction", "input"?, "output", "task"?}``, whose prompt is the instruction followed, when
    the input is non-empty, by a blank line and the input. The task defaults to the file's stem.
    Blank lines are skipped.

    Returns:
        The examples, in file and line order.

    Raises:
        InputError: for an unreadable file, invalid JSON, a line that is not an object, a missing,
            non-string or empty field (the message starts with ``file:line``), or no examples at all.
    """
    examples: list[Example] = []
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot read SFT data ({exc.strerror or exc})") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            examples.append(_parse_record(record, where, path.stem))
    if not examples:
        raise InputError(f"no examples in {', '.join(map(str, paths)) or 'the SFT data (no files)'}")
    return examples


def _first_sentence(doc: str) -> str:
    """The docstring's first sentence on one line, cut to ``SENTENCE_CHARS`` at a word boundary."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    end = re.search(r"[.!?](?=\s|$)", paragraph)
    sentence = paragraph[: end.end()] if end else paragraph
    if len(sentence) > SENTENCE_CHARS:
        sentence = sentence[:SENTENCE_CHARS].rsplit(" ", 1)[0]
    return sentence


def _function_docs(path: Path) -> Iterator[tuple[str, str]]:
    """(name, docstring) of every documented function in one source file.

    :func:`fedlm.corpus._docstrings` yields docstrings without the names they document, so the
    name task parses the file itself.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield node.name, doc


def _unambiguous(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Distinct (prompt text, answer) pairs, dropping any text that has more than one answer."""
    answers: dict[str, set[str]] = {}
    for text, answer in pairs:
        answers.setdefault(text, set()).add(answer)
    return [(text, next(iter(a))) for text, a in answers.items() if len(a) == 1]


def _balanced(pairs: Sequence[tuple[str, str]], answers: Sequence[str], max_per_task: int, question: str,
              task: str, rng: random.Random) -> list[Example]:
    """Unambiguous (sentence, answer) pairs as ``task`` examples, exactly as many of each answer
    (so the majority baseline is 1/len(answers)), in shuffled order."""
    kept = _unambiguous(pairs)
    by_answer = {a: sorted(s for s, b in kept if b == a) for a in answers}
    per_answer = min(max_per_task // len(by_answer), *(len(s) for s in by_answer.values()))
    chosen: list[Example] = []
    for answer, texts in by_answer.items():
        rng.shuffle(texts)  # ok: data shuffling, not a secret
        chosen.extend(Example(question + t, answer, task) for t in texts[:per_answer])
    rng.shuffle(chosen)  # ok: data shuffling, not a secret
    return chosen


def _domain_examples(max_per_task: int, max_chars_per_domain: int,
                     rng: random.Random) -> list[Example]:
    """The "domain" task, with exactly as many examples of each of the four domains."""
    documents = stdlib_documents(max_chars_per_domain)
    sentences = [(_first_sentence(doc), domain) for domain in sorted(documents)
                 for doc in documents[domain]]
    pairs = [(s, d) for s, d in sentences if len(s) >= MIN_SENTENCE_CHARS]
    return _balanced(pairs, sorted(documents), max_per_task, DOMAIN_QUESTION, "domain", rng)


def _module_examples(max_per_task: int, rng: random.Random) -> list[Example]:
    """The "module" task: the first sentence of a function's docstring -> its module (one of
    :data:`MODULES`, the module's name not in the sentence), every module equally frequent."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pairs: list[tuple[str, str]] = []
    for source, answer in MODULES.items():
        for _, doc in (pair for f in _module_files(stdlib, source) for pair in _function_docs(f)):
            sentence = _first_sentence(doc)
            if len(sentence) >= MIN_SENTENCE_CHARS and answer not in sentence.lower():
                pairs.append((sentence, answer))
    return _balanced(pairs, list(MODULES.values()), max_per_task, MODULE_QUESTION, "module", rng)


def stdlib_sft_examples(max_per_task: int, seed: int,
                        max_chars_per_domain: int = 150_000) -> list[Example]:
    """An offline instruction data set made from the installed standard library's docstrings.

    Two tasks with short answers, so exact match is meaningful: ``"domain"``, the first sentence
    of a docstring (from :func:`fedlm.corpus.stdlib_documents`) -> its domain, with every domain
    equally frequent (majority baseline 25%); ``"module"``, the first sentence of a function's
    docstring -> which of six modules it comes from (the name not in the sentence; every module
    equally frequent, baseline 1/6). A sentence with two different answers is dropped. Depends
    only on ``seed`` and the installation.

    Args:
        max_per_task: At most this many examples per task (>= 4).
        seed: Seed of the shuffling that picks the examples.
        max_chars_per_domain: How much docstring text to read per domain (see ``fedlm.corpus``).

    Returns:
        The "domain" examples, then the "module" examples, each in shuffled order.

    Raises:
        ValueError: if ``max_per_task`` < 4.
        RuntimeError: if the standard-library sources are not installed.
    """
    if max_per_task < 4:
        raise ValueError(f"max_per_task={max_per_task} must be >= 4 (one per domain at least)")
    rng = random.Random(seed)  # ok: data shuffling, not a secret
    return (_domain_examples(max_per_task, max_chars_per_domain, rng)
            + _module_examples(max_per_task, rng))


@dataclass(frozen=True)
class _Layout:
    """Token pieces of the template: ``head + prompt + tail`` is the prompt part, the response's
    tokens and ``end`` (EOS, or the chat template's end of turn) are the part that takes the loss."""

    head: list[int]
    tail: list[int]
    end: list[int]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens (templates write their own)."""
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def _chat_layout(tokenizer: PreTrainedTokenizerBase) -> _Layout:
    """The layout of a user/assistant exchange under the tokenizer's chat template.

    The template is rendered once with placeholder messages and the text is cut around them, so
    the prompt can be truncated inside its message and the response span is exact (no token
    merges across the boundary). Evaluation uses the same prefix as training.
    """
    from jinja2 import TemplateError

    conversation = [{"role": "user", "content": _USER_SLOT},
                    {"role": "assistant", "content": _ASSISTANT_SLOT}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except (TemplateError, ValueError) as exc:
        raise InputError(f"the tokenizer's chat template cannot render a user/assistant exchange: "
                         f"{exc}") from exc
    if not isinstance(text, str):
        raise InputError("the tokenizer's chat template did not render to text")
    head, _, rest = text.partition(_USER_SLOT)
    tail, _, end = rest.partition(_ASSISTANT_SLOT)
    if text.count(_USER_SLOT) != 1 or text.count(_ASSISTANT_SLOT) != 1 or _ASSISTANT_SLOT not in rest:
        raise InputError("the tokenizer's chat template does not write the user message, then the "
                         "assistant message, each once and verbatim; set tokenizer.chat_template "
                         "to None to use the plain instruction template")
    return _Layout(_encode(tokenizer, head), _encode(tokenizer, tail), _encode(tokenizer, end))


def _layout(tokenizer: PreTrainedTokenizerBase) -> _Layout:
    """The chat layout if the tokenizer has a chat template, else :data:`PLAIN_TEMPLATE` + EOS."""
    if getattr(tokenizer, "chat_template", None):
        return _chat_layout(tokenizer)
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token to end responses with")
    head, _, tail = PLAIN_TEMPLATE.partition("{prompt}")
    return _Layout(_encode(tokenizer, head), _encode(tokenizer, tail), [int(tokenizer.eos_token_id)])


def _prefix(tokenizer: PreTrainedTokenizerBase, layout: _Layout, prompt: str, room: int) -> list[int]:
    """``head + prompt + tail`` with the prompt cut from the left to ``room`` tokens (>= 1)."""
    body = _encode(tokenizer, prompt)
    return layout.head + body[max(0, len(body) - room):] + layout.tail


def _format(tokenizer: PreTrainedTokenizerBase, layout: _Layout, example: Example,
            max_len: int) -> tuple[list[int], list[int]]:
    """:func:`format_example` with the layout already built."""
    answer = _encode(tokenizer, example.response) + layout.end
    room = max_len - len(layout.head) - len(layout.tail) - len(answer)
    if room < 1:
        raise InputError(f"a {example.task!r} response of {len(answer)} tokens (with its end) plus "
                         f"the {len(layout.head) + len(layout.tail)}-token template leaves no room "
                         f"for the prompt in max_len={max_len}: raise the sequence length or "
                         f"shorten the response ({example.response[:40]!r})")
    prefix = _prefix(tokenizer, layout, example.prompt, room)
    return prefix + answer, [IGNORE_INDEX] * len(prefix) + answer


def format_example(tokenizer: PreTrainedTokenizerBase, example: Example,
                   max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example for causal-LM SFT, the loss on the response only.

    With a chat template (``tokenizer.chat_template``) the example is a user then an assistant
    message; otherwise :data:`PLAIN_TEMPLATE`, the response and EOS. Labels are :data:`IGNORE_INDEX`
    on every prompt position and equal the ids on the response and its end (EOS or the template's
    end of turn), unshifted (Hugging Face causal LMs shift them). If the whole is longer than
    ``max_len``, the prompt is cut from the left (its end is kept); the response is never cut.

    Returns:
        ``(ids, labels)`` of equal length, at most ``max_len``.

    Raises:
        InputError: if the response and template leave no room for one prompt token, or the chat
            template cannot be used.
    """
    return _format(tokenizer, _layout(tokenizer), example, max_len)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, max_len: int) -> list[int]:
    """The ids a model is given to answer ``prompt``: the template up to where the response starts.

    The same layout as :func:`format_example`, with the prompt cut from the left so the result
    has at most ``max_len`` tokens (pass the sequence length minus the tokens to generate).

    Raises:
        InputError: if the template alone leaves no room for one prompt token.
    """
    layout = _layout(tokenizer)
    room = max_len - len(layout.head) - len(layout.tail)
    if room < 1:
        raise InputError(f"the {max_len - room}-token template leaves no room for the prompt in "
                         f"max_len={max_len}")
    return _prefix(tokenizer, layout, prompt, room)


def collate(pairs: Sequence[tuple[list[int], list[int]]],
            pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads ``(ids, labels)`` pairs into one batch.

    Returns:
        ``(input_ids, labels, attention_mask)``, int64 tensors of shape ``(n, longest)``: padding
        has id ``pad_id``, label :data:`IGNORE_INDEX` and mask 0.

    Raises:
        ValueError: if ``pairs`` is empty, or a pair's ids and labels differ in length.
    """
    if not pairs:
        raise ValueError("cannot collate an empty batch")
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.int64)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.int64)
    mask = torch.zeros((len(pairs), width), dtype=torch.int64)
    for row, (ids, targets) in enumerate(pairs):
        if len(ids) != len(targets):
            raise ValueError(f"pair {row}: {len(ids)} ids but {len(targets)} labels")
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        labels[row, : len(ids)] = torch.tensor(targets, dtype=torch.int64)
        mask[row, : len(ids)] = 1
    return input_ids, labels, mask


def split_examples(examples: Sequence[Example], clients: int, alpha: float, seed: int,
                   heldout_fraction: float = 0.1) -> tuple[list[list[Example]], dict[str, list[Example]]]:
    """Holds out evaluation examples per task and spreads the rest over clients, non-IID by task.

    Per task, ``max(1, int(n * heldout_fraction))`` examples are held out (none for a task of one
    example or a fraction of 0). The rest go through :func:`fedlm.corpus.dirichlet_split`, the LM
    corpus's split with tasks as labels: each task's client shares are drawn from ``Dir(alpha)``,
    so a small ``alpha`` gives clients different task mixes, a large one an IID split, and every
    client gets at least one example. Each example lands in exactly one place; seeded by ``seed``.

    Returns:
        Per client, its training examples; and task -> held-out examples (tasks with none omitted).

    Raises:
        ValueError: for ``clients`` < 1, ``alpha`` <= 0 or a fraction outside [0, 1).
        InputError: if fewer training examples remain than there are clients.
    """
    if clients < 1 or not alpha > 0 or not 0 <= heldout_fraction < 1:
        raise ValueError(f"need clients >= 1, alpha > 0 and 0 <= heldout_fraction < 1; got "
                         f"{clients}, {alpha}, {heldout_fraction}")
    rng = np.random.default_rng(seed)  # ok: data shuffling, not a secret
    heldout: dict[str, list[Example]] = {}
    train: list[Example] = []
    for task in sorted({e.task for e in examples}):
        items = [e for e in examples if e.task == task]
        order = rng.permutation(len(items))  # ok: data shuffling, not a secret
        held = max(1, int(len(items) * heldout_fraction)) if heldout_fraction and len(items) > 1 else 0
        if held:
            heldout[task] = [items[i] for i in order[:held]]
        train.extend(items[i] for i in order[held:])
    if len(train) < clients:
        raise InputError(f"{len(train)} SFT training examples (after holding out evaluation "
                         f"examples) cannot cover {clients} clients; add data or use fewer clients")
    parts = dirichlet_split([e.task for e in train], clients, alpha, rng)
    return [[train[i] for i in part] for part in parts], heldout


def _response_loss(model: torch.nn.Module, pairs: Sequence[tuple[list[int], list[int]]],
                   pad_id: int, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy over every response token of ``pairs`` (token-weighted)."""
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        ids, labels, mask = (t.to(device) for t in collate(pairs[start:start + batch_size], pad_id))
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, logits.shape[1] - ids.shape[1]:]  # a soft prompt adds leading positions
        targets = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


def _answer(tokenizer: PreTrainedTokenizerBase, generated: list[int], stops: set[int]) -> str:
    """The generated text up to the first special token or newline, stripped."""
    cut = next((i for i, t in enumerate(generated) if t in stops), len(generated))
    text = str(tokenizer.decode(generated[:cut], skip_special_tokens=True))
    return text.split("\n", 1)[0].strip()


def _evaluate_task(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, layout: _Layout,
                   examples: Sequence[Example], max_len: int, batch_size: int,
                   max_new_tokens: int) -> dict[str, float]:
    """The metrics of one task's held-out examples (see :func:`evaluate_sft`)."""
    device = next(model.parameters()).device
    # Any id pads: under right padding and causal attention no real position sees it.
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    stops = set(tokenizer.all_special_ids)
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.int64, device=device)
    pairs = [_format(tokenizer, layout, e, max_len) for e in examples]
    loss = _response_loss(model, pairs, pad_id, batch_size, device)
    correct = 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        prefixes = [ids[: labels.count(IGNORE_INDEX)] for ids, labels in batch]
        # Room for the reference and its end token, so a long answer is not cut off unscored.
        steps = [min(max(max_new_tokens, len(ids) - len(p)), max_len - len(p))
                 for p, (ids, _) in zip(prefixes, batch)]
        generated = greedy(model, prefixes, steps, pad_id, stop_tensor, device)
        for example, tokens in zip(examples[start:start + batch_size], generated):
            correct += _answer(tokenizer, tokens, stops) == example.response.strip()
    counts = Counter(e.response.strip() for e in examples)
    return {"loss": loss, "accuracy": correct / len(examples),
            "majority_baseline": counts.most_common(1)[0][1] / len(examples),
            "examples": len(examples)}


def evaluate_sft(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 heldout: dict[str, list[Example]], max_len: int, batch_size: int,
                 max_new_tokens: int = 8, limit: int | None = None) -> dict[str, dict[str, float]]:
    """Held-out metrics of every task.

    Per task (tasks without examples are left out):

    * ``loss``: mean cross-entropy over the response tokens (and their end), as in training;
    * ``accuracy``: share of examples whose greedy answer equals the response after ``strip()``;
      the answer continues the training prompt (:func:`format_example`'s prefix) for
      ``max_new_tokens`` tokens, or the reference's length plus one if that is more (so a long
      answer must still end where the reference does), within ``max_len``, and is cut at the
      first special token (EOS, end of turn) or newline: exact match scores one-line responses;
    * ``majority_baseline``: share of the most frequent response, the accuracy of always giving it;
    * ``examples``: how many examples were scored.

    Decoding is a greedy loop batched with right padding (no ``model.generate``), so plain and
    peft models (LoRA, prompt tuning) work alike. The model's training mode is restored after.

    Args:
        limit: Score at most the first ``limit`` examples of each task.

    Raises:
        InputError: if an example does not fit in ``max_len`` (see :func:`format_example`).
    """
    layout = _layout(tokenizer)
    was_training = model.training
    model.eval()  # ok: torch Module.eval(), not Python eval
    try:
        with torch.no_grad():
            return {task: _evaluate_task(model, tokenizer, layout, heldout[task][:limit], max_len,
                                         batch_size, max_new_tokens)
                    for task in sorted(heldout) if heldout[task][:limit]}
    finally:
        model.train(was_training)
