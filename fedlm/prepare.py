"""The tokenised data of a run: the tokenizer (trained on public text only) and every text cut
into blocks. Shared by the training loop and the report, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fedlm.checkpoint import load_checkpoint_tokenizer
from fedlm.client import ClientData, make_blocks
from fedlm.preprocess import preprocess
from fedlm.config import RunConfig
from fedlm.corpus import Corpus
from fedlm.errors import InputError
from fedlm.sft import Example, collate, format_example, load_sft_jsonl, split_examples, stdlib_sft_examples
from fedlm.tokenizer import encode_documents, train_tokenizer

__all__ = ["Prepared", "prepare_data"]


@dataclass(frozen=True)
class Prepared:
    """Tokenised data of a run."""

    tokenizer: PreTrainedTokenizerBase
    public_blocks: torch.Tensor
    eval_blocks: dict[str, torch.Tensor]
    clients: list[ClientData]
    sft_heldout: dict[str, list[Example]] | None = None
    """SFT only: held-out examples per task."""
    preprocessing: list[dict[str, Any]] | None = None
    """LM only: what each client's local preprocessing did (fedlm.preprocess), counts only."""


def prepare_data(cfg: RunConfig, corpus: Corpus) -> Prepared:
    """Trains the tokenizer on public text and cuts every text into blocks."""
    public_docs = [d for domain in corpus.domains for d in corpus.public[domain]]
    if cfg.model is not None:
        tokenizer: Any = load_checkpoint_tokenizer(cfg.model)
    else:
        tokenizer = train_tokenizer(public_docs, cfg.vocab_size)
    public = make_blocks(encode_documents(tokenizer, public_docs), cfg.seq_len)
    n_eval = cfg.eval_batches * cfg.batch_size
    eval_blocks = {d: make_blocks(encode_documents(tokenizer, corpus.heldout[d]),
                                  cfg.seq_len)[:n_eval] for d in corpus.domains}
    if cfg.task == "sft":
        clients, heldout = _sft_clients(cfg, tokenizer)
        return Prepared(tokenizer, public, eval_blocks, clients, heldout)
    clients, stats = [], []
    for cid, docs in enumerate(corpus.clients):
        counts: dict[str, int] = {}
        for domain, _ in docs:
            counts[domain] = counts.get(domain, 0) + 1
        try:  # on the client: clean, de-duplicate, tokenise with the shared tokenizer, pack
            blocks, done = preprocess(tokenizer, [text for _, text in docs], cfg.seq_len)
        except ValueError as exc:
            raise InputError(f"client {cid}: {exc}; use fewer --clients or more data") from None
        clients.append(ClientData(cid, blocks, counts))
        stats.append(done.to_json())
    return Prepared(tokenizer, public, eval_blocks, clients, preprocessing=stats)


def _sft_clients(cfg: RunConfig, tokenizer: Any) -> tuple[list[ClientData], dict[str, list[Example]]]:
    """Instruction examples (``--data`` JSONL, or made from the standard library), held out per task
    and spread over the clients non-IID over tasks; each client's examples padded into one tensor.

    Raises:
        InputError: a client would hold no example (more clients than examples).
    """
    examples = (load_sft_jsonl(cfg.data) if cfg.data
                else stdlib_sft_examples(cfg.sft_examples, cfg.seed, cfg.max_chars_per_domain))
    shards, heldout = split_examples(examples, cfg.clients, cfg.dirichlet_alpha, cfg.seed)
    clients = []
    for cid, shard in enumerate(shards):
        if not shard:
            raise InputError(f"client {cid} holds no SFT example: use fewer --clients or more data")
        ids, labels, mask = collate([format_example(tokenizer, ex, cfg.seq_len) for ex in shard],
                                    int(tokenizer.pad_token_id))
        counts: dict[str, int] = {}
        for ex in shard:
            counts[ex.task] = counts.get(ex.task, 0) + 1
        clients.append(ClientData(cid, ids, counts, labels, mask))
    return clients, heldout
