"""A few held-out prompts and the model's greedy continuations, before and after federation, so a
user sees what the training changed, not only a loss."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["held_out_prompts", "continuations"]

PROMPT_TOKENS = 12
NEW_TOKENS = 12


def held_out_prompts(eval_blocks: dict[str, torch.Tensor], seq_len: int) -> dict[str, list[int]]:
    """The first tokens of each domain's first held-out block (prompt plus continuation fit in
    ``seq_len``)."""
    take = min(PROMPT_TOKENS, seq_len // 2)
    return {domain: blocks[0, :take].tolist() for domain, blocks in eval_blocks.items() if blocks.shape[0]}


@torch.no_grad()
def continuations(model: torch.nn.Module, prompts: dict[str, list[int]], tokenizer: Any,
                  seq_len: int) -> dict[str, dict[str, str]]:
    """Greedy continuation of every prompt (decoded text of prompt and continuation)."""
    model.eval()  # ok: torch Module.eval(), not Python eval
    device = next(model.parameters()).device
    out = {}
    for domain, prompt in prompts.items():
        ids = torch.tensor([prompt], device=device)
        for _ in range(min(NEW_TOKENS, seq_len - len(prompt))):
            logits = model(input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        out[domain] = {"prompt": tokenizer.decode(prompt),
                       "continuation": tokenizer.decode(ids[0, len(prompt):].tolist())}
    return out
