"""A few held-out prompts and the model's greedy continuations, before and after federation, so a
user sees what the training changed, not only a loss."""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["held_out_prompts", "continuations", "greedy"]

PROMPT_TOKENS = 12
NEW_TOKENS = 12


def held_out_prompts(eval_blocks: dict[str, torch.Tensor], seq_len: int) -> dict[str, list[int]]:
    """The first tokens of each domain's first held-out block (prompt plus continuation fit in
    ``seq_len``)."""
    take = min(PROMPT_TOKENS, seq_len // 2)
    return {domain: blocks[0, :take].tolist() for domain, blocks in eval_blocks.items() if blocks.shape[0]}


def greedy(model: torch.nn.Module, prefixes: Sequence[list[int]], steps: Sequence[int],
            pad_id: int, stops: torch.Tensor, device: torch.device) -> list[list[int]]:
    """Greedy continuations of right-padded prefixes, without ``model.generate``.

    Each step runs the model over the batch and appends, to every unfinished row, the argmax at
    that row's own last token; under causal attention the padding to its right changes nothing.
    A row stops after a token in ``stops`` or after its ``steps`` tokens. There is no KV cache,
    so plain and peft (LoRA, soft-prompt) models go through the same forward call.
    """
    lengths = torch.tensor([len(p) for p in prefixes], device=device)
    width = max(len(p) + s for p, s in zip(prefixes, steps))
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.int64, device=device)
    mask = torch.zeros_like(ids)
    for row, prefix in enumerate(prefixes):
        ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.int64)
        mask[row, : len(prefix)] = 1
    cur = lengths.clone()
    left = torch.tensor(list(steps), device=device)
    active = left > 0
    rows = torch.arange(len(prefixes), device=device)
    while bool(active.any()):
        span = int(cur.max())
        logits = model(input_ids=ids[:, :span], attention_mask=mask[:, :span]).logits
        nxt = logits[rows, logits.shape[1] - span + cur - 1].argmax(dim=-1)
        grow = rows[active]
        ids[grow, cur[grow]] = nxt[grow]
        mask[grow, cur[grow]] = 1
        cur[grow] += 1
        left[grow] -= 1
        active &= (left > 0) & ~torch.isin(nxt, stops)
    return [ids[row, int(lengths[row]):int(cur[row])].tolist() for row in range(len(prefixes))]


@torch.no_grad()
def continuations(model: torch.nn.Module, prompts: dict[str, list[int]], tokenizer: Any,
                  seq_len: int) -> dict[str, dict[str, str]]:
    """Greedy continuation of every prompt (decoded text of prompt and continuation)."""
    training = model.training
    model.eval()  # ok: torch Module.eval(), not Python eval
    device = next(model.parameters()).device
    domains = list(prompts)
    rows = [prompts[d] for d in domains]
    steps = [min(NEW_TOKENS, seq_len - len(p)) for p in rows]
    no_stop = torch.empty(0, dtype=torch.int64, device=device)
    generated = greedy(model, rows, steps, int(tokenizer.pad_token_id), no_stop, device)
    model.train(training)
    return {d: {"prompt": tokenizer.decode(p), "continuation": tokenizer.decode(g)}
            for d, p, g in zip(domains, rows, generated)}
