"""``secagg bench``: every performance question of the project, answered in one process, one run.

Sections (each a list of rows; ratios are ours / theirs, of time or bytes: below 1 is better for us):

* ``client_masking``: the client's masking step vs d and k: ours (:func:`mask_input`), Flower's
  masking composed from flwr's public functions, and the bound (k AES-CTR expansions + k ring adds +
  one quantisation), from :mod:`benchmarks.masking`;
* ``server_vs_dropout``: the server's time vs the dropout rate, ours vs Flower's real
  ``SecAggPlusWorkflow`` with ``secaggplus_mod`` clients in-process (:mod:`benchmarks.server_sweep`);
* ``n_sweep``: ``secagg.simulate`` for a few n (time and bytes of a whole in-memory round);
* ``ckks``: bytes per value and encrypt / add / decrypt throughput of our presets vs an
  NVFlare-style setup (:mod:`benchmarks.ckks_vs_nvflare`);
* ``upload_bytes``: upload bytes per parameter of every protocol vs Flower's SecAgg+ and fp32.

The headline ratios (top-level JSON fields) are described in :data:`HEADLINES`.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Callable

import numpy as np

LLAMA7B_LORA_R8_QV = 4_194_304

HEADLINES = {
    "client_mask_vs_flower": "client masking time, ours / Flower's masking (flwr's public functions), "
                             "at the largest d and k = 10",
    "client_mask_vs_bound": "client masking time, ours / the AES-CTR bound, at the largest d and k = 10",
    "server_unmask_vs_flower": "server unmask-stage time, ours / Flower's real SecAggPlusWorkflow, at the "
                               "least favourable point of the dropout sweep (highest ratio)",
    "ckks_bytes_vs_nvflare": "CKKS upload bytes per value, ours (addition-128) / NVFlare-style",
    "ckks_time_vs_nvflare": "CKKS end-to-end round time, ours (addition-128) / NVFlare-style",
}


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one run."""

    mask_dims: list[int]
    mask_degrees: list[int]
    mask_repeats: int
    server_sizes: list[int]
    server_dim: int
    dropout_rates: list[float]
    server_repeats: int
    flower_repeats: int
    sweep_sizes: list[int]
    sweep_dim: int
    ckks_dim: int
    ckks_clients: int
    ckks_presets: list[str]
    bytes_dim: int
    bytes_clients: int
    quick: bool = False
    skip: list[str] = field(default_factory=list)

    @classmethod
    def full(cls) -> Plan:
        return cls([100_000, 1_000_000, LLAMA7B_LORA_R8_QV], [4, 10, 20], 5, [20, 100], 1_000_000,
                   [0.0, 0.1, 0.2, 0.3], 3, 1, [10, 20, 50, 100, 1000, 5000, 10_000], 100_000, LLAMA7B_LORA_R8_QV, 3,
                   ["addition-128", "precision-128"], 1_000_000, 20)

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls([10_000, 100_000, 1_000_000], [4, 10], 3, [10, 20], 20_000, [0.0, 0.3], 1, 1, [10, 20], 10_000,
                   65_536, 3, ["addition-128", "precision-128"], 20_000, 10, quick=True)


# ---------------------------------------------------------------- sections


def client_masking(plan: Plan) -> list[dict[str, Any]]:
    from secagg import FixedPoint

    from .masking import flower_masking, masking_row

    encoding = FixedPoint(clip_bound=8.0, fractional_bits=18, max_clients=1000)  # Flower's precision
    rows = []
    for d in plan.mask_dims:
        values = (np.random.default_rng(d).standard_normal(d) * 0.01).astype(np.float32)  # ok: synthetic input
        for k in plan.mask_degrees:
            row: dict[str, Any] = {"dim": d, **masking_row(values, k, encoding, plan.mask_repeats)}
            flower = flower_masking(values, k, plan.mask_repeats)
            row["flower_s"] = flower
            row["ours_vs_bound"] = row.pop("ratio")
            row["ours_vs_flower"] = row["ours_s"] / flower if flower else None
            rows.append(row)
    return rows


