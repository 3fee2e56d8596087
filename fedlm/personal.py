"""Personalised soft prompts (``--mode prompt --personal-tokens P``).

Each client keeps P private soft tokens after the shared ones. Only the shared rows go through
secure aggregation (:func:`fedlm.model.uploaded_state` drops the rest); the private rows never
leave the client, persist across the rounds it is sampled in, and are saved as its own checkpoint.
The global model's private rows stay at their initial value (what a new client starts from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from fedlm.config import RunConfig
from fedlm.model import personal_rows, set_personal_rows
from fedlm.prepare import Prepared

__all__ = ["PersonalPrompts"]


class PersonalPrompts:
    """Every client's private prompt rows, swapped into the one shared model around its training."""

    def __init__(self, model: torch.nn.Module, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.initial = personal_rows(model, cfg)
        self.rows: dict[int, torch.Tensor] = {}
        self.rounds: dict[int, int] = {}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """The private rows (``client-<id>``) and how many rounds each client trained, for checkpoints."""
        return ({f"client-{c}": r for c, r in self.rows.items()}, {str(c): n for c, n in self.rounds.items()})

    def restore(self, rows: dict[str, torch.Tensor], rounds: dict[str, int]) -> None:
        """Takes back what :meth:`state` returned."""
        self.rows = {int(k.split("-", 1)[1]): v for k, v in rows.items()}
        self.rounds = {int(k): int(v) for k, v in rounds.items()}

    def enter(self, model: torch.nn.Module, client: int) -> None:
        """Put ``client``'s private rows into the model before it trains."""
        set_personal_rows(model, self.cfg, self.rows.get(client, self.initial))

    def leave(self, model: torch.nn.Module, client: int) -> None:
        """Keep what ``client`` trained, and put the global (initial) private rows back."""
        self.rows[client] = personal_rows(model, self.cfg)
        self.rounds[client] = self.rounds.get(client, 0) + 1
        set_personal_rows(model, self.cfg, self.initial)

    def report(self, model: torch.nn.Module, prepared: Prepared, out_dir: Path,
               score: Callable[[torch.nn.Module], dict[str, dict[str, float]]]) -> dict[str, Any]:
        """Per client: held-out metrics on its own mix (domains for lm, tasks for sft) with the
        global prompt and with its personalised one; writes ``OUT/personal/client-<id>.safetensors``.

        ``score(model)`` gives metrics (``loss``, and ``accuracy`` for sft) per domain or task.
        """
        cfg = self.cfg
        global_scores = score(model)
        clients: list[dict[str, Any]] = []
        for cid in sorted(self.rows):
            mix = {k: n for k, n in prepared.clients[cid].domains.items() if k in global_scores}
            total = sum(mix.values())
            if not total:
                continue
            self.enter(model, cid)
            own = score(model)
            set_personal_rows(model, cfg, self.initial)
            path = out_dir / "personal" / f"client-{cid}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"personal_prompt": self.rows[cid].contiguous()}, str(path))
            entry: dict[str, Any] = {"client": cid, "rounds_trained": self.rounds[cid], "prompt_file": str(path)}
            for metric in global_scores[next(iter(mix))]:
                entry[f"global_{metric}"] = sum(global_scores[k][metric] * n for k, n in mix.items()) / total
                entry[f"personal_{metric}"] = sum(own[k][metric] * n for k, n in mix.items()) / total
            clients.append(entry)
        better = sum(c["personal_loss"] < c["global_loss"] for c in clients)
        return {"personal_tokens": cfg.personal_tokens, "clients": clients,
                "personal_better": better, "clients_evaluated": len(clients)}
