"""``fedlm run --engine flower``: the same training, with every client a Flower SuperNode.

The driver (this process) builds the run as the in-memory engine does (corpus, tokenizer, warm-up),
writes the run's work directory ``OUT/flower`` (``run.json`` and the warmed-up ``model.safetensors``,
what a deployment hands its nodes beforehand) and starts a Flower run:

- ``simulation`` (default): Flower's simulation runtime (Ray), one virtual SuperNode per client,
  the ServerApp in this process;
- ``local-deployment``: a real SuperLink and one ``flower-supernode`` per client on 127.0.0.1
  (:mod:`secagg.adapters.flower_launcher`), the ServerApp in Flower's own ``flwr-serverapp``
  process, every process stopped at the end. ``examples/fedlm_flower_app`` is that App.

The ServerApp (:func:`serve`) runs fedlm's server loop (:func:`fedlm.loop.federate`: sampling,
injected dropouts, the server optimiser, evaluation, checkpoints) with a :class:`FlowerRunner`: each
round it sends the global state to the sampled clients' nodes as ``train`` messages, then runs one
secure-aggregation round over Flower messages with the nodes that trained
(:func:`secagg.adapters.flower.run_round`). Nodes that fail or time out in a stage are dropped by
the engine, as are the injected dropouts. It writes the records and the final global state to the
work directory, which the driver reads back to finish the report (``engine: "flower"``).

Same seeds give the same global model as ``--engine in-memory``, within the quantisation bound: clients
train with the same per-client seeds from the same state, and each engine's secure average is within
its ``error_bound`` of the exact weighted average of the same clipped deltas (the rounding is
stochastic, so the two are not bit-equal). Unless ``--no-flower-compare``, the driver replays every
round on the in-memory engine from the Flower run's global state with the same survivors and reports
the difference (``engine_check``). Free-running runs are not compared: local AdamW steps amplify a
one-ulp difference in the starting model after the first round, whatever the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load_file, save_file

from secagg import SecAggError, Schema
from secagg.adapters import flower as fa
from secagg.protocols.registry import PROTOCOLS

from fedlm.backends import AggregationResult, Backend, SecureBackend, fedavg, make_backend
from fedlm.config import RunConfig
from fedlm.errors import InputError
from fedlm.flower_app import (HELLO, MODEL_FILE, PLAIN_DROP, RUN_FILE, load_run_config, make_client_app, node_model,
                              personal_file, prepare, secagg_settings)
from fedlm.rounds import Federated, RoundOutcome, RoundRunner, federate, max_abs_diff, state_digest
from fedlm.model import StateDict, load_uploaded_state, uploaded_state
from fedlm.personal import PersonalPrompts
from fedlm.prepare import Prepared
from fedlm.progress import RunProgress

__all__ = ["FlowerRunner", "run_on_flower", "serve", "server_app"]

WORKDIR = "flower"
RESULT_FILE = "server-result.json"
FINAL_FILE = "global_state.safetensors"
APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "fedlm_flower_app"
TRAIN_TIMEOUT = 600.0
"""Seconds a node may take to train (a stage of the secure round has its own, shorter, timeout)."""
STAGE_TIMEOUT = 120.0


class _CountingGrid(fa.GridProxy):
    """The ServerApp's grid, counting the secure-aggregation bytes each node sends."""

    def __init__(self, inner: Grid) -> None:
        super().__init__(inner)
        self.bytes_from: dict[int, int] = {}

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            if not reply.has_error():
                try:
                    size = len(fa.unpack(reply.content).payload)
                except SecAggError:
                    continue
                node = reply.metadata.src_node_id
                self.bytes_from[node] = self.bytes_from.get(node, 0) + size
        return replies


