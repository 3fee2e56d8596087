"""The tiny causal LM, its peft wrapping, and the state each client uploads.

The model is a Llama built from a ``LlamaConfig`` (about 1M parameters at the
defaults), so nothing is downloaded. peft's ``get_peft_model_state_dict`` /
``set_peft_model_state_dict`` is the seam where aggregation plugs in: in
``lora`` and ``prompt`` mode the uploaded state is (a subset of) the peft state
dict; in ``pretrain`` mode it is every parameter of the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from peft import (LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType,
                  get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict)
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from fedlm.config import RunConfig

StateDict = dict[str, torch.Tensor]

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj")

# Saving a 4 MB model needs no "Writing model shards" bar between our own bars.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def build_base_model(cfg: RunConfig, vocab_size: int, pad_id: int, eos_id: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama; the caller seeds torch first."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 8 // 3,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.seq_len + cfg.num_virtual_tokens + cfg.personal_tokens,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )
    return LlamaForCausalLM(config)


def _peft_wrap(base: PreTrainedModel, config: LoraConfig | PromptTuningConfig) -> PeftModel:
    """``get_peft_model`` without the deprecation warning it triggers in transformers 5."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        return get_peft_model(base, config)


def wrap_for_mode(base: PreTrainedModel, cfg: RunConfig, prompt_init_token: int,
                  lora_targets: list[str] | None = None) -> torch.nn.Module:
    """Wraps the base model for the run's mode.

    ``pretrain`` keeps the bare model (all parameters train); ``lora`` adds
    LoRA adapters on ``lora_targets`` (default: every Llama projection), with A frozen under FFA-LoRA (then the
    average of the clients' B matrices is exactly the average of their
    low-rank updates); ``prompt`` adds a trainable soft prompt whose virtual
    tokens start as the embedding of ``prompt_init_token`` (the end-of-text token).
    """
    if cfg.full_parameters:
        return base
    if cfg.mode == "lora":
        targets = list(lora_targets or LORA_TARGETS)
        # GPT-2's Conv1D stores its weight transposed; peft must be told (it warns and fixes it otherwise).
        transposed = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in base.named_modules())
        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=0.0, target_modules=targets, fan_in_fan_out=transposed)
        model = _peft_wrap(base, lora)
        if cfg.resolved_freeze_a:
            for name, param in model.named_parameters():
                if "lora_A" in name:
                    param.requires_grad_(False)
        return model
    prompt = PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                num_virtual_tokens=cfg.prompt_tokens,
                                prompt_tuning_init=PromptTuningInit.RANDOM)
    model = _peft_wrap(base, prompt)
    init_prompt_from_token(model, prompt_init_token)
    return model


def init_prompt_from_token(model: PeftModel, token_id: int) -> None:
    """Sets every virtual token to the embedding of ``token_id``.

    Every document in the corpus follows an end-of-text token, so a prompt of
    end-of-text embeddings starts out as a context the model already knows. It
    starts closer to the base model's loss than peft's random prompt (whose
    vectors are ~50x larger than token embeddings) or a sampled-vocabulary one.
    """
    table = model.get_input_embeddings()
    encoder = model.prompt_encoder[model.active_adapter]
    prompt = getattr(encoder, "embedding", None)
    if not (isinstance(table, torch.nn.Embedding) and isinstance(prompt, torch.nn.Embedding)):
        raise TypeError("unexpected peft prompt-tuning layout")
    with torch.no_grad():
        prompt.weight.copy_(table.weight[token_id].expand_as(prompt.weight))


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that local training updates."""
    return [p for p in model.parameters() if p.requires_grad]


def uploaded_state(model: torch.nn.Module, cfg: RunConfig) -> StateDict:
    """Detached float32 copy of the state a client uploads.

    Under FFA-LoRA the frozen A matrices are identical everywhere, so only the
    B matrices are uploaded (half the bytes).
    """
    if isinstance(model, PeftModel):
        state = get_peft_model_state_dict(model)
        if cfg.resolved_freeze_a:
            state = {k: v for k, v in state.items() if "lora_A" not in k}
        if cfg.personal_tokens:  # the personal rows never leave the client
            state = {k: (v[: cfg.num_virtual_tokens] if k == "prompt_embeddings" else v) for k, v in state.items()}
    else:
        state = dict(model.named_parameters())
    return {k: v.detach().to(device="cpu", dtype=torch.float32).clone() for k, v in state.items()}


def load_uploaded_state(model: torch.nn.Module, state: StateDict) -> None:
    """Writes an uploaded-state dict back into the model.

    Raises:
        KeyError: if a name does not belong to the model's uploaded state.
    """
    if isinstance(model, PeftModel):
        table = _prompt_table(model)
        shared = state.get("prompt_embeddings")
        if table is not None and shared is not None and shared.shape[0] < table.shape[0]:
            with torch.no_grad():  # only the shared rows; the personal rows stay as they are
                table[: shared.shape[0]].copy_(shared)
            state = {k: v for k, v in state.items() if k != "prompt_embeddings"}
            if not state:
                return
        result = set_peft_model_state_dict(model, state)
        # peft loads a soft prompt by hand, then reports its key as unexpected.
        unexpected = [k for k in getattr(result, "unexpected_keys", [])
                      if k != "prompt_embeddings"]
        if unexpected:
            raise KeyError(f"unexpected keys: {unexpected[:3]}")
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _prompt_table(model: torch.nn.Module) -> torch.Tensor | None:
    """The soft-prompt embedding table of a prompt-tuning model, or None."""
    if not isinstance(model, PeftModel) or not hasattr(model, "prompt_encoder"):
        return None
    encoder = model.prompt_encoder[model.active_adapter]
    embedding = getattr(encoder, "embedding", None)
    return embedding.weight if isinstance(embedding, torch.nn.Embedding) else None


def personal_rows(model: torch.nn.Module, cfg: RunConfig) -> torch.Tensor:
    """A copy of the soft prompt's personal rows (after the shared ones)."""
    table = _prompt_table(model)
    assert table is not None and cfg.personal_tokens
    return table[cfg.num_virtual_tokens :].detach().clone()


def set_personal_rows(model: torch.nn.Module, cfg: RunConfig, rows: torch.Tensor) -> None:
    """Writes a client's personal rows into the soft prompt."""
    table = _prompt_table(model)
    assert table is not None and cfg.personal_tokens
    with torch.no_grad():
        table[cfg.num_virtual_tokens :].copy_(rows)


def parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters) of a model, tied weights counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def save_base(base: PreTrainedModel, out_dir: Path) -> Path:
    """Saves the (warmed-up) base model to ``OUT/base`` with safetensors.

    Called before peft wraps the model, since LoRA injects its layers into
    the base modules in place.
    """
    base.save_pretrained(str(out_dir / "base"))  # transformers 5 always writes safetensors
    return out_dir / "base"


def save_final(model: torch.nn.Module, out_dir: Path) -> Path:
    """Saves the trained result with safetensors and returns its folder.

    ``pretrain`` writes the whole model to ``OUT/model``; the peft modes write
    the adapter (LoRA weights or soft prompt: ``adapter_model.safetensors`` and
    ``adapter_config.json``) to ``OUT/adapter``, loadable on top of ``OUT/base``
    with ``PeftModel.from_pretrained``.
    """
    if isinstance(model, PeftModel):
        model.save_pretrained(str(out_dir / "adapter"), safe_serialization=True)
        return out_dir / "adapter"
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"cannot save a {type(model).__name__}")
    model.save_pretrained(str(out_dir / "model"))
    return out_dir / "model"
