"""What does secure aggregation add to a Flower round? Plain FedAvg, ours and Flower's SecAgg+, one run.

For each point (n nodes, d float32 parameters, no dropout or one node dropped at the mask step)
this runs, interleaved and repeated, a 2-round federation of:

* ``FedAvg``: Flower's Message-API ``flwr.serverapp.strategy.FedAvg``, no secure aggregation;
* ``ours <protocol>``: ``SecAggStrategy(FedAvg(...))`` with ``secagg_mod`` nodes (SecAgg+; at n = 4
  also SecAgg and CKKS), node state in a temporary directory on disk; ``ours secagg+ (tmpfs)`` is
  the same with the state under ``/dev/shm``, which prices the store's writes and fsyncs;
* ``Flower secagg+``: Flower's own ``SecAggPlusWorkflow`` + legacy ``FedAvg`` + ``secaggplus_mod``
  (:class:`benchmarks.flower_inprocess.FlowerSecAggPlus`), with ``num_shares = k + 1`` and
  ``reconstruction_threshold = t`` from our SecAgg+ session for the same n.

All of them go over the same transport, :mod:`benchmarks.flower_inprocess`'s ``InProcessGrid``:
every message crosses it as flwr's protobuf both ways (as through a SuperLink), each node is one
``ClientApp`` with its own persistent ``Context``, called in this process one after another, so a
round's wall time is the server's work plus every node's; no network, no Ray. Every node trains the
same way: it adds its fixed synthetic update (:func:`~benchmarks.flower_inprocess.client_update`) to
the arrays it received, with weight 1. A dropped node answers nothing from its step on in every
round, and the grid replies for it with the error a SuperLink sends for a node whose heartbeat
stopped, so no server waits out a timeout: plain FedAvg loses the node's train reply; ours loses it
at ``mask`` (CKKS: ``upload``), after it trained and acknowledged; Flower's at
``collect_masked_vectors``, the stage in which its nodes train and mask.

Reported per round (the run's wall time / rounds, median over repeats): seconds, the ratio and the
difference to plain FedAvg of the same repeat's point, ours / Flower's SecAgg+, the seconds spent
in the nodes' calls (decode, ClientApp, encode) and the rest (the server and the transport's
server side), and the protobuf bytes each surviving node uploaded and downloaded. The final model is
checked against the exact result (``max_abs_error``).

    PYTHONPATH=. python -m benchmarks.flower_overhead --json benchmarks/results/flower_overhead.json \\
        --text benchmarks/results/flower_overhead.txt          # n 4, 10; d 100,000, 1,000,000
    PYTHONPATH=. python -m benchmarks.flower_overhead --quick  # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from secagg.adapters.flower import MESSAGE_TYPE, session_config, unpack
from secagg.adapters.flower_strategy import SecAggStrategy, secagg_mod, secagg_query
from secagg.params import SecAggConfig

from .bench import machine
from .flower_inprocess import FIRST_NODE, FlowerSecAggPlus, client_update, gone_from, make_grid_class, \
    stamp_server_identity
from .tables import _table

RUN_ID = 1
SEED = 0
PLAIN, FLOWER = "FedAvg", "Flower secagg+"
TMPFS = Path("/dev/shm")
STEPS = ("train", "advertise", "share", "generate", "mask", "upload", "consistency", "unmask", "decrypt")
"""Every step a node of ours can be asked for, in round order (a node dropped at one misses the later)."""
DROP_STEP = {PLAIN: "train", "secagg": "mask", "secagg+": "mask", "ckks": "upload"}


@dataclass(frozen=True)
class Point:
    """One configuration: n nodes, d float32 parameters, and whether the last node drops."""

    n: int
    dim: int
    drop: bool


@dataclass(frozen=True)
class Sample:
    """One run of one system at one point; times and bytes are per round."""

    seconds: float
    client_seconds: float
    upload_bytes: float
    download_bytes: float
    completed: bool
    max_abs_error: float
    node_steps: dict[str, float]
    """Step -> all nodes' seconds in calls for that step, per round."""


def _exact_error(model: np.ndarray, point: Point, rounds: int) -> float:
    survivors = range(point.n - 1) if point.drop else range(point.n)
    mean = np.mean([client_update(i, point.dim, SEED).astype(np.float64) for i in survivors], axis=0)
    return float(np.abs(model.astype(np.float64) - rounds * mean).max())