class FlowerRunner(RoundRunner):
    """fedlm rounds over a Flower Grid: train messages, then one secure round with the nodes that trained.

    Args:
        grid: The ServerApp's grid.
        cfg: The run configuration.
        settings: The secure-aggregation run-config keys (:func:`fedlm.flower_app.secagg_settings`),
            the same the nodes derive for themselves.
        run_id: Flower's run id (bound into every secure round, as the nodes bind it).
    """

    def __init__(self, grid: Grid, cfg: RunConfig, settings: dict[str, Any], run_id: int,
                 stage_timeout: float = STAGE_TIMEOUT, train_timeout: float = TRAIN_TIMEOUT,
                 backend: Backend | None = None) -> None:
        self.grid, self.cfg, self.settings, self.run_id = _CountingGrid(grid), cfg, settings, run_id
        self.backend = backend
        """Under DP, the backend whose noise plan and survivor floor make each round's config (every
        node derives the same from the run's configuration)."""
        self.stage_timeout, self.train_timeout = stage_timeout, train_timeout
        self.keep_rounds: Path | None = None
        self.node_of = self._discover(cfg.clients)
        self.client_of = {node: cid for cid, node in self.node_of.items()}
        if cfg.backend == "plain":
            self._server_stage = {"before-upload": PLAIN_DROP}
        else:
            self._server_stage = {s.name: s.server_stage for s in PROTOCOLS[cfg.backend].dropout_stages(None)}

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._server_stage)

    def _discover(self, clients: int, timeout: float = 120.0) -> dict[int, int]:
        """Client id -> node id, from every node's answer to ``query.fedlm``."""
        deadline = time.monotonic() + timeout
        nodes: list[int] = []
        while len(nodes) < clients:
            nodes = sorted(set(self.grid.get_node_ids()))
            if time.monotonic() > deadline:
                raise InputError(f"only {len(nodes)} of {clients} Flower nodes connected within {timeout:g}s")
            if len(nodes) < clients:
                time.sleep(0.5)
        messages = [Message(RecordDict({}), node, HELLO) for node in nodes]
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        found: dict[int, int] = {}
        for reply in replies:
            record = None if reply.has_error() else reply.content.config_records.get("fedlm.node")
            cid = None if record is None else record.get("partition-id")
            if isinstance(cid, int) and not isinstance(cid, bool) and 0 <= cid < clients and cid not in found:
                found[cid] = reply.metadata.src_node_id
        if len(found) != clients:
            raise InputError(f"{len(found)} of {clients} clients found among the Flower nodes "
                             "(each node needs a distinct partition-id 0..clients-1)")
        return found

    def round(self, global_state: StateDict, rnd: int, sampled: list[int],
              dropouts: dict[int, str]) -> RoundOutcome:
        start = time.perf_counter()
        arrays = {k: v.detach().cpu().numpy() for k, v in global_state.items()}
        messages = []
        for cid in sampled:
            content = RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "config": ConfigRecord({"round": rnd, "drop-at": self._server_stage.get(dropouts.get(cid, ""), "")}),
            })
            messages.append(Message(content, self.node_of[cid], "train", group_id=str(rnd)))
        replies = self.grid.send_and_receive(messages, timeout=self.train_timeout)
        trained: dict[int, Message] = {}
        for reply in replies:
            sender = self.client_of.get(reply.metadata.src_node_id)
            if sender is not None and sender in sampled and not reply.has_error():
                trained[sender] = reply
        failed = {cid: "train" for cid in sampled if cid not in trained}
        if self.cfg.backend == "plain":
            return self._plain(trained, failed, dropouts, start)
        if not trained:
            return RoundOutcome(None, dropouts, aborted="no client trained")
        nodes = [self.node_of[c] for c in sorted(trained)]
        if self.cfg.dp and isinstance(self.backend, SecureBackend):
            config = self.backend.config_for(len(nodes), Schema.of(arrays))
        else:
            config = fa.session_config(self.settings, len(nodes), arrays)  # numpy, as each node's template
        self.grid.bytes_from.clear()
        try:
            outcome = fa.run_round(self.grid, nodes, config, round_number=rnd,
                                   context=fa.round_context(self.run_id, rnd, state_digest(global_state), self.settings),
                                   stage_timeout=self.stage_timeout, poll_interval=0.05)
            # float64, as the in-memory engine hands it to the server optimiser, so both engines round alike
            average = {k: torch.as_tensor(np.asarray(v)).reshape(global_state[k].shape)
                       for k, v in outcome.result.average().items()}
        except SecAggError as exc:  # too few survivors, or a hostile input refused: nothing is released
            return RoundOutcome(None, dropouts, aborted=f"{type(exc).__name__}: {exc}")
        survivors = sorted(self.client_of[n] for n in outcome.survivor_nodes)
        dropped = {**failed, **{self.client_of[n]: step for n, step in outcome.dropped.items()}}
        if self.keep_rounds is not None:  # the engine check replays each round from these
            save_file({**{f"before/{k}": v.contiguous() for k, v in global_state.items()},
                       **{f"average/{k}": v.contiguous() for k, v in average.items()}},
                      str(self.keep_rounds / f"round-{rnd}.safetensors"))
        sent = [self.grid.bytes_from.get(self.node_of[c], 0) for c in survivors]
        result = AggregationResult(average, survivors, dropped, float(np.mean(sent)) if sent else 0.0,
                                   time.perf_counter() - start, float(outcome.result.error_bound))
        return RoundOutcome(result, dropouts)

    def _plain(self, trained: dict[int, Message], failed: dict[int, str], dropouts: dict[int, str],
               start: float) -> RoundOutcome:
        deltas: dict[int, StateDict] = {}
        weights: dict[int, int] = {}
        for cid, reply in trained.items():
            parsed = _plain_update(reply)
            if parsed is None:
                failed[cid] = "upload"  # a malformed upload is a dropout, never part of the sum
            else:
                deltas[cid], weights[cid] = parsed
        if not deltas:
            return RoundOutcome(None, dropouts, aborted="no client survived the round")
        survivors = sorted(deltas)
        average = fedavg(deltas, weights, survivors)
        nbytes = float(sum(t.numel() * t.element_size() for t in deltas[survivors[0]].values()))
        result = AggregationResult(average, survivors, failed, nbytes, time.perf_counter() - start, 0.0)
        return RoundOutcome(result, dropouts)


