"""ServerApp and ClientApp of the example: every SuperNode contributes a small LoRA-shaped update.

The update of a node is a fixed function of its ``partition-id`` node config and the round, so the
exact weighted average is known in advance (see :func:`partition_update`). The protocol is the run
config's ``secagg-protocol`` (secagg+, secagg or ckks). For tests and demos a node can be told to
fail at one step with the node config ``drop-at`` (a step name: advertise, then share, mask,
[consistency,] unmask for SecAgg; generate, upload, decrypt for CKKS) and ``drop-mode``:

- ``"crash"``: the ClientApp raises; Flower sends an error reply (the node stays up and answers
  later steps it is asked);
- ``"silent"``: the ClientApp never answers in time: it sleeps ``drop-sleep`` seconds;
- ``"kill"``: the ClientApp SIGKILLs its own ``flower-supernode`` (the nearest ancestor process whose
  command is ``flower-supernode``, found through ``/proc`` parent links) and exits at once: the node
  is gone for the rest of the run, as if its machine died. Nothing else is ever signalled; with no
  such ancestor (e.g. in-process tests) it raises like ``"crash"``.

The ClientApp is written out here rather than taken from ``make_client_app`` to show how the secagg
step composes with a ClientApp of one's own (one that also trains, say).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
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


def supernode_ancestor(pid: int | None = None) -> int | None:
    """The nearest ancestor of ``pid`` (default: this process) running ``flower-supernode``, or None.

    Follows the parent links of ``/proc/<pid>/stat`` up to init; a process counts if the program
    or the script it runs (``argv[0]`` or ``argv[1]``) is named ``flower-supernode``.
    """
    current = os.getpid() if pid is None else pid
    while current > 1:
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            current = int(stat[stat.rindex(")") + 2 :].split()[1])
            argv = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")[:2]
        except (OSError, ValueError):
            return None
        if any(os.path.basename(arg) == b"flower-supernode" for arg in argv):
            return current
    return None


def _maybe_drop(context: Context, step: str) -> None:
    if context.node_config.get("drop-at") != step:
        return
    mode = context.node_config.get("drop-mode", "crash")
    if mode == "silent":
        time.sleep(float(context.node_config.get("drop-sleep", 3600.0)))
    if mode == "kill" and (supernode := supernode_ancestor()) is not None:
        os.kill(supernode, signal.SIGKILL)
        os._exit(137)  # this ClientApp dies with its node: no reply, no cleanup
    raise RuntimeError(f"node configured to drop at {step}")


client_app = ClientApp()


@client_app.query("secagg")
def secagg_step(message: Message, context: Context) -> Message:
    _maybe_drop(context, unpack(message.content).step)
    return handle(message, context, TEMPLATE, _update)


def _log_round(round_number: int, outcome: Any) -> None:
    print(f"secagg round {round_number}: survivors {outcome.survivor_nodes}, dropped {outcome.dropped}", flush=True)


server_app = make_server_app(TEMPLATE, on_result=_log_round)
