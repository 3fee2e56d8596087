"""``fedlm run``: build, federate on the chosen engine, report (nanoGPT style: one flat function).

The round loop itself is :func:`fedlm.rounds.federate`, which both engines share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fedlm.backends import make_backend
from fedlm.config import RunConfig
from fedlm.errors import InputError
from fedlm.model import parameter_count, save_final, uploaded_state
from fedlm.personal import PersonalPrompts
from fedlm.prepare import Prepared
from fedlm.progress import RunProgress
from fedlm.report import ACCURACY_PLOT, finish_report, write_outputs
from fedlm.rounds import (DP_LEDGER, InMemoryRunner, build_model, evaluate, federate, setup,
                          state_digest, task_scores)
from fedlm.samples import continuations, held_out_prompts

__all__ = ["DP_LEDGER", "build_model", "run", "setup", "state_digest"]


def _scores(model: torch.nn.Module, prepared: Prepared, cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Metrics per domain (lm: held-out loss) or per task (sft: loss and accuracy)."""
    if prepared.sft_heldout is not None:
        return {t: {"loss": s["loss"], "accuracy": s["accuracy"]} for t, s in task_scores(model, prepared, cfg).items()}
    return {d: {"loss": v} for d, v in evaluate(model, prepared.eval_blocks, cfg.batch_size).items()}


def run(cfg: RunConfig, progress: RunProgress | None = None) -> dict[str, Any]:
    """Runs the whole federated training and writes report, plots and model.

    Args:
        cfg: The run configuration.
        progress: Where to show progress; silent when ``None``.

    Returns:
        The JSON report (also written to ``cfg.report_path``).
    """
    progress = progress or RunProgress()
    start = time.perf_counter()
    try:
        progress.message(f"device: {cfg.resolved_device}")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    out_dir = Path(cfg.out)
    prepared = setup(cfg, out_dir, progress)
    model, warm_loss = build_model(cfg, prepared, out_dir, progress)
    initial_tasks = task_scores(model, prepared, cfg)
    prompts = held_out_prompts(prepared.eval_blocks, cfg.seq_len)
    before = continuations(model, prompts, prepared.tokenizer, cfg.seq_len)
    personal = PersonalPrompts(model, cfg) if cfg.personal_tokens else None
    extra: dict[str, Any] = {}
    if cfg.engine == "flower":
        from fedlm.flower_engine import run_on_flower  # flwr loads only for this engine

        fed, extra = run_on_flower(cfg, prepared, model, out_dir, progress, personal)
    else:
        backend = make_backend(cfg, max(c.num_examples for c in prepared.clients), uploaded_state(model, cfg))
        runner = InMemoryRunner(backend, model, prepared, cfg, progress, personal)
        fed = federate(cfg, prepared, model, backend, runner, out_dir, progress, personal)
    after = continuations(model, prompts, prepared.tokenizer, cfg.seq_len)
    personalization = (personal.report(model, prepared, out_dir, lambda m: _scores(m, prepared, cfg))
                       if personal is not None else None)
    artifact = save_final(model, out_dir)
    report = finish_report(cfg, cfg.engine, fed.initial, fed.records, warm_loss, parameter_count(model),
                           fed.global_state, prepared, artifact, time.perf_counter() - start)
    report.update(extra)
    report["samples"] = [{"domain": d, "prompt": before[d]["prompt"], "before": before[d]["continuation"],
                          "after": after[d]["continuation"]} for d in sorted(prompts)]
    if personalization is not None:
        report["personalization"] = personalization
    if fed.budget is not None:
        report["dp"] = {**fed.budget.report(), "stopped": fed.dp_stop}
        report["epsilon"] = fed.budget.spent
    if prepared.sft_heldout is not None:
        report["task"] = cfg.task
        report["initial_task_eval"] = initial_tasks
        report["final_task_eval"] = fed.records[-1]["task_eval"] if fed.records else initial_tasks
        report["artifacts"]["plots"].append(str(out_dir / ACCURACY_PLOT))
    else:
        report["task"] = cfg.task
    write_outputs(report, cfg, out_dir)
    return report
