"""Corpus building: stdlib docstrings, user files, the Dirichlet split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlm.corpus import (STDLIB_DOMAINS, build_corpus, dirichlet_split, stdlib_documents,
                          user_documents)


def test_stdlib_corpus_has_every_domain_within_the_cap() -> None:
    docs = stdlib_documents(max_chars_per_domain=5_000)
    assert sorted(docs) == sorted(STDLIB_DOMAINS)
    for domain_docs in docs.values():
        assert len(domain_docs) >= 3
        assert sum(map(len, domain_docs[:-1])) < 5_000


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.sampled_from("abcd"), min_size=8, max_size=60),
       clients=st.integers(1, 8), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**16))
def test_dirichlet_split_is_a_partition_with_no_empty_client(
        labels: list[str], clients: int, alpha: float, seed: int) -> None:
    rng = np.random.default_rng(seed)  # ok: data split, not a secret
    parts = dirichlet_split(labels, clients, alpha, rng)
    assert len(parts) == clients
    assert all(parts)
    assert sorted(i for p in parts for i in p) == list(range(len(labels)))


def test_dirichlet_split_is_seeded_and_small_alpha_is_skewed() -> None:
    labels = [d for d in "abcd" for _ in range(200)]

    def split(alpha: float, seed: int) -> list[list[int]]:
        rng = np.random.default_rng(seed)  # ok: data split, not a secret
        return dirichlet_split(labels, 4, alpha, rng)

    assert split(0.1, 3) == split(0.1, 3)

    def purity(parts: list[list[int]]) -> float:
        return float(np.mean([max(sum(labels[i] == c for i in p) for c in "abcd") / len(p)
                              for p in parts]))

    assert purity(split(0.05, 0)) > purity(split(1000.0, 0)) + 0.3


def test_build_corpus_keeps_heldout_and_public_apart_from_clients() -> None:
    docs = {d: [f"{d} document number {i}" for i in range(50)] for d in ("x", "y")}
    corpus = build_corpus(docs, num_clients=4, alpha=0.5, seed=0)
    private = {text for client in corpus.clients for _, text in client}
    for domain in ("x", "y"):
        assert corpus.heldout[domain] and corpus.public[domain]
        assert not private & set(corpus.heldout[domain])
        assert not private & set(corpus.public[domain])
        assert not set(corpus.public[domain]) & set(corpus.heldout[domain])
    assert len(private) + sum(len(v) for v in corpus.heldout.values()) + sum(
        len(v) for v in corpus.public.values()) == 100


def test_user_text_and_jsonl_files(tmp_path: Path) -> None:
    txt = tmp_path / "poems.txt"
    txt.write_text("\n\n".join(f"stanza {i}" for i in range(5)), encoding="utf-8")
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"law {i}", "domain": "legal"})
                               for i in range(4)) + "\n\n", encoding="utf-8")
    docs = user_documents([str(txt), str(jsonl)], max_chars_per_domain=10_000)
    assert sorted(docs) == ["legal", "poems"]
    assert docs["poems"][0] == "stanza 0" and len(docs["legal"]) == 4


def test_user_files_reject_bad_records_and_tiny_domains(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        user_documents([str(bad)], 10_000)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("only one document", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 3"):
        user_documents([str(tiny)], 10_000)