def _sample(grid: Any, wall: float, point: Point, rounds: int, completed: bool, error: float) -> Sample:
    """Per-round figures of a finished run (bytes: mean over the nodes that never dropped)."""
    kept = [FIRST_NODE + i for i in range(point.n - 1 if point.drop else point.n)]
    steps = {step: sum(seconds) / rounds for step, seconds in grid.client_seconds.items()}
    return Sample(wall / rounds, sum(steps.values()), statistics.fmean(grid.upload_bytes[k] for k in kept) / rounds,
                  statistics.fmean(grid.download_bytes[k] for k in kept) / rounds, completed, error, steps)


# ---------------------------------------------------------------- plain FedAvg and ours (Message API)
def _train(message: Message, context: Context) -> Message:
    """Add this node's fixed update to the received arrays (what every system's nodes do)."""
    node = int(context.node_config["index"])
    trained = {}
    for key, array in message.content.array_records["arrays"].items():
        value = array.numpy()
        trained[key] = Array(value + client_update(node, value.size, SEED).reshape(value.shape))
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=message)


def _client_app(secure: bool) -> ClientApp:
    app = ClientApp(mods=[secagg_mod] if secure else [])
    app.train()(_train)
    if secure:
        app.query("secagg")(secagg_query)
    return app


def _step(message: Message) -> str:
    kind = message.metadata.message_type
    return unpack(message.content).step if kind == MESSAGE_TYPE else kind.split(".")[0]


def run_message_api(point: Point, protocol: str | None, rounds: int, state_root: Path | None = None) -> Sample:
    """``rounds`` rounds of plain FedAvg (``protocol`` None) or of ``SecAggStrategy(FedAvg)``."""
    run_config = {} if protocol is None else {"secagg-protocol": protocol}
    with tempfile.TemporaryDirectory(dir=state_root) as tmp:
        contexts = {FIRST_NODE + i: Context(RUN_ID, FIRST_NODE + i, {"index": i, "secagg-state-dir": f"{tmp}/node{i}"},
                                            RecordDict(), dict(run_config)) for i in range(point.n)}
        app = _client_app(protocol is not None)
        dropped = {FIRST_NODE + point.n - 1: DROP_STEP[protocol or PLAIN]} if point.drop else {}
        grid = make_grid_class()({node: (app, c) for node, c in contexts.items()}, gone_from(dropped, STEPS),
                                 step_of=_step, unavailable_replies=True)
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=point.n,
                       min_available_nodes=point.n)
        server = Context(RUN_ID, 0, {}, RecordDict(), dict(run_config))
        strategy = inner if protocol is None else SecAggStrategy(inner, server, poll_interval=0.001)
        initial = ArrayRecord({"model": Array(np.zeros(point.dim, dtype=np.float32))})
        start = time.perf_counter()
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        wall = time.perf_counter() - start
    completed = protocol is None or len(getattr(strategy, "rounds", {})) == rounds
    return _sample(grid, wall, point, rounds, completed, _exact_error(result.arrays["model"].numpy(), point, rounds))


# ---------------------------------------------------------------- Flower's SecAgg+
def flower_shares(n: int, dim: int) -> tuple[int, int]:
    """(num_shares, threshold) for Flower: our SecAgg+ session's k + 1 (itself included) and t."""
    config = session_config({"secagg-protocol": "secagg+"}, n, np.zeros(dim, dtype=np.float32))
    assert isinstance(config, SecAggConfig)
    k = config.degree if config.degree is not None else n - 1
    return min(k + 1, n), config.threshold


def run_flower(point: Point, rounds: int) -> Sample:
    """``rounds`` rounds of Flower's SecAggPlusWorkflow with secaggplus_mod nodes."""
    shares, threshold = flower_shares(point.n, point.dim)
    flower = FlowerSecAggPlus(point.n, point.dim, shares, threshold, [point.n - 1] if point.drop else [], SEED,
                              unavailable_replies=True)
    wall = sum(flower.round(r) for r in range(1, rounds + 1))
    completed = len(flower.entered) == rounds
    error = flower.max_abs_error(rounds) if completed else float("nan")
    return _sample(flower.grid, wall, point, rounds, completed, error)


# ---------------------------------------------------------------- the run
def systems(point: Point, tmpfs: bool) -> dict[str, Callable[[int], Sample]]:
    """Name -> ``run(rounds)`` for every system measured at ``point``."""
    out: dict[str, Callable[[int], Sample]] = {
        PLAIN: lambda r: run_message_api(point, None, r),
        "ours secagg+": lambda r: run_message_api(point, "secagg+", r),
    }
    if tmpfs:
        out["ours secagg+ (tmpfs)"] = lambda r: run_message_api(point, "secagg+", r, TMPFS)
    if point.n <= 4:
        out["ours secagg"] = lambda r: run_message_api(point, "secagg", r)
        out["ours ckks"] = lambda r: run_message_api(point, "ckks", r)
    out[FLOWER] = lambda r: run_flower(point, r)
    return out


