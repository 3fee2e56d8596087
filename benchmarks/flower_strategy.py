"""What does SecAggStrategy cost? Flower's FedAdam for 2 rounds, with and without the wrapper.

Both runs use the same ClientApp (tests/adapters/strategy_apps.py: each node adds a known update to
the received arrays) over the in-process LocalGrid of the adapter tests, so the difference is the
wrapper: the node-local store, the secure round (advertise, share, mask, unmask; SecAgg+ by
default) and the server's unmasking. All nodes run one after another in this process, so the wall
time is the sum of the server's and every node's work; no network. Prints a table and the ratio.

    PYTHONPATH=. python -m benchmarks.flower_strategy --params 1000000 --nodes 4 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import FedAdam

from secagg.adapters.flower_strategy import SecAggStrategy
from tests.adapters import strategy_apps as apps
from tests.adapters.localgrid import LocalGrid, stamp_task_identity

RUN_ID = 99
RUN_CONFIG = {"secagg-protocol": "secagg+", "secagg-max-weight": 8, "secagg-poll-interval": 0.001}


def _grid(root: Path, nodes: int, secure: bool) -> LocalGrid:
    contexts = {}
    for p in range(nodes):
        config = {"partition-id": p, "secagg-state-dir": str(root / f"node{p}")}
        contexts[1000 + p] = Context(RUN_ID, 1000 + p, config, RecordDict(), dict(RUN_CONFIG))
    return LocalGrid(apps.make_client_app(secure), contexts)


def one_run(params: int, nodes: int, secure: bool) -> dict[str, Any]:
    """Wall seconds of a 2-round FedAdam run (and the secure rounds' stage seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        grid = _grid(Path(tmp), nodes, secure)
        inner = FedAdam(fraction_evaluate=0.0, min_available_nodes=nodes)
        context = Context(RUN_ID, 0, {}, RecordDict(), dict(RUN_CONFIG))
        strategy = SecAggStrategy(inner, context) if secure else inner
        start = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=apps.initial_arrays(params), num_rounds=2)
        seconds = time.perf_counter() - start
    stages: dict[str, float] = {}
    if isinstance(strategy, SecAggStrategy):
        for outcome in strategy.rounds.values():
            for stage, s in outcome.stage_seconds.items():
                stages[stage] = stages.get(stage, 0.0) + s
    return {"seconds": seconds, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        stamp_task_identity(patch, RUN_ID)
        plain = [one_run(args.params, args.nodes, False) for _ in range(args.repeats)]
        secure = [one_run(args.params, args.nodes, True) for _ in range(args.repeats)]
    p = statistics.median(r["seconds"] for r in plain)
    s = statistics.median(r["seconds"] for r in secure)
    stages = {k: statistics.median(r["stages"][k] for r in secure) for k in secure[0]["stages"]}
    print(f"FedAdam, 2 rounds, {args.nodes} nodes, {args.params + 16:,} parameters (median of {args.repeats})")
    print(f"{'run':<28}{'wall s':>10}")
    print(f"{'FedAdam':<28}{p:>10.2f}")
    print(f"{'SecAggStrategy(FedAdam)':<28}{s:>10.2f}")
    for stage, seconds in stages.items():
        print(f"{'  secure ' + stage + ' (2 rounds)':<28}{seconds:>10.2f}")
    print(f"ratio secure / plain: {s / p:.1f}x   (+{s - p:.2f} s, +{(s - p) / 2:.2f} s per round)")


if __name__ == "__main__":
    main()
