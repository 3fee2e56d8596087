"""The server's round loop, shared by both engines, and the pieces it is made of.

A run is: build the corpus and tokenizer, warm the model up centrally on public text, then for each
round "sample clients, train locally, aggregate, apply, evaluate" (:func:`federate`). How the
sampled clients train and how their aggregate reaches the server is the engine's
(:class:`RoundRunner`): :class:`InMemoryRunner` here, :class:`fedlm.flower_engine.FlowerRunner` on
Flower. Dropouts are injected at the backend's protocol stages and the round completes with the
survivors; a round with too few survivors is recorded as aborted and the global model is left
unchanged.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlm.errors import InputError
from fedlm.backends import (AggregationResult, Backend, DpBudget, RoundAborted, RoundSession, SecureBackend,
                            fedavg)
from fedlm.checkpoint import load_checkpoint, lora_targets
from fedlm.client import ClientUpdate, batch_loss, client_update, local_train
from fedlm.config import RunConfig
from fedlm.sft import evaluate_sft
from fedlm.corpus import load_corpus
from fedlm.model import StateDict, build_base_model, load_uploaded_state, save_base, uploaded_state, wrap_for_mode
from fedlm.prepare import Prepared, prepare_data
from fedlm.personal import PersonalPrompts
from fedlm.progress import RunProgress
from fedlm.resume import RunState, generator_states, load_run_state, restore_generators, save_run_state
from fedlm.server_opt import ServerOptimizer, server_optimizer
from fedlm.report import round_record
from fedlm.tokenizer import save_tokenizer

WARMUP_LR = 3e-3




@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_blocks: dict[str, torch.Tensor],
             batch_size: int) -> dict[str, float]:
    """Mean held-out loss per domain."""
    model.eval()  # ok: torch Module.eval(), not Python eval
    losses: dict[str, float] = {}
    for domain, blocks in eval_blocks.items():
        batches = torch.split(blocks, batch_size)
        total = sum(float(batch_loss(model, b)) * b.shape[0] for b in batches)
        losses[domain] = total / blocks.shape[0]
    return losses


def task_scores(model: torch.nn.Module, prepared: Prepared, cfg: RunConfig) -> dict[str, dict[str, float]]:
    """SFT: held-out response loss, greedy exact-match accuracy and the majority baseline per task
    (``cfg.eval_examples`` per task); empty for the lm task."""
    if prepared.sft_heldout is None:
        return {}
    return evaluate_sft(model, prepared.tokenizer, prepared.sft_heldout, cfg.seq_len, cfg.batch_size,
                        limit=cfg.eval_examples)


def mean_loss(losses: dict[str, float]) -> float:
    """Unweighted mean over domains."""
    return sum(losses.values()) / len(losses)


def warm_up(model: torch.nn.Module, cfg: RunConfig, blocks: torch.Tensor,
            progress: RunProgress) -> float | None:
    """Central training on public text before federation; returns its mean loss."""
    if cfg.warmup_steps == 0:
        return None
    progress.start_steps(cfg.warmup_steps, "warm-up (public data)")
    generator = torch.Generator().manual_seed(cfg.seed)
    return local_train(model, blocks, cfg.warmup_steps, cfg.batch_size, WARMUP_LR,
                       generator, progress.step)


def schedule_round(cfg: RunConfig, stages: tuple[str, ...], rngs: list[np.random.Generator]
                   ) -> tuple[list[int], dict[int, str]]:
    """Samples the round's clients and who drops at which stage.

    Who drops and where are drawn from separate generators, so runs with the
    same seed drop the same clients whatever the backend's stage names.
    """
    sample_rng, drop_rng, stage_rng = rngs
    n = cfg.clients_per_round
    chosen = sample_rng.choice(cfg.clients, size=n, replace=False)  # ok: simulation, not a secret
    sampled = sorted(int(c) for c in chosen)
    drops = drop_rng.random(n) < cfg.dropout  # ok: simulation schedule, not a secret
    picks = stage_rng.integers(0, len(stages), size=n)  # ok: simulation schedule, not a secret
    dropouts = {c: stages[int(p)] for c, d, p in zip(sampled, drops, picks) if d}
    return sampled, dropouts


def state_digest(state: StateDict) -> bytes:
    """SHA-256 of the global uploaded state, bound into the protocol session.

    Every name and tensor is length-prefixed, so two different states can
    never serialise to the same bytes.
    """
    h = hashlib.sha256(b"fedlm/v1/global-state")
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        for part in (name.encode(), str(tuple(tensor.shape)).encode(), str(tensor.dtype).encode(),
                     tensor.numpy().tobytes()):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


def max_abs_diff(a: StateDict, b: StateDict) -> float:
    """Largest absolute coordinate difference, computed in float64."""
    return max(float((a[k].to(torch.float64) - b[k].to(torch.float64)).abs().max()) for k in a)


def train_clients(model: torch.nn.Module, global_state: StateDict, prepared: Prepared,
                  sampled: list[int], cfg: RunConfig, round_number: int,
                  progress: RunProgress, session: RoundSession,
                  personal: PersonalPrompts | None = None) -> dict[int, ClientUpdate]:
    """Local training of every sampled client from the same global state (and, with personal
    prompt tokens, its own private rows, which it keeps). Each client hands its delta to its own
    protocol party in ``session`` right where it trained."""
    updates = {}
    for cid in sampled:
        progress.start_steps(cfg.local_steps, f"round {round_number} client {cid}")
        if personal is not None:
            personal.enter(model, cid)
        updates[cid] = client_update(model, global_state, prepared.clients[cid], cfg,
                                     round_number, progress.step)
        session.add(cid, updates[cid].delta, updates[cid].weight)
        if personal is not None:
            personal.leave(model, cid)
    return updates


def aggregate_round(session: RoundSession, updates: dict[int, ClientUpdate],
                    dropouts: dict[int, str]) -> tuple[AggregationResult, float]:
    """Finishes the round and checks the result against plain FedAvg of the same survivors.

    The check is a feature of this in-memory engine: it holds every client's delta, which the server
    of a real deployment never sees.

    Returns:
        The result and ``max_abs_diff_vs_plain``.

    Raises:
        RoundAborted: if the backend could not aggregate.
    """
    result = session.finish(dropouts)
    deltas = {c: u.delta for c, u in updates.items()}
    weights = {c: u.weight for c, u in updates.items()}
    reference = fedavg(deltas, weights, result.survivors)
    return result, max_abs_diff(result.average, reference)


def _base_model(cfg: RunConfig, prepared: Prepared) -> Any:
    """The base model: the ``--model`` checkpoint, or the tiny Llama freshly initialised (seeded)."""
    tok = prepared.tokenizer
    if cfg.model is not None:  # a trained checkpoint: no central warm-up
        base = load_checkpoint(cfg.model, cfg.dtype, cfg.seq_len + cfg.prompt_tokens)
    else:
        base = build_base_model(cfg, len(tok), int(tok.pad_token_id), int(tok.eos_token_id))
    torch.nn.Module.to(base, cfg.resolved_device)
    return base


def _wrap(cfg: RunConfig, prepared: Prepared, base: Any) -> torch.nn.Module:
    targets = lora_targets(base, cfg.lora_targets) if cfg.mode == "lora" else []
    return wrap_for_mode(base, cfg, int(prepared.tokenizer.eos_token_id), targets).to(cfg.resolved_device)


def assemble_model(cfg: RunConfig, prepared: Prepared) -> torch.nn.Module:
    """The run's model wrapped for its mode, before warm-up (a Flower node loads the driver's
    warmed-up weights into it)."""
    return _wrap(cfg, prepared, _base_model(cfg, prepared))


def build_model(cfg: RunConfig, prepared: Prepared, out_dir: Path,
                progress: RunProgress) -> tuple[torch.nn.Module, float | None]:
    """Builds the base model, warms it up on public data and wraps it for the mode."""
    base = _base_model(cfg, prepared)
    warm_loss = warm_up(base, cfg, prepared.public_blocks, progress) if cfg.model is None else None
    if not cfg.full_parameters:
        save_base(base, out_dir)
    return _wrap(cfg, prepared, base), warm_loss


def finish_round(model: torch.nn.Module, prepared: Prepared, global_state: StateDict, rnd: int,
                 sampled: list[int], outcome: RoundOutcome, batch_size: int,
                 server: ServerOptimizer) -> tuple[StateDict, dict[str, Any]]:
    """Lets the server optimiser apply the round's average to the global state, evaluates.

    Returns:
        The new global state (unchanged if the round aborted) and the round's record.
    """
    if outcome.result is None:
        losses = evaluate(model, prepared.eval_blocks, batch_size)
        return global_state, round_record(rnd, sampled, outcome.updates, None, outcome.dropouts, losses,
                                          None, aborted=outcome.aborted or "too few survivors")
    global_state = server.step(global_state, outcome.result.average)
    load_uploaded_state(model, global_state)
    losses = evaluate(model, prepared.eval_blocks, batch_size)
    return global_state, round_record(rnd, sampled, outcome.updates, outcome.result, outcome.dropouts, losses,
                                      outcome.diff)


@dataclass
class RoundOutcome:
    """What an engine's round gave the server: the aggregate (``None``: aborted, with the reason),
    the injected dropouts, and, in memory only, each client's update and the check against plain
    FedAvg (a deployed server sees neither)."""

    result: AggregationResult | None
    dropouts: dict[int, str]
    updates: dict[int, ClientUpdate] = field(default_factory=dict)
    diff: float | None = None
    aborted: str | None = None


class RoundRunner(ABC):
    """How an engine runs one round: the sampled clients train from the global state and the server
    gets their aggregate."""

    @property
    @abstractmethod
    def stages(self) -> tuple[str, ...]:
        """The stages at which a client can be made to drop out."""

    @abstractmethod
    def round(self, global_state: StateDict, rnd: int, sampled: list[int],
              dropouts: dict[int, str]) -> RoundOutcome:
        """Runs round ``rnd`` with the injected ``dropouts`` (client id -> stage)."""


class InMemoryRunner(RoundRunner):
    """Every client trains in this process on the one model; its party is built where it trains."""

    def __init__(self, backend: Backend, model: torch.nn.Module, prepared: Prepared, cfg: RunConfig,
                 progress: RunProgress, personal: PersonalPrompts | None) -> None:
        self.backend, self.model, self.prepared, self.cfg = backend, model, prepared, cfg
        self.progress, self.personal = progress, personal

    @property
    def stages(self) -> tuple[str, ...]:
        return self.backend.stages

    def round(self, global_state: StateDict, rnd: int, sampled: list[int],
              dropouts: dict[int, str]) -> RoundOutcome:
        session = self.backend.open_round(sampled, state_digest(global_state), rnd)
        updates = train_clients(self.model, global_state, self.prepared, sampled, self.cfg, rnd,
                                self.progress, session, self.personal)
        try:
            result, diff = aggregate_round(session, updates, dropouts)
        except RoundAborted as exc:
            return RoundOutcome(None, dropouts, updates, aborted=str(exc) or "too few survivors")
        return RoundOutcome(result, dropouts, updates, diff)


def round_line(record: dict[str, Any]) -> str:
    """One-line progress summary of a round."""
    if record["aborted"]:
        return f"round {record['round']}: aborted ({record['abort_reason']})"
    return (f"round {record['round']}: {len(record['survivors'])}/{len(record['sampled'])} "
            f"survived, eval loss {record['eval_loss_mean']:.4f}")


def setup(cfg: RunConfig, out_dir: Path, progress: RunProgress) -> Prepared:
    """Seeds torch, builds the corpus and tokenizer, and saves the tokenizer."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress.message("building corpus and training the tokenizer")
    # sft: the instruction data come from --data; the LM corpus (tokenizer, warm-up, held-out
    # loss) is the standard library's.
    try:
        corpus = load_corpus(cfg.data if cfg.task == "lm" else (), cfg.clients, cfg.dirichlet_alpha, cfg.seed,
                             cfg.max_chars_per_domain)
    except ValueError as exc:  # no documents, a domain too small, a split that leaves a client empty
        raise InputError(f"--data: {exc}") from None
    prepared = prepare_data(cfg, corpus)
    save_tokenizer(prepared.tokenizer, out_dir / "tokenizer")
    return prepared


