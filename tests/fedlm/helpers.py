"""Tiny run settings shared by the fedlm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlm.config import RunConfig

#: Settings that keep one end-to-end run to a few seconds on one core.
TINY: dict[str, Any] = dict(
    rounds=2, clients=3, clients_per_round=3, local_steps=3, batch_size=4, seq_len=32,
    warmup_steps=20, eval_batches=2, vocab_size=320, hidden_size=32, num_layers=1,
    num_heads=2, lora_r=4, lora_alpha=8, num_virtual_tokens=4, max_chars_per_domain=20_000,
    dropout=0.3, quiet=True, threads=1,
)


def tiny_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """A tiny RunConfig writing into ``tmp_path``."""
    return RunConfig(**{**TINY, "out": str(tmp_path / "run"), **overrides})
