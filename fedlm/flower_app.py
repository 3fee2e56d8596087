"""fedlm's clients as a Flower ClientApp: each SuperNode is one fedlm client.

A node answers three kinds of message:

- ``query.fedlm``: which client it is (its ``partition-id`` node config), so the ServerApp can map
  the clients it samples to nodes.
- ``train``: the global uploaded state (an ``ArrayRecord`` ``"arrays"``) and the round
  (``ConfigRecord`` ``"config"``). The node trains exactly as the in-memory engine's client does
  (:func:`fedlm.client.client_update`, same seed per client and round), and keeps the clipped delta
  and its weight in a private node-local file (0600 in a 0700 directory). Over a secure backend it
  replies with an acknowledgement only: the delta leaves the node only masked or encrypted, in the
  secure round that follows. Over ``plain`` it replies with the delta and its weight, in the clear.
- ``query.secagg``: one stage of the secure round, answered by :func:`secagg.adapters.flower.handle`
  from the stored delta (so a node process that handles a stage need not be the one that trained).

Every node derives what it needs from the run's work directory (``fedlm-workdir``: the run
configuration ``run.json`` and the warmed-up model ``model.safetensors``, which a deployment
distributes to its nodes beforehand, as it would a base checkpoint): its data partition, the
model, and the secure-aggregation settings, which it computes itself, so the server cannot choose
them for it. What it does not protect: the stored delta is the node's own data on its own disk,
kept until its next round.

Fault injection for tests and demos: the train message may name a protocol stage (``drop-at``) at
which the node fails (its ClientApp raises, so Flower returns an error reply), as the in-memory
engine's injected dropouts do. Dropouts the engine causes (a node that dies or answers too late)
are handled by the server's stage timeouts.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors import safe_open

from fedlm.config import RunConfig
from fedlm.errors import InputError
from secagg.adapters.roundstore import private_directory, write_private

if TYPE_CHECKING:  # torch and transformers load only where a node trains: a protocol step needs neither
    import torch

    from fedlm.prepare import Prepared

__all__ = ["MODEL_FILE", "RUN_FILE", "client_app", "load_run_config", "make_client_app", "secagg_settings",
           "node_model"]

RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
HELLO = "query.fedlm"
PLAIN_DROP = "train"
"""The plain backend's only dropout point: the node never uploads (it fails on the train message)."""
_UPDATE, _ROUND = "update.safetensors", "round.json"


