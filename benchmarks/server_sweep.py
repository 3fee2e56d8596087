"""Server time against the dropout rate: our SecAgg+ server next to Flower's real ``SecAggPlusWorkflow``.

Both sides run the same graph: our (k, t) for the largest dropout rate of the sweep
(``SecAggConfig.secagg_plus`` with a semi-honest threat model, 10% corrupt), and Flower with
``num_shares = k + 1`` (a client and its k ring neighbours; k is even, so the share count is odd:
with an even count flwr 1.42's workflow sends clients ``share_num`` before it bumps it to the next
odd number, and every client then fails in share_keys with an IndexError) and
``reconstruction_threshold = t``. The same clients (same synthetic updates) vanish before sending
their masked input: the costly case, where the server must also remove the pairwise masks the
dropped clients shared with survivors. Ours runs through the public API (``secagg.new_server`` /
``new_client``, ``secagg.run_round``), Flower through :mod:`benchmarks.flower_inprocess`.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

import secagg
from secagg import FixedPoint, Schema, SecAggConfig, ThreatModel

from .flower_inprocess import FIRST_NODE, client_update, run_flower_round

CORRUPT = 0.1


def config_for(n: int, dim: int, max_dropout: float) -> SecAggConfig:
    """Our SecAgg+ config at Flower's precision (clip 8, 2^18 steps per unit: Flower's 2^22 over [-8, 8])."""
    encoding = FixedPoint(clip_bound=8.0, fractional_bits=18, max_clients=n)
    return SecAggConfig.secagg_plus(n, Schema.of(np.zeros(dim, dtype=np.float32)),
                                    ThreatModel.semi_honest(CORRUPT, max_dropout), encoding)


def dropped_clients(n: int, rate: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 7)  # ok: who drops, not a secret
    return sorted(int(c) for c in rng.choice(n, int(round(rate * n)), replace=False))


def ours_round(config: SecAggConfig, dropped: list[int], seed: int) -> dict[str, Any]:
    """One round of our SecAgg+ through the public API; server seconds by stage and the error."""
    n, dim = config.num_clients, config.schema.size
    server = secagg.new_server(config)
    clients = {i: secagg.new_client(config, i) for i in range(n)}
    updates = {i: client_update(i, dim, seed) for i in range(n)}
    for i, c in clients.items():
        c.set_input(updates[i])
    trace = secagg.run_round(server, clients, {i: "mask" for i in dropped})
    survivors = list(trace.result.survivors)
    exact = np.mean([updates[i].astype(np.float64) for i in survivors], axis=0)
    mask_times = trace.client_seconds.get("mask", [])
    upload = [trace.upload_bytes[i] for i in survivors]
    return {
        "server_s": sum(trace.server_seconds.values()),
        "unmask_s": trace.server_seconds.get("unmask", 0.0),
        "client_mask_stage_s": statistics.median(mask_times) if mask_times else 0.0,
        "bytes_per_parameter": statistics.fmean(upload) / dim,
        "max_abs_error": float(np.abs(trace.result.average_vector() - exact).max()),
    }


def sweep_point(n: int, dim: int, rate: float, config: SecAggConfig, repeats: int, flower_repeats: int,
                seed: int) -> dict[str, Any]:
    """Ours (median of ``repeats`` rounds) and Flower (median of ``flower_repeats`` rounds) at one rate."""
    dropped = dropped_clients(n, rate, seed)
    k = config.degree if config.degree is not None else n - 1
    ours = [ours_round(config, dropped, seed) for _ in range(repeats)]
    theirs = [run_flower_round(n, dim, k + 1, config.threshold, dropped, seed) for _ in range(flower_repeats)]
    row: dict[str, Any] = {
        "n": n, "dim": dim, "dropout": rate, "dropped": len(dropped), "k": k, "t": config.threshold,
        "ours_server_s": statistics.median(r["server_s"] for r in ours),
        "ours_unmask_s": statistics.median(r["unmask_s"] for r in ours),
        "ours_client_mask_stage_s": statistics.median(r["client_mask_stage_s"] for r in ours),
        "ours_bytes_per_parameter": ours[0]["bytes_per_parameter"],
        "ours_max_abs_error": max(r["max_abs_error"] for r in ours),
        "repeats": repeats, "flower_repeats": flower_repeats,
    }
    done = [r for r in theirs if r.completed]
    row["flower_completed"] = len(done) == len(theirs)
    row["flower_errors"] = sorted({e.split(": ", 1)[1] for r in theirs for e in r.client_errors})[:3]
    if done:
        survivors = [i for i in range(n) if i not in set(dropped)]
        row.update({
            "flower_server_s": statistics.median(r.server_s for r in done),
            "flower_unmask_s": statistics.median(r.unmask_s for r in done),
            "flower_fedavg_s": statistics.median(r.fedavg_s for r in done),
            "flower_client_mask_stage_s": statistics.median(
                statistics.median(r.client_s["collect_masked_vectors"]) for r in done),
            "flower_client_share_keys_s": statistics.median(
                statistics.median(r.client_s["share_keys"]) for r in done),
            "flower_bytes_per_parameter": statistics.fmean(
                done[0].upload_bytes[FIRST_NODE + i] for i in survivors) / dim,
            "flower_max_abs_error": max(r.max_abs_error or 0.0 for r in done),
        })
        row["server_ratio"] = row["ours_server_s"] / row["flower_server_s"]
        row["unmask_ratio"] = row["ours_unmask_s"] / row["flower_unmask_s"]
    return row


def run(sizes: list[int], dim: int, rates: list[float], repeats: int, flower_repeats: int,
        seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        config = config_for(n, dim, max(rates))
        for rate in rates:
            rows.append(sweep_point(n, dim, rate, config, repeats, flower_repeats, seed))
    return rows