DP_LEDGER = "dp_ledger.json"
"""Under DP: every released sum's honest noise count, written before the round's record."""


@dataclass
class Federated:
    """What the rounds produced: the final global state, the records, the held-out losses before
    federation, the DP budget spent (under DP) and why training stopped early (if it did)."""

    global_state: StateDict
    records: list[dict[str, Any]]
    initial: dict[str, float]
    budget: DpBudget | None = None
    dp_stop: str | None = None


def federate(cfg: RunConfig, prepared: Prepared, model: torch.nn.Module, backend: Backend,
             runner: RoundRunner, out_dir: Path, progress: RunProgress,
             personal: PersonalPrompts | None = None) -> Federated:
    """The server's side of a run, whatever the engine: sample the round's clients and who drops
    where, let ``runner`` train and aggregate, apply the server optimiser, evaluate, record; resume,
    checkpoints and the DP budget included.
    """
    global_state = uploaded_state(model, cfg)
    budget = backend.budget if isinstance(backend, SecureBackend) else None
    dp_stop: str | None = None
    initial = evaluate(model, prepared.eval_blocks, cfg.batch_size)
    progress.message(f"held-out loss after warm-up: {mean_loss(initial):.4f}")
    # Client sampling, who drops and where: three streams seeded from --seed.
    rngs = [np.random.default_rng([cfg.seed, k]) for k in (1, 2, 3)]  # ok: simulation, not a secret
    server = server_optimizer(cfg)
    records: list[dict[str, Any]] = []
    first = 1
    if cfg.resume is not None:
        saved = load_run_state(cfg.resume, cfg)
        global_state, initial, records, first = saved.global_state, saved.initial, saved.records, saved.round + 1
        load_uploaded_state(model, global_state)
        server.load_state_dict(saved.optimizer)
        restore_generators(rngs, saved.generators)
        if personal is not None:
            personal.restore(saved.personal, saved.personal_rounds)
        progress.message(f"resumed after round {saved.round} from {cfg.resume}")
    progress.start_rounds(cfg.rounds)
    if budget is not None:
        ledger = out_dir / DP_LEDGER
        previous = Path(cfg.resume).parent.parent / DP_LEDGER if cfg.resume is not None else ledger
        if cfg.resume is not None and previous.exists():  # every release of the run so far, even after its checkpoint
            try:
                budget.load(previous)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        else:
            for record in records:  # no ledger: the rounds the checkpoint records
                if not record["aborted"]:
                    budget.record(len(record["survivors"]))
        budget.ledger = ledger
    for rnd in range(first, cfg.rounds + 1):
        if budget is not None and not budget.allows_another_round():
            dp_stop = (f"stopped before round {rnd}: it could take epsilon past the target "
                       f"{budget.target.epsilon} (spent {budget.spent:.4g} in {len(budget.survivors)} rounds)")
            progress.message(dp_stop)
            break
        sampled, dropouts = schedule_round(cfg, runner.stages, rngs)
        outcome = runner.round(global_state, rnd, sampled, dropouts)
        global_state, record = finish_round(model, prepared, global_state, rnd, sampled, outcome,
                                            cfg.batch_size, server)
        if prepared.sft_heldout is not None:
            record["task_eval"] = task_scores(model, prepared, cfg)
        if budget is not None:
            record["epsilon"] = budget.record(len(record["survivors"]), rnd) if not record["aborted"] else budget.spent
            for private in ("max_abs_diff_vs_plain", "train_loss", "clipped_fraction"):
                record[private] = None  # functions of the noiseless deltas: not covered by epsilon
        records.append(record)
        progress.end_round(round_line(record))
        if cfg.save_every and rnd % cfg.save_every == 0:
            rows, counts = personal.state() if personal is not None else ({}, {})
            state = RunState(rnd, global_state, server.state_dict(), generator_states(rngs), initial, records,
                             rows, counts)
            save_run_state(out_dir / "checkpoints" / f"round-{rnd}", cfg, state)
    return Federated(global_state, records, initial, budget, dp_stop)


