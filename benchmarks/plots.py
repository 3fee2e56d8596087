"""PNG plots of a ``secagg bench`` report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """One PNG per section present in ``report["sections"]``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    sections = report["sections"]
    stamp = f"{report['machine']['cpu']}, {report['date'][:10]}" + (" (quick)" if report["quick"] else "")
    written = []
    for name, draw in PLOTS.items():
        if not sections.get(name):
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        draw(ax, sections[name])
        fig.text(0.99, 0.01, stamp, ha="right", va="bottom", fontsize=6, color="gray")
        fig.tight_layout()
        path = directory / f"bench_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _client_masking(ax: Any, rows: list[dict[str, Any]]) -> None:
    for k in sorted({r["k"] for r in rows}):
        sel = [r for r in rows if r["k"] == k]
        dims = [r["dim"] for r in sel]
        line = ax.plot(dims, [r["ours_s"] * 1e3 for r in sel], "o-", label=f"ours k={k}")[0]
        ax.plot(dims, [r["bound_s"] * 1e3 for r in sel], ":", color=line.get_color(), label=f"bound k={k}")
        if all(r["flower_s"] for r in sel):
            ax.plot(dims, [r["flower_s"] * 1e3 for r in sel], "s--", color=line.get_color(), alpha=0.6,
                    label=f"Flower k={k}")
    ax.set(xscale="log", yscale="log", xlabel="d (parameters)", ylabel="client masking (ms)",
           title="client masking: ours, Flower, AES-CTR bound")
    ax.legend(fontsize=7, ncol=3)


def _server_vs_dropout(ax: Any, rows: list[dict[str, Any]]) -> None:
    for n in sorted({r["n"] for r in rows}):
        sel = [r for r in rows if r["n"] == n]
        rates = [100 * r["dropout"] for r in sel]
        line = ax.plot(rates, [r["ours_server_s"] for r in sel], "o-", label=f"ours n={n}")[0]
        done = [r for r in sel if "flower_server_s" in r]
        ax.plot([100 * r["dropout"] for r in done], [r["flower_server_s"] for r in done], "s--",
                color=line.get_color(), label=f"Flower SecAggPlusWorkflow n={n}")
    ax.set(yscale="log", xlabel="clients dropped before masked input (%)", ylabel="server time (s)",
           title=f"server time vs dropout, d = {rows[0]['dim']:,}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _n_sweep(ax: Any, rows: list[dict[str, Any]]) -> None:
    ns = [r["n"] for r in rows]
    ax.plot(ns, [r["total_s"] for r in rows], "o-", label="whole round (all parties, one process)")
    ax.plot(ns, [r["server_s"] for r in rows], "s-", label="server")
    ax.set(xlabel="clients n", ylabel="seconds", title=f"secagg.simulate, SecAgg+, d = {rows[0]['dim']:,}")
    ax.legend(fontsize=7)


def _ckks(ax: Any, rows: list[dict[str, Any]]) -> None:
    names = [r["system"] for r in rows]
    ops = ["encrypt_values_per_s", "add_values_per_s", "decrypt_values_per_s"]
    width = 0.8 / len(ops)
    for j, op in enumerate(ops):
        ax.bar([i + j * width for i in range(len(rows))], [r[op] / 1e6 for r in rows], width,
               label=op.split("_")[0])
    ax.set_xticks([i + width for i in range(len(rows))],
                  [f"{n}\n{r['bytes_per_value']:.1f} B/value" for n, r in zip(names, rows)], fontsize=7)
    ax.set(yscale="log", ylabel="million values / s", title=f"CKKS throughput, d = {rows[0]['dim']:,}")
    ax.legend(fontsize=7)


def _upload_bytes(ax: Any, rows: list[dict[str, Any]]) -> None:
    ax.barh([r["system"] for r in rows], [r["bytes_per_parameter"] for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["bytes_per_parameter"], i, f" {r['bytes_per_parameter']:.2f}", va="center", fontsize=7)
    ax.set(xscale="log", xlabel="upload bytes per parameter", title="upload per client per round")
    ax.invert_yaxis()


PLOTS = {
    "client_masking": _client_masking,
    "server_vs_dropout": _server_vs_dropout,
    "n_sweep": _n_sweep,
    "ckks": _ckks,
    "upload_bytes": _upload_bytes,
}