def _plain_update(reply: Message) -> tuple[StateDict, int] | None:
    """A plain upload's delta and weight, or None if it is not one."""
    arrays, metrics = reply.content.array_records.get("arrays"), reply.content.metric_records.get("metrics")
    if arrays is None or metrics is None:
        return None
    weight = metrics.get("num-examples")
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        return None
    return {k: torch.from_numpy(np.asarray(a.numpy(), dtype=np.float32)) for k, a in arrays.items()}, weight


def serve(grid: Grid, context: Context, workdir: Path, progress: RunProgress | None = None) -> None:
    """The ServerApp body: fedlm's server loop over ``grid``; writes the records and the final
    global state to ``workdir``."""
    cfg = load_run_config(workdir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared = prepare(cfg)
    model = node_model(cfg, prepared, workdir)
    max_weight = max(c.num_examples for c in prepared.clients)
    backend = make_backend(cfg, max_weight, uploaded_state(model, cfg))
    runner = FlowerRunner(grid, cfg, secagg_settings(cfg, max_weight), context.run_id, backend=backend)
    if cfg.flower_compare:
        runner.keep_rounds = workdir / "rounds"
        runner.keep_rounds.mkdir(exist_ok=True)
    # The DP ledger and checkpoints go where the in-memory engine writes them: OUT, the workdir's parent.
    fed = federate(cfg, prepared, model, backend, runner, workdir.parent, progress or RunProgress())
    save_file({k: v.contiguous() for k, v in fed.global_state.items()}, str(workdir / FINAL_FILE))
    result = {"records": fed.records, "initial": fed.initial,
              "nodes": {str(c): n for c, n in sorted(runner.node_of.items())},
              "dp": None if fed.budget is None else {**fed.budget.report(), "stopped": fed.dp_stop}}
    temporary = workdir / (RESULT_FILE + ".tmp")
    temporary.write_text(json.dumps(result), encoding="utf-8")
    temporary.replace(workdir / RESULT_FILE)
    path = context.run_config.get("fedlm-result-path")
    if isinstance(path, str) and path:  # the launcher waits for this file
        shutil.copyfile(workdir / RESULT_FILE, path)


server_app = ServerApp()
"""For a Flower App's ``pyproject.toml`` (``serverapp = "fedlm.flower_engine:server_app"``)."""


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    configured = context.run_config.get("fedlm-workdir")
    if not isinstance(configured, str) or not configured:
        raise InputError("the run config has no fedlm-workdir")
    serve(grid, context, Path(configured))


def write_workdir(cfg: RunConfig, model: torch.nn.Module, workdir: Path) -> None:
    """What every node and the ServerApp start from: the configuration and the warmed-up model."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    data = cfg.to_dict()
    (workdir / RUN_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
              str(workdir / MODEL_FILE))


def _simulate(cfg: RunConfig, workdir: Path, progress: RunProgress) -> None:
    from flwr.simulation import run_simulation

    # Ray then takes 127.0.0.1 as its node address and binds its services there, not on every interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context, workdir, progress)

    run_simulation(server_app=app, client_app=make_client_app(workdir), num_supernodes=cfg.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                 "log_to_driver": False}})


def _deploy(cfg: RunConfig, workdir: Path) -> float:
    from secagg.adapters.flower_launcher import run_local

    nodes = [{"partition-id": i, "num-partitions": cfg.clients} for i in range(cfg.clients)]
    run = run_local(APP_DIR, nodes, {"fedlm-workdir": str(workdir.resolve())}, timeout=3600.0,
                    result_key="fedlm-result-path")
    return run.seconds


def run_on_flower(cfg: RunConfig, prepared: Prepared, model: torch.nn.Module, out_dir: Path,
                  progress: RunProgress, personal: PersonalPrompts | None) -> tuple[Federated, dict[str, Any]]:
    """Runs the rounds on Flower and loads the final global state into ``model``.

    Returns:
        What the rounds produced and the report's extra fields (``flower``, and ``engine_check``
        unless ``--no-flower-compare``).

    Raises:
        InputError: the Flower run ended without a result.
    """
    workdir = out_dir / WORKDIR
    write_workdir(cfg, model, workdir)
    start = time.perf_counter()
    progress.message(f"Flower {cfg.flower_runtime}: {cfg.clients} SuperNodes")
    if cfg.flower_runtime == "simulation":
        _simulate(cfg, workdir, progress)
    else:
        _deploy(cfg, workdir)
    seconds = time.perf_counter() - start
    if not (workdir / RESULT_FILE).exists():
        raise InputError(f"the Flower run ended without a result in {workdir}")
    result = json.loads((workdir / RESULT_FILE).read_text(encoding="utf-8"))
    global_state = load_file(str(workdir / FINAL_FILE))
    load_uploaded_state(model, global_state)
    if personal is not None:  # each node's private prompt rows (simulation and local nodes share a disk)
        rows: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for cid in range(cfg.clients):
            path = personal_file(workdir / "nodes" / f"client-{cid}")
            if path.exists():
                rows[f"client-{cid}"] = load_file(str(path))["personal_prompt"]
                counts[str(cid)] = sum(cid in r["sampled"] and cid not in {d["client"] for d in r["dropped"]
                                                                         if d["stage"] == "train"}
                                       for r in result["records"])
        personal.restore(rows, counts)
    extra: dict[str, Any] = {"flower": {"runtime": cfg.flower_runtime, "supernodes": cfg.clients,
                                        "nodes": result["nodes"], "seconds": seconds,
                                        "workdir": str(workdir)}}
    if result.get("dp") is not None:
        extra["dp"], extra["epsilon"] = result["dp"], result["dp"]["epsilon"]
    if cfg.flower_compare:
        extra["engine_check"] = _compare(cfg, prepared, workdir, result["records"], progress)
    return Federated(global_state, result["records"], result["initial"], None, None), extra


def _compare(cfg: RunConfig, prepared: Prepared, workdir: Path, records: list[dict[str, Any]],
             progress: RunProgress) -> dict[str, Any]:
    """Replays every completed round in memory from the Flower run's global state before it, with the
    same survivors, and compares the aggregates.

    Both engines' averages are within their ``error_bound`` of the exact weighted average of the same
    clipped deltas (the rounding is stochastic, so the two are not bit-equal): they may differ by at
    most the sum of the two bounds (plus float32 rounding). Comparing round by round from the same
    state is what makes the check exact; two free-running runs drift apart after the first round,
    since local AdamW steps amplify a one-ulp difference in the starting model.
    """
    from fedlm.rounds import InMemoryRunner
    from fedlm.report import FLOAT32_SLACK

    if cfg.personal_tokens or cfg.dp:
        why = ("personal prompt rows live on the nodes; the in-memory engine cannot replay them" if cfg.personal_tokens
               else "under DP each engine's average carries its own noise: no quantisation bound relates them")
        return {"reference": None, "within_bound": None, "skipped": why}
    progress.message("engine check: replaying every round on the in-memory engine")
    reference_cfg = replace(cfg, engine="in-memory", save_every=0)
    model = node_model(reference_cfg, prepared, workdir)
    backend = make_backend(reference_cfg, max(c.num_examples for c in prepared.clients), uploaded_state(model, cfg))
    runner = InMemoryRunner(backend, model, prepared, reference_cfg, progress, None)
    rounds = []
    for record in records:
        if record["aborted"]:
            continue
        kept = load_file(str(workdir / "rounds" / f"round-{record['round']}.safetensors"))
        before = {k.split("/", 1)[1]: v for k, v in kept.items() if k.startswith("before/")}
        flower_average = {k.split("/", 1)[1]: v for k, v in kept.items() if k.startswith("average/")}
        outcome = runner.round(before, record["round"], list(record["survivors"]), {})
        if outcome.result is None:
            raise InputError(f"engine check: the in-memory replay of round {record['round']} aborted")
        plain = fedavg({c: u.delta for c, u in outcome.updates.items()},
                       {c: u.weight for c, u in outcome.updates.items()}, list(record["survivors"]))
        rounds.append({
            "round": record["round"],
            "max_abs_diff_vs_in_memory": max_abs_diff(flower_average, outcome.result.average),
            "max_abs_diff_vs_plain": max_abs_diff(flower_average, plain),
            "error_bound": record["error_bound"],
            "bound": record["error_bound"] + outcome.result.error_bound,
        })
    slack = FLOAT32_SLACK * cfg.resolved_clip_bound
    return {
        "reference": "in-memory engine, each round replayed from the Flower run's global state with its survivors",
        "rounds": rounds,
        "max_abs_diff": max((r["max_abs_diff_vs_in_memory"] for r in rounds), default=None),
        "float32_slack": slack,
        "within_bound": bool(rounds) and all(r["max_abs_diff_vs_in_memory"] <= r["bound"] + slack
                                             and r["max_abs_diff_vs_plain"] <= r["error_bound"] + slack
                                             for r in rounds),
    }