def measure(points: list[Point], rounds: int, repeats: int, tmpfs: bool,
            echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every system at every point, ``repeats`` times, interleaved; one row per (point, system)."""
    samples: dict[tuple[Point, str], list[Sample]] = {}
    for rep in range(repeats):
        for point in points:
            runs = list(systems(point, tmpfs).items())
            runs = runs[rep % len(runs):] + runs[:rep % len(runs)]  # rotate: no system always runs first
            for name, run in runs:
                samples.setdefault((point, name), []).append(run(rounds))
        echo(f"  repeat {rep + 1}/{repeats} done")
    rows = []
    for (point, name), got in samples.items():
        plain = samples[(point, PLAIN)]
        flower = samples[(point, FLOWER)]
        med = statistics.median(s.seconds for s in got)
        row: dict[str, Any] = asdict(point) | {"system": name, "repeats": len(got), "rounds": rounds}
        row |= {f"{k}": statistics.median(getattr(s, k) for s in got)
                for k in ("seconds", "client_seconds", "upload_bytes", "download_bytes")}
        row["server_seconds"] = statistics.median(s.seconds - s.client_seconds for s in got)
        row["completed"] = all(s.completed for s in got)
        row["max_abs_error"] = max(s.max_abs_error for s in got)
        row["vs_plain"] = statistics.median(s.seconds / p.seconds for s, p in zip(got, plain))
        row["plus_seconds"] = med - statistics.median(p.seconds for p in plain)
        row["vs_flower"] = statistics.median(s.seconds / f.seconds for s, f in zip(got, flower))
        row["seconds_min"], row["seconds_max"] = min(s.seconds for s in got), max(s.seconds for s in got)
        row["node_seconds_by_step"] = {k: statistics.median(s.node_steps.get(k, 0.0) for s in got)
                                       for k in got[0].node_steps}
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], rounds: int, repeats: int) -> str:
    """The rows as one plain-text table."""
    head = ["n", "d", "dropped", "system", "s / round", "vs FedAvg", "+ s / round", "vs Flower", "nodes s",
            "server s", "up KB / node", "down KB / node", "max error"]
    cells = [[str(r["n"]), f"{r['dim']:,}", "1" if r["drop"] else "0", r["system"] + ("" if r["completed"] else " !"),
              f"{r['seconds']:.3f}", *_vs(r), f"{r['client_seconds']:.3f}", f"{r['server_seconds']:.3f}", f"{r['upload_bytes'] / 1e3:,.1f}",
              f"{r['download_bytes'] / 1e3:,.1f}", f"{r['max_abs_error']:.1e}"] for r in rows]
    return _table(
        f"seconds per round (a {rounds}-round run's wall time / {rounds}, median of {repeats} interleaved repeats); "
        "vs = ratio to the same repeat's run; KB per surviving node per round (protobuf)", head, cells,
        ["nodes s = all nodes' calls (decode, ClientApp, encode); server s = the rest (server + transport);",
         "'!' = a run did not complete every round"])


def _vs(row: dict[str, Any]) -> list[str]:
    """The three comparison cells of a row: '-' where the row is the reference itself."""
    plain = ["-", "-"] if row["system"] == PLAIN else [f"{row['vs_plain']:.2f}x", f"{row['plus_seconds']:+.3f}"]
    return plain + (["-"] if row["system"] in (PLAIN, FLOWER) else [f"{row['vs_flower']:.2f}x"])


def _points(quick: bool) -> list[Point]:
    if quick:
        return [Point(4, 2_000, drop) for drop in (False, True)]
    return [Point(n, dim, drop) for n in (4, 10) for dim in (100_000, 1_000_000) for drop in (False, True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4, d = 2,000, one repeat (seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (quick: 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the rows, machine and date here")
    parser.add_argument("--text", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    stamp_server_identity(RUN_ID)
    tmpfs = TMPFS.is_dir() and os.access(TMPFS, os.W_OK)
    started = time.perf_counter()
    rows = measure(_points(args.quick), args.rounds, repeats, tmpfs, echo=lambda s: print(s, file=sys.stderr))
    wall = time.perf_counter() - started
    text = table(rows, args.rounds, repeats)
    print(text)
    print(f"wall {wall:.0f} s")
    if args.text:
        command = "python -m benchmarks.flower_overhead " + " ".join(sys.argv[1:] if argv is None else argv)
        args.text.write_text(f"# {command}   ({datetime.date.today()}, {wall:.0f} s wall)\n{text}\n")
    if args.json:
        report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                  "quick": args.quick, "rounds": args.rounds, "repeats": repeats, "wall_s": wall, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r["completed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