def server_vs_dropout(plan: Plan) -> list[dict[str, Any]]:
    from . import server_sweep

    return server_sweep.run(plan.server_sizes, plan.server_dim, plan.dropout_rates, plan.server_repeats,
                            plan.flower_repeats)


SUBPROCESS_FROM = 1000
"""Client counts from which a sweep point runs in its own process (`benchmarks.scale`): its peak RSS
is then its own, and the streaming simulator keeps memory O(d + n k)."""


def n_sweep(plan: Plan) -> list[dict[str, Any]]:
    import secagg

    from .scale import run as run_scale

    rows = []
    for n in plan.sweep_sizes:
        if n >= SUBPROCESS_FROM:
            report = run_scale(n, plan.sweep_dim, 0.1)
        else:
            report = secagg.simulate("secagg+", n, plan.sweep_dim, 0.1, 0,
                                     threat=secagg.ThreatModel.semi_honest(0.1, 0.1))
        mask = report["client_seconds"].get("mask", {}).get("mean", 0.0)
        rows.append({
            "n": n, "dim": plan.sweep_dim, "dropout": 0.1, "k": report["degree"], "t": report["threshold"],
            "exact": report["exact"], "total_s": report["total_seconds"],
            "server_s": sum(report["server_seconds"].values()), "client_mask_mean_s": mask,
            "bytes_per_parameter": report["bytes_per_parameter"],
            "bytes_per_client": report["bytes_per_client_upload"],
            "peak_rss_mib": report["peak_rss_bytes"] / 2**20 if n >= SUBPROCESS_FROM else None,
        })
    return rows


