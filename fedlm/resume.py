"""Checkpoints of a run (``--save-every K``) and continuing one (``--resume DIR``).

A checkpoint directory ``OUT/checkpoints/round-R`` holds the global uploaded state after round R
(``global_state.safetensors``, loadable with safetensors or as a peft adapter state), the server
optimiser's moments (``server_optimizer.safetensors``), the clients' private prompt rows
(``personal_prompts.safetensors``, never uploaded: the checkpoint is the simulation's, holding
every client) and ``state.json``: the round, the run
configuration, the client-sampling and dropout generators' states, the held-out losses before
federation and every round's record so far. The base model of the peft modes is rebuilt from the
configuration (its warm-up is seeded), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedlm.config import RunConfig
from fedlm.errors import InputError
from fedlm.model import StateDict

__all__ = ["RunState", "save_run_state", "load_run_state", "generator_states", "restore_generators"]

STATE_FILE = "state.json"
GLOBAL_FILE = "global_state.safetensors"
OPTIMIZER_FILE = "server_optimizer.safetensors"
PERSONAL_FILE = "personal_prompts.safetensors"
# Flags that may differ between the run that wrote a checkpoint and the one resuming it.
_MAY_DIFFER = {"rounds", "out", "report", "quiet", "threads", "save_every", "resume"}


@dataclass
class RunState:
    """Everything a run needs to continue after round ``round``."""

    round: int
    global_state: StateDict
    optimizer: dict[str, torch.Tensor]
    generators: list[dict[str, Any]]
    initial: dict[str, float]
    records: list[dict[str, Any]]
    personal: dict[str, torch.Tensor] = field(default_factory=dict)
    personal_rounds: dict[str, int] = field(default_factory=dict)


def save_run_state(directory: Path, cfg: RunConfig, state: RunState) -> Path:
    """Writes the checkpoint of ``state`` into ``directory`` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.global_state.items()}, str(directory / GLOBAL_FILE))
    save_file({k: v.contiguous() for k, v in state.optimizer.items()}, str(directory / OPTIMIZER_FILE))
    save_file({k: v.contiguous() for k, v in state.personal.items()}, str(directory / PERSONAL_FILE))
    meta = {"round": state.round, "config": cfg.to_dict(), "generators": state.generators,
            "initial_eval_loss_by_domain": state.initial, "rounds": state.records,
            "personal_rounds": state.personal_rounds}
    (directory / STATE_FILE).write_text(json.dumps(meta, indent=1))
    return directory


def load_run_state(directory: str, cfg: RunConfig) -> RunState:
    """Reads a checkpoint written by a run with the same configuration (but for ``_MAY_DIFFER``).

    Raises:
        InputError: no checkpoint there, a different configuration, or no round left to run.
    """
    path = Path(directory)
    try:
        meta = json.loads((path / STATE_FILE).read_text())
        global_state = load_file(str(path / GLOBAL_FILE))
        optimizer = load_file(str(path / OPTIMIZER_FILE))
        personal = load_file(str(path / PERSONAL_FILE))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume {directory}: not a fedlm checkpoint ({type(exc).__name__})") from None
    saved, now = meta.get("config", {}), cfg.to_dict()
    differ = sorted(k for k in now if k not in _MAY_DIFFER and saved.get(k) != now[k])
    if differ:
        raise InputError(f"--resume {directory}: the checkpoint was written with other values of "
                         f"{', '.join(differ)}; resume with the same flags")
    done = int(meta["round"])
    if done >= cfg.rounds:
        raise InputError(f"--resume {directory}: the checkpoint already has {done} rounds; "
                         f"ask for more with --rounds")
    return RunState(done, global_state, optimizer, meta["generators"], meta["initial_eval_loss_by_domain"],
                    meta["rounds"], personal, meta.get("personal_rounds", {}))


def generator_states(rngs: list[np.random.Generator]) -> list[dict[str, Any]]:
    """The JSON-ready states of numpy generators."""
    return [dict(r.bit_generator.state) for r in rngs]


def restore_generators(rngs: list[np.random.Generator], states: list[dict[str, Any]]) -> None:
    """Puts numpy generators back in the states :func:`generator_states` recorded."""
    for rng, state in zip(rngs, states, strict=True):
        rng.bit_generator.state = state
