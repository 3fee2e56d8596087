"""ServerApp and ClientApp of the example: every SuperNode contributes a small LoRA-shaped update.

The update of a node is a fixed function of its ``partition-id`` node config and the round, so the
exact weighted average is known in advance (see :func:`partition_update`). For tests and demos a
node can be told to fail at one step with the node config ``drop-at`` (a step name: advertise,
share, mask, unmask) and ``drop-mode``: ``"crash"`` (the ClientApp raises; Flower sends an error
reply) or ``"silent"`` (the ClientApp never answers in time: it sleeps ``drop-sleep`` seconds).

The ClientApp is written out here rather than taken from ``make_client_app`` to show how the secagg
step composes with a ClientApp of one's own (one that also trains, say).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from secagg.adapters.flower import handle, make_server_app, unpack

TEMPLATE = {
    "layers.0.q_proj.lora_A": np.zeros((2, 4), dtype=np.float32),
    "layers.0.q_proj.lora_B": np.zeros((4, 2), dtype=np.float32),
}


def partition_update(partition: int, round_number: int) -> tuple[dict[str, np.ndarray], int]:
    """The update and integer weight (``partition + 1``) that partition ``partition`` sends in a round."""
    out = {}
    for index, (name, zeros) in enumerate(TEMPLATE.items()):
        grid = np.arange(zeros.size, dtype=np.float64).reshape(zeros.shape)
        values = (partition + 1) * 0.125 - grid * 0.0625 * (index + 1) + 0.5 * round_number
        out[name] = values.astype(np.float32)
    return out, partition + 1


def _update(context: Context, round_number: int) -> tuple[dict[str, np.ndarray], int]:
    return partition_update(int(context.node_config["partition-id"]), round_number)


def _maybe_drop(context: Context, step: str) -> None:
    if context.node_config.get("drop-at") != step:
        return
    if context.node_config.get("drop-mode", "crash") == "silent":
        time.sleep(float(context.node_config.get("drop-sleep", 3600.0)))
    raise RuntimeError(f"node configured to drop at {step}")


client_app = ClientApp()


@client_app.query("secagg")
def secagg_step(message: Message, context: Context) -> Message:
    _maybe_drop(context, unpack(message.content).step)
    return handle(message, context, TEMPLATE, _update)


def _log_round(round_number: int, outcome: Any) -> None:
    print(f"secagg round {round_number}: survivors {outcome.survivor_nodes}, dropped {outcome.dropped}", flush=True)


server_app = make_server_app(TEMPLATE, on_result=_log_round)