def growth_exponents(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares e of value ∝ n^e over the sweep points run in their own process (n >= 1000)."""
    import numpy as np

    big = [r for r in rows if r["n"] >= SUBPROCESS_FROM]
    if len(big) < 2:
        return {}
    logn = np.log([r["n"] for r in big])
    out = {}
    for key in ("server_s", "client_mask_mean_s", "peak_rss_mib", "bytes_per_client"):
        values = [r[key] for r in big]
        if all(v and v > 0 for v in values):
            out[key] = float(np.polyfit(logn, np.log(values), 1)[0])
    return out


def ckks(plan: Plan) -> list[dict[str, Any]]:
    from secagg.protocols.ckks.parallel import ChunkPool

    from .ckks_vs_nvflare import Row, run_nvflare, run_ours, synthetic_updates

    updates = synthetic_updates(plan.ckks_clients, plan.ckks_dim, 0)
    weights = [1 + i % 3 for i in range(plan.ckks_clients)]
    with ChunkPool() as pool:
        pool.warm_up()
        ours: list[Row] = [run_ours(updates, weights, pool, preset) for preset in plan.ckks_presets]
    theirs = run_nvflare(updates, weights)
    n, d = plan.ckks_clients, plan.ckks_dim
    rows = []
    for r in [*ours, theirs]:
        rows.append({
            "system": r.name, "dim": d, "clients": n, "bytes_per_value": r.bytes_per_value,
            "upload_mb": r.upload_bytes / 1e6, "encrypt_s": r.encrypt_s, "aggregate_s": r.aggregate_s,
            "decrypt_s": r.decrypt_s, "total_s": r.total_s, "max_abs_error": r.max_abs_error,
            "encrypt_values_per_s": d / r.encrypt_s, "add_values_per_s": n * d / r.aggregate_s,
            "decrypt_values_per_s": d / r.decrypt_s,
            "bytes_vs_nvflare": r.upload_bytes / theirs.upload_bytes, "time_vs_nvflare": r.total_s / theirs.total_s,
        })
    return rows


def upload_bytes(plan: Plan, server_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import secagg
    from secagg.simulation import DpRequest
    from secagg.simulation_ckks import simulate_ckks

    n, d = plan.bytes_clients, plan.bytes_dim
    threat = secagg.ThreatModel.semi_honest(0.1, 0.1)
    rows: list[dict[str, Any]] = []

    def add(system: str, bpp: float, setting: str) -> None:
        rows.append({"system": system, "bytes_per_parameter": bpp, "setting": setting})

    for protocol in ("secagg", "secagg+"):
        report = secagg.simulate(protocol, n, d, 0.0, 0, threat=threat)
        add(protocol, report["bytes_per_parameter"], f"n={n}, d={d:,}, {report['ring_bits']}-bit ring")
    dp = secagg.simulate("secagg+", n, d, 0.0, 0, threat=threat, dp=DpRequest("ddgauss", 2.0))
    add("secagg+ with distributed DP", dp["bytes_per_parameter"],
        f"n={n}, d={d:,}, ddgauss epsilon 2, {dp['ring_bits']}-bit ring")
    report = simulate_ckks(min(n, 5), d, 0.0, 0)
    add("ckks (addition-128)", report["bytes_per_parameter"], f"n={min(n, 5)}, d={d:,}, upload message only")
    flower = [r for r in server_rows if r.get("flower_bytes_per_parameter") and r["dropped"] == 0]
    if flower:
        r = min(flower, key=lambda r: (abs(r["n"] - n), -r["n"]))  # Flower's round closest to this n
        add("Flower SecAgg+ (flwr 1.42)", r["flower_bytes_per_parameter"],
            f"n={r['n']}, d={r['dim']:,}, protobuf replies of secaggplus_mod")
    add("plain float32", 4.0, "4 bytes per parameter")
    theirs = rows[-2]["bytes_per_parameter"] if flower else None
    for row in rows:
        row["vs_float32"] = row["bytes_per_parameter"] / 4.0
        row["vs_flower"] = row["bytes_per_parameter"] / theirs if theirs else None
    return rows


# ---------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("secagg", "numpy", "cryptography", "flwr", "tenseal"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "versions": versions}


def headlines(sections: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {k: None for k in HEADLINES}
    masking = sections.get("client_masking", [])
    if masking:
        top = max(r["dim"] for r in masking)
        row = min((r for r in masking if r["dim"] == top), key=lambda r: abs(r["k"] - 10))
        out["client_mask_vs_flower"] = row["ours_vs_flower"]
        out["client_mask_vs_bound"] = row["ours_vs_bound"]
    ratios = [r["unmask_ratio"] for r in sections.get("server_vs_dropout", []) if "unmask_ratio" in r]
    if ratios:
        out["server_unmask_vs_flower"] = max(ratios)
    ours = [r for r in sections.get("ckks", []) if r["system"] == "ours (addition-128)"]
    if ours:
        out["ckks_bytes_vs_nvflare"] = ours[0]["bytes_vs_nvflare"]
        out["ckks_time_vs_nvflare"] = ours[0]["time_vs_nvflare"]
    return out


SECTIONS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "client_masking": client_masking,
    "server_vs_dropout": server_vs_dropout,
    "n_sweep": n_sweep,
    "ckks": ckks,
}


def run(plan: Plan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every section of ``plan`` (less ``plan.skip``), echoing each table as it completes."""
    from .tables import TABLES

    start = time.perf_counter()
    sections: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for name, fn in [*SECTIONS.items(), ("upload_bytes", None)]:
        if name in plan.skip:
            continue
        t0 = time.perf_counter()
        sections[name] = fn(plan) if fn else upload_bytes(plan, sections.get("server_vs_dropout", []))
        seconds[name] = time.perf_counter() - t0
        echo(TABLES[name](sections[name]) + f"\n({name}: {seconds[name]:.1f} s)\n")
    report: dict[str, Any] = headlines(sections)
    report.update({
        "ratio_definitions": {k: f"{v} (ours / theirs: below 1 favours ours)" for k, v in HEADLINES.items()},
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "plan": asdict(plan),
        "wall_seconds": time.perf_counter() - start,
        "section_seconds": seconds,
        "n_sweep_growth_exponents": growth_exponents(sections.get("n_sweep", [])),
        "sections": sections,
    })
    return report

