"""fedlm: federated pre-training, LoRA fine-tuning and prompt tuning of a small LM.

Clients train a tiny Llama locally on their non-IID text shards and their
updates are combined through plain FedAvg or a secure-aggregation protocol of
:mod:`secagg`. Everything runs offline: the corpus, tokenizer and model are all
built on the machine. Entry points: ``fedlm run`` (see :mod:`fedlm.cli`) and
:func:`fedlm.loop.run` with a :class:`fedlm.config.RunConfig`.
"""

from __future__ import annotations

from fedlm.config import BACKENDS, MODES, RunConfig

__all__ = ["BACKENDS", "MODES", "RunConfig", "run"]


def __getattr__(name: str) -> object:
    """Imports the training loop (and torch) only when ``fedlm.run`` is used."""
    if name == "run":
        from fedlm.loop import run

        return run
    raise AttributeError(f"module 'fedlm' has no attribute {name!r}")
