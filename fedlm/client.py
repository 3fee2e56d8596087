"""Local training on a client's shard and the delta it uploads.

A client starts from the global uploaded state, takes a few AdamW steps on
its own token blocks with a fresh optimiser (clients keep no state between
rounds), and uploads ``local - global``. Clipping (and optional DP noise) is
applied here, on the client, identically for every backend: the ``plain``
FedAvg of these clipped deltas is then the exact reference that a secure
backend must reproduce up to its quantisation error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedlm.config import RunConfig
from fedlm.model import StateDict, load_uploaded_state, trainable_parameters, uploaded_state


@dataclass(frozen=True)
class ClientData:
    """One client's private training data.

    Attributes:
        client_id: The client's id (its index).
        blocks: ``(n, seq_len)`` int64 token rows (LM blocks, or padded SFT examples).
        domains: Number of documents per domain (or examples per task), for the report.
        labels: SFT only: the targets, -100 where no loss is taken (prompt and padding).
        mask: SFT only: the attention mask (0 on padding).
    """

    client_id: int
    blocks: torch.Tensor
    domains: dict[str, int]
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        """The client's aggregation weight: how many blocks it holds."""
        return int(self.blocks.shape[0])


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends: a delta, its weight, and training statistics."""

    delta: StateDict
    weight: int
    train_loss: float
    clipped_fraction: float


def make_blocks(stream: list[int], seq_len: int) -> torch.Tensor:
    """Cuts a token stream into non-overlapping ``seq_len`` blocks (at least one).

    A stream shorter than one block is repeated to fill it, so tiny shards
    still train.
    """
    if not stream:
        raise ValueError("cannot make blocks from an empty token stream")
    while len(stream) < seq_len:
        stream = stream + stream
    usable = len(stream) // seq_len * seq_len
    return torch.tensor(stream[:usable], dtype=torch.int64).view(-1, seq_len)


def batch_loss(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch: over every token of LM blocks, or over the
    positions ``labels`` keeps (SFT: the response tokens)."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    labels = batch if labels is None else labels.to(device)
    mask = None if mask is None else mask.to(device)
    loss: torch.Tensor = model(input_ids=batch, labels=labels, attention_mask=mask).loss
    return loss


def local_train(model: torch.nn.Module, blocks: torch.Tensor, steps: int, batch_size: int,
                lr: float, generator: torch.Generator,
                on_step: Callable[[float], None] | None = None, prox_mu: float = 0.0,
                labels: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> float:
    """Runs ``steps`` AdamW steps on random batches of ``blocks``.

    With ``prox_mu`` > 0 (FedProx, Li et al., MLSys'20) the objective adds
    ``prox_mu / 2 * ||w - w_0||^2`` over the trainable parameters, w_0 being their values on entry
    (the global model). The reported loss is the language-model loss alone.

    Returns:
        The mean training loss over the steps.
    """
    model.train()
    params = trainable_parameters(model)
    anchors = [p.detach().clone() for p in params] if prox_mu > 0 else []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = 0.0
    for _ in range(steps):
        idx = torch.randint(0, blocks.shape[0], (batch_size,), generator=generator)
        loss = batch_loss(model, blocks[idx], None if labels is None else labels[idx],
                          None if mask is None else mask[idx])
        objective = loss
        if anchors:
            objective = loss + prox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += float(loss.detach())
        if on_step is not None:
            on_step(float(loss.detach()))
    return total / steps


def clip_l2(delta: StateDict, bound: float) -> tuple[StateDict, float]:
    """Scales the whole delta down to L2 norm ``bound`` if it is longer (client-level DP).

    The DP encoding clips again in float64 (a no-op here); clipping on the client as well keeps the
    in-memory engine's plain FedAvg reference equal to what the secure sum adds up.

    Returns:
        The clipped delta and 1.0 if it was clipped, else 0.0.
    """
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))
    if norm <= bound:
        return delta, 0.0
    return {k: (v.double() * (bound / norm)).to(v.dtype) for k, v in delta.items()}, 1.0


def clip_delta(delta: StateDict, bound: float) -> tuple[StateDict, float]:
    """Clips every coordinate to ``[-bound, bound]``.

    Returns:
        The clipped delta and the fraction of coordinates that were clipped.
    """
    total = sum(v.numel() for v in delta.values())
    clipped = sum(int((v.abs() > bound).sum()) for v in delta.values())
    return {k: v.clamp(-bound, bound) for k, v in delta.items()}, clipped / max(total, 1)


def client_update(model: torch.nn.Module, global_state: StateDict, data: ClientData,
                  cfg: RunConfig, round_number: int,
                  on_step: Callable[[float], None] | None = None) -> ClientUpdate:
    """Trains one client from the global state and returns its clipped delta.

    The model is restored to ``global_state`` afterwards, so one model object
    serves every client of a round.
    """
    load_uploaded_state(model, global_state)
    generator = torch.Generator().manual_seed(
        (cfg.seed * 1_000_003 + round_number * 10_007 + data.client_id) % 2**63)
    loss = local_train(model, data.blocks, cfg.local_steps, cfg.batch_size,
                       cfg.resolved_lr, generator, on_step, cfg.prox_mu, data.labels, data.mask)
    local = uploaded_state(model, cfg)
    load_uploaded_state(model, global_state)
    delta = {k: local[k] - global_state[k] for k in global_state}
    if cfg.dp:  # client-level DP: the whole delta in L2, and every client weighs 1
        delta, fraction = clip_l2(delta, cfg.dp_l2_clip)
        return ClientUpdate(delta=delta, weight=1, train_loss=loss, clipped_fraction=fraction)
    delta, fraction = clip_delta(delta, cfg.resolved_clip_bound)
    return ClientUpdate(delta=delta, weight=data.num_examples, train_loss=loss,
                        clipped_fraction=fraction)
