"""Client-side preprocessing for federated (pre-)training on text: what each client does to its own
documents before training, with nothing leaving the client but the counts in the report.

Each client, with the shared tokenizer:

1. cleans every document (Unicode NFC, control characters removed, runs of spaces collapsed, blank
   lines normalised, ends trimmed) and drops documents left shorter than ``min_chars``;
2. de-duplicates exactly (after cleaning, case-folded), keeping the first copy;
3. tokenises with the shared tokenizer, each document followed by EOS;
4. packs the stream into ``seq_len`` blocks (the tail shorter than a block is dropped, unless the
   whole stream is shorter than one block: then it is repeated to fill one, so tiny shards train).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from transformers import PreTrainedTokenizerBase

from fedlm.client import make_blocks
from fedlm.tokenizer import encode_documents

__all__ = ["PreprocessStats", "clean", "preprocess"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n\s*\n+")


@dataclass(frozen=True)
class PreprocessStats:
    """What one client's preprocessing did (counts only: safe to report)."""

    documents: int
    dropped_short: int
    duplicates: int
    kept: int
    tokens: int
    blocks: int
    tokens_dropped_in_packing: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def clean(text: str) -> str:
    """One document, cleaned (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _BLANKS.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def preprocess(tokenizer: PreTrainedTokenizerBase, documents: Iterable[str], seq_len: int,
               min_chars: int = 16) -> tuple[Any, PreprocessStats]:
    """A client's ``(blocks, stats)`` from its raw documents.

    Raises:
        ValueError: nothing is left to train on (every document empty, too short or a duplicate).
    """
    seen: set[bytes] = set()
    kept: list[str] = []
    total = short = duplicates = 0
    for raw in documents:
        total += 1
        text = clean(raw)
        if len(text) < min_chars:
            short += 1
            continue
        key = hashlib.sha256(text.casefold().encode("utf-8")).digest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(text)
    if not kept:
        raise ValueError("no document left after cleaning and de-duplication")
    stream = encode_documents(tokenizer, kept)
    blocks = make_blocks(stream, seq_len)
    dropped = max(0, len(stream) - blocks.numel())
    return blocks, PreprocessStats(total, short, duplicates, len(kept), len(stream), int(blocks.shape[0]), dropped)
