"""Client-side preprocessing: cleaning, exact de-duplication, tokenising and packing, with counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlm.loop import run
from fedlm.preprocess import clean, preprocess
from fedlm.tokenizer import train_tokenizer

from .helpers import tiny_config

TEXT = "The quick brown fox jumps over the lazy dog and keeps running far away. " * 3


def test_clean_normalises_whitespace_and_controls() -> None:
    assert clean("  a\tb\x00c  \r\n\n\n\n  d  ") == "a bc\n\nd"
    assert clean("e\u0301") == "\u00e9"  # NFC


def test_preprocess_drops_short_and_duplicate_documents_and_counts_what_it_did() -> None:
    tok = train_tokenizer([TEXT, TEXT.upper()], 300)
    docs = [TEXT, "  " + TEXT.upper() + "  ", TEXT, "tiny", "", TEXT.replace("fox", "cat")]
    blocks, stats = preprocess(tok, docs, seq_len=16)
    assert (stats.documents, stats.dropped_short, stats.duplicates, stats.kept) == (6, 2, 2, 2)
    assert stats.blocks == blocks.shape[0] and blocks.shape[1] == 16
    assert stats.tokens == stats.blocks * 16 + stats.tokens_dropped_in_packing
    with pytest.raises(ValueError, match="no document left"):
        preprocess(tok, ["", "x", "   "], seq_len=16)


def test_the_report_shows_each_clients_preprocessing(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, backend="plain", rounds=1))
    per_client = report["data"]["preprocessing_per_client"]
    assert len(per_client) == 3
    for stats in per_client:
        assert stats["kept"] + stats["dropped_short"] + stats["duplicates"] == stats["documents"] > 0
        assert stats["blocks"] >= 1