def load_run_config(workdir: Path) -> RunConfig:
    """The run configuration the driver wrote to ``workdir``.

    Raises:
        InputError: the file is missing or not a fedlm run configuration.
    """
    try:
        data = json.loads((workdir / RUN_FILE).read_text(encoding="utf-8"))
        data["data"] = tuple(data["data"])
        data["lora_targets"] = tuple(data["lora_targets"])
        return RunConfig(**data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{workdir / RUN_FILE}: not a fedlm run configuration ({exc})") from None


def secagg_settings(cfg: RunConfig, max_weight: int) -> dict[str, Any]:
    """The secure-aggregation run-config keys of :func:`secagg.adapters.flower.session_config` that
    give the same protocol config as the in-memory engine's :class:`fedlm.backends.SecureBackend`."""
    return {
        "secagg-protocol": cfg.backend,
        "secagg-corrupt-fraction": float(cfg.corrupt),
        "secagg-dropout-fraction": float(max(cfg.dropout, 0.2)),
        "secagg-clip-bound": float(cfg.resolved_clip_bound),
        "secagg-fractional-bits": int(cfg.fractional_bits),
        "secagg-max-weight": int(max_weight),
    }


def prepare(cfg: RunConfig) -> "Prepared":
    """The run's tokenised data, derived from the configuration alone (deterministic in ``seed``: torch
    is seeded first, as the driver's :func:`fedlm.loop.setup` does)."""
    import torch

    from fedlm.corpus import load_corpus
    from fedlm.prepare import prepare_data

    torch.manual_seed(cfg.seed)
    try:
        corpus = load_corpus(cfg.data if cfg.task == "lm" else (), cfg.clients, cfg.dirichlet_alpha, cfg.seed,
                             cfg.max_chars_per_domain)
    except ValueError as exc:
        raise InputError(f"--data: {exc}") from None
    return prepare_data(cfg, corpus)


def node_model(cfg: RunConfig, prepared: "Prepared", workdir: Path) -> "torch.nn.Module":
    """The run's model as the driver saved it (after warm-up, wrapped for the mode)."""
    from safetensors.torch import load_file

    from fedlm.rounds import assemble_model  # the one way the model is built

    model = assemble_model(cfg, prepared)
    model.load_state_dict(load_file(str(workdir / MODEL_FILE)))
    return model


@dataclass
class _Node:
    cfg: RunConfig
    prepared: "Prepared"
    model: "torch.nn.Module"
    settings: dict[str, Any]


@functools.lru_cache(maxsize=2)
def _node(workdir: str) -> _Node:
    """What every node of a run rebuilds once per process (a simulation's worker keeps it)."""
    import torch

    cfg = load_run_config(Path(workdir))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared = prepare(cfg)
    model = node_model(cfg, prepared, Path(workdir))
    settings = secagg_settings(cfg, max(c.num_examples for c in prepared.clients))
    return _Node(cfg, prepared, model, settings)


def _workdir(context: Context, workdir: Path | None) -> Path:
    if workdir is not None:
        return workdir
    configured = context.run_config.get("fedlm-workdir")
    if not isinstance(configured, str) or not configured:
        raise InputError("the run config has no fedlm-workdir")
    return Path(configured)


def _partition(context: Context) -> int:
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError("the node config has no integer partition-id")
    return value


def _node_dir(context: Context, workdir: Path) -> Path:
    """This node's private directory (node config ``fedlm-node-dir``, or one under the workdir)."""
    configured = context.node_config.get("fedlm-node-dir")
    base = Path(str(configured)) if configured else workdir / "nodes" / f"client-{_partition(context)}"
    return private_directory(base)


def personal_file(node_dir: Path) -> Path:
    """Where a node keeps its private prompt rows (``--personal-tokens``) across rounds."""
    return node_dir / "personal_prompt.safetensors"


def _train(message: Message, context: Context, workdir: Path) -> Message:
    import torch
    from safetensors.torch import load_file, save

    from fedlm.client import client_update
    from fedlm.model import StateDict, personal_rows, set_personal_rows, uploaded_state
    from fedlm.rounds import state_digest

    node = _node(str(workdir))
    cfg, cid = node.cfg, _partition(context)
    if not 0 <= cid < len(node.prepared.clients):
        raise InputError(f"partition-id {cid} is not a client of this run ({cfg.clients} clients)")
    settings = message.content.config_records.get("config")
    arrays = message.content.array_records.get("arrays")
    if settings is None or arrays is None:
        raise InputError("a train message needs an ArrayRecord 'arrays' and a ConfigRecord 'config'")
    rnd, drop_at = settings.get("round"), settings.get("drop-at", "")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or not isinstance(drop_at, str):
        raise InputError("the train config needs an integer round and a string drop-at")
    if drop_at == PLAIN_DROP:
        raise RuntimeError(f"client {cid} configured to drop before uploading in round {rnd}")
    global_state: StateDict = {k: torch.from_numpy(np.array(a.numpy(), dtype=np.float32))
                               for k, a in arrays.items()}
    expected = uploaded_state(node.model, cfg)
    if {k: v.shape for k, v in global_state.items()} != {k: v.shape for k, v in expected.items()}:
        raise InputError("the global state does not match this run's model")
    node_dir = _node_dir(context, workdir)
    _check_fresh_round(node_dir, rnd)  # before training: a replayed round would train the same delta again
    if cfg.personal_tokens:
        rows = personal_file(node_dir)
        initial = personal_rows(node.model, cfg)
        set_personal_rows(node.model, cfg, load_file(str(rows))["personal_prompt"] if rows.exists() else initial)
    update = client_update(node.model, global_state, node.prepared.clients[cid], cfg, rnd)
    if cfg.personal_tokens:
        trained = personal_rows(node.model, cfg).contiguous()
        write_private(personal_file(node_dir), save({"personal_prompt": trained}))
        set_personal_rows(node.model, cfg, initial)
    if cfg.backend == "plain":  # no protocol: the delta in the clear
        reply = RecordDict({"arrays": ArrayRecord({k: Array(v.numpy()) for k, v in update.delta.items()}),
                            "metrics": MetricRecord({"num-examples": update.weight})})
        return Message(reply, reply_to=message)
    delta = {k: v.contiguous() for k, v in update.delta.items()}
    write_private(node_dir / _UPDATE, save(delta, metadata={"weight": str(update.weight), "round": str(rnd)}))
    plan = {"round": rnd, "drop-at": drop_at, "names": list(global_state), "settings": node.settings, "dp": cfg.dp,
            "shapes": [list(v.shape) for v in global_state.values()],
            "model": state_digest(global_state).hex()}  # bound into the session: one model for all
    write_private(node_dir / _ROUND, json.dumps(plan).encode())
    return Message(RecordDict({"fedlm.ack": ConfigRecord({"round": rnd})}), reply_to=message)


def _secagg(message: Message, context: Context, workdir: Path) -> Message:
    from secagg.adapters.flower import handle, unpack

    node_dir = _node_dir(context, workdir)
    step = unpack(message.content).step
    try:
        planned = json.loads((node_dir / _ROUND).read_text())
    except (OSError, ValueError):
        raise InputError("a secure-aggregation step before this node trained") from None
    if planned["drop-at"] == step:
        raise RuntimeError(f"node configured to drop at {step} in round {planned['round']}")
    update_path = node_dir / _UPDATE

    def get_update(_: Context, round_number: int) -> tuple[dict[str, np.ndarray], int]:
        if not update_path.exists():
            raise InputError("no stored update for this round")
        with safe_open(str(update_path), framework="np") as f:
            meta = f.metadata()
            if int(meta["round"]) != round_number:
                raise InputError(f"the stored update is of round {meta['round']}, not {round_number}")
            delta = {k: f.get_tensor(k) for k in planned["names"]}  # the server's order: the schema's
        if planned.get("dp"):
            _spend_dp_release(node_dir, workdir)  # committed before the update is masked
        update_path.unlink()  # taken once: never masked again
        return delta, int(meta["weight"])

    # the layout the server sent (its order is the schema's); the update itself is read once, when taken
    template = {name: np.zeros(shape, dtype=np.float32) for name, shape in zip(planned["names"], planned["shapes"])}
    scoped = Context(run_id=context.run_id, node_id=context.node_id,
                     node_config={**context.node_config, "secagg-state-dir": str(private_directory(node_dir / "secagg"))},
                     state=context.state, run_config=planned["settings"])
    config_for = _dp_session(workdir, template) if planned.get("dp") else None
    return handle(message, scoped, template, get_update, model=bytes.fromhex(planned["model"]), config_for=config_for)


_LAST_ROUND, _DP_RELEASES = "last_round.json", "dp_releases.json"


def _check_fresh_round(node_dir: Path, rnd: int) -> None:
    """Refuse a round at or below the last one this node trained for (a server replaying a round
    with the same model would get the same delta twice and difference it out of two sums); then
    record this one."""
    path = node_dir / _LAST_ROUND
    last = json.loads(path.read_text())["round"] if path.exists() else 0
    if rnd <= last:
        raise InputError(f"round {rnd} is not after the last round this node trained for ({last})")
    write_private(path, json.dumps({"round": rnd}).encode())


def _spend_dp_release(node_dir: Path, workdir: Path) -> None:
    """Under distributed DP, count this node's releases against the run's noise plan and refuse one
    past it: the accountant's epsilon covers ``dp_rounds`` releases, whatever the server does (it
    could otherwise replay one model and collect fresh noisy releases past the budget).

    Raises:
        ProtocolAbort: this node already made every release the plan covers.
    """
    from secagg import ProtocolAbort

    cfg = load_run_config(workdir)
    path = node_dir / _DP_RELEASES
    key = cfg.to_dict()
    plan = json.dumps({k: key[k] for k in ("dp_epsilon", "dp_delta", "dp_rounds", "dp_l2_clip", "seed",
                                            "clients_per_round")}, sort_keys=True)
    counts = json.loads(path.read_text()) if path.exists() else {}
    used = int(counts.get(plan, 0))
    if used >= cfg.resolved_dp_rounds:
        raise ProtocolAbort(f"this node's DP plan covers {cfg.resolved_dp_rounds} releases and it made them all")
    counts[plan] = used + 1
    write_private(path, json.dumps(counts).encode())


def _dp_session(workdir: Path, template: dict[str, np.ndarray]) -> Any:
    """Under distributed DP, the session config for n clients as fedlm's backend makes it (the DP
    encoding with the run's noise plan and survivor floor), derived by the node from the run's
    configuration: the plan is deterministic, so it is the server's too."""
    from secagg import Schema

    from fedlm.backends import SecureBackend, make_backend

    cfg = load_run_config(workdir)
    schema = Schema.of(template)
    backend = make_backend(cfg, 1, None)
    assert isinstance(backend, SecureBackend)
    backend.config_for(cfg.clients_per_round, schema)  # plans the noise, as the server did
    return lambda n: backend.config_for(n, schema)


def _hello(message: Message, context: Context) -> Message:
    return Message(RecordDict({"fedlm.node": ConfigRecord({"partition-id": _partition(context)})}),
                   reply_to=message)


def make_client_app(workdir: Path | None = None) -> ClientApp:
    """The fedlm ClientApp; ``workdir`` (else the run config's ``fedlm-workdir``) holds the run."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _train(message, context, _workdir(context, workdir))

    @app.query("secagg")
    def secagg_step(message: Message, context: Context) -> Message:
        return _secagg(message, context, _workdir(context, workdir))

    @app.query("fedlm")
    def hello(message: Message, context: Context) -> Message:
        return _hello(message, context)

    return app


client_app = make_client_app()
"""For a Flower App's ``pyproject.toml`` (``clientapp = "fedlm.flower_app:client_app"``)."""
