"""A byte-level BPE tokenizer trained locally with ``tokenizers``.

The tokenizer is trained on the public slice of the corpus only (the server
builds it before federation starts, so no client text is needed) and wrapped
as a ``transformers.PreTrainedTokenizerFast``. Byte-level BPE covers every
input, so client text the tokenizer never saw still encodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: Training documents.
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        A fast tokenizer with ``eos_token`` and ``pad_token`` set.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def encode_documents(tokenizer: PreTrainedTokenizerBase, docs: Iterable[str]) -> list[int]:
    """Encodes documents into one token stream, each followed by the EOS token."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(docs), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return stream


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Writes ``tokenizer.json`` (and its config) to ``out_dir``; returns the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
