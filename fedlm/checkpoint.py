"""Any local Hugging Face causal LM as the starting point of a run (``--model DIR``).

Loads the config, weights and tokenizer from a directory, offline (``local_files_only``), and finds
the LoRA target modules per architecture: the attention and MLP projections of Llama/Qwen/Mistral
style models, GPT-2's ``Conv1D`` layers, or any linear layer otherwise (never the output head).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from fedlm.errors import InputError

__all__ = ["load_checkpoint", "load_checkpoint_tokenizer", "lora_targets", "DTYPES"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _directory(path: str) -> Path:
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise InputError(f"--model {path}: not a Hugging Face checkpoint directory (no config.json)")
    return directory


def load_checkpoint_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with a pad token (the EOS token when it has none).

    Raises:
        InputError: no tokenizer in the directory, or one without an end-of-sequence token.
    """
    directory = _directory(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"--model {path}: no usable tokenizer in the directory ({type(exc).__name__}); "
                         "save one there with tokenizer.save_pretrained") from None
    if tokenizer.eos_token_id is None:
        raise InputError(f"--model {path}: the tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_checkpoint(path: str, dtype: str, min_positions: int) -> PreTrainedModel:
    """The causal LM saved in ``path``, in ``dtype``, checked to take ``min_positions`` tokens.

    Raises:
        InputError: the directory holds no loadable causal LM, or its context is too short.
    """
    directory = _directory(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"--model {path}: cannot load a causal LM from it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]})") from None
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and limit < min_positions:
        raise InputError(f"--model {path} takes {limit} positions; --seq-len plus the virtual tokens need "
                         f"{min_positions}: lower --seq-len")
    return model


def lora_targets(model: torch.nn.Module, requested: tuple[str, ...] = ()) -> list[str]:
    """LoRA target module names: ``requested`` (each must match a linear layer), else found.

    Raises:
        InputError: a requested name matches no linear layer, or the model has none to adapt.
    """
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None  # type: ignore[no-untyped-call]
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head}
    if requested:
        missing = [r for r in requested if r not in linear]
        if missing:
            raise InputError(f"--lora-targets {' '.join(missing)} match no linear layer of the model; "
                             f"it has: {' '.join(sorted(linear))}")
        return list(requested)
    projections = [p for p in _PROJECTIONS if p in linear]
    if projections:
        return projections
    if not linear:
        raise InputError("the model has no linear layer for LoRA to adapt; use --mode pretrain or prompt")
    return sorted(linear)
