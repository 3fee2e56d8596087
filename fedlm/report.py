"""The run's JSON report and its PNG plots (matplotlib, Agg backend).

Top-level fields: ``mode``, ``backend``, ``engine``, ``initial_eval_loss``,
``final_eval_loss``, ``max_abs_diff_vs_plain``, ``error_bound``,
``secure_equals_plain`` and ``rounds``; each round records ``round``,
``sampled``, ``survivors``, ``dropped`` (``{"client", "stage"}`` entries),
``train_loss``, ``eval_loss`` (per domain), ``eval_loss_mean``,
``bytes_up_per_client``, ``aggregation_seconds``, ``error_bound``,
``max_abs_diff_vs_plain``, ``clipped_fraction`` and ``aborted``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from fedlm.backends import AggregationResult
from fedlm.client import ClientUpdate
from fedlm.config import RunConfig
from fedlm.model import StateDict
from fedlm.prepare import Prepared

#: The secure average and the float64 FedAvg reference are each stored as
#: float32, so they may differ by float32 rounding on top of ``error_bound``;
#: this many units of ``clip_bound`` cover that rounding.
FLOAT32_SLACK = 2.0**-22

LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"
BYTES_PLOT = "bytes.png"


def round_record(rnd: int, sampled: list[int], updates: Mapping[int, ClientUpdate],
                 result: AggregationResult | None, dropouts: Mapping[int, str],
                 losses: dict[str, float], diff: float | None,
                 aborted: str | None = None) -> dict[str, Any]:
    """One round's entry of the report; ``result`` is ``None`` for an aborted round."""
    dropped = result.dropped if result is not None else dropouts
    survivors = result.survivors if result is not None else []
    trained = survivors or sampled
    record: dict[str, Any] = {
        "round": rnd,
        "sampled": sampled,
        "survivors": survivors,
        "dropped": [{"client": c, "stage": s} for c, s in sorted(dropped.items())],
        # Per-client statistics exist only where the server holds the clients' updates (in memory);
        # on a deployed engine the server never sees them.
        "train_loss": sum(updates[c].train_loss for c in trained) / len(trained) if updates else None,
        "eval_loss": losses,
        "eval_loss_mean": sum(losses.values()) / len(losses),
        "bytes_up_per_client": result.bytes_up_per_client if result else None,
        "aggregation_seconds": result.seconds if result else None,
        "error_bound": result.error_bound if result else None,
        "max_abs_diff_vs_plain": diff,
        "clipped_fraction": max(u.clipped_fraction for u in updates.values()) if updates else None,
        "aborted": aborted is not None,
    }
    if aborted is not None:
        record["abort_reason"] = aborted
    return record


def _equality_check(cfg: RunConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-level secure-vs-plain fields over the completed rounds.

    The check is a feature of the in-memory engine (a real server cannot compute plain FedAvg).
    ``secure_equals_plain`` is null when it checks nothing: no round completed, or the backend is
    plain FedAvg itself.
    """
    done = [r for r in records if not r["aborted"]]
    slack = FLOAT32_SLACK * cfg.resolved_clip_bound
    # Under DP the check is withheld; on Flower the server holds no client's delta to check with.
    withheld = cfg.dp or cfg.engine != "in-memory"
    checked = bool(done) and cfg.backend != "plain" and not withheld
    return {
        "max_abs_diff_vs_plain": None if withheld else max((r["max_abs_diff_vs_plain"] for r in done), default=0.0),
        "error_bound": max((r["error_bound"] for r in done), default=0.0),
        "secure_equals_plain": all(
            r["max_abs_diff_vs_plain"] <= r["error_bound"] + slack for r in done) if checked else None,
        "float32_slack": slack,
        "plain_check_scope": "in-memory engine only: it holds every client's delta; a deployed server cannot "
                             "compute plain FedAvg",
    }


def finish_report(cfg: RunConfig, engine: str, initial: dict[str, float],
                  records: list[dict[str, Any]], warmup_loss: float | None,
                  params: tuple[int, int], final_state: StateDict, prepared: Prepared,
                  artifact: Path, wall_seconds: float) -> dict[str, Any]:
    """Assembles the report from the run's pieces."""
    final = records[-1]["eval_loss"] if records else initial
    out_dir = Path(cfg.out)
    return {
        "mode": cfg.mode,
        "backend": cfg.backend,
        "engine": engine,
        "initial_eval_loss": sum(initial.values()) / len(initial),
        "final_eval_loss": sum(final.values()) / len(final),
        "initial_eval_loss_by_domain": initial,
        "final_eval_loss_by_domain": final,
        **_equality_check(cfg, records),
        "aborted_rounds": sum(r["aborted"] for r in records),
        "warmup_loss": warmup_loss,
        "rounds": records,
        "model": {"parameters": params[0], "trainable": params[1],
                  "uploaded_numel": sum(t.numel() for t in final_state.values())},
        "data": {
            "domains": sorted(prepared.eval_blocks),
            "examples_per_client": [c.num_examples for c in prepared.clients],
            "documents_per_client_by_domain": [c.domains for c in prepared.clients],
            "eval_blocks_per_domain": {d: int(b.shape[0])
                                       for d, b in prepared.eval_blocks.items()},
            # LM: each client's local preprocessing (clean, de-duplicate, tokenise, pack), counts only.
            "preprocessing_per_client": prepared.preprocessing,
        },
        "artifacts": {"model": str(artifact), "tokenizer": str(out_dir / "tokenizer"),
                      "report": str(cfg.report_path),
                      "plots": [str(out_dir / LOSS_PLOT), str(out_dir / BYTES_PLOT)]},
        "config": cfg.to_dict(),
        "wall_seconds": wall_seconds,
    }


def plot_loss(report: dict[str, Any], path: Path) -> None:
    """Held-out loss per domain and mean, and client train loss, per round."""
    rounds = report["rounds"]
    xs = [0] + [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for domain in report["initial_eval_loss_by_domain"]:
        ys = [report["initial_eval_loss_by_domain"][domain]]
        ax.plot(xs, ys + [r["eval_loss"][domain] for r in rounds], lw=1, alpha=0.7,
                label=f"eval {domain}")
    ax.plot(xs, [report["initial_eval_loss"]] + [r["eval_loss_mean"] for r in rounds],
            lw=2.5, color="black", label="eval mean")
    if all(r["train_loss"] is not None for r in rounds):  # withheld under DP and on Flower
        ax.plot(xs[1:], [r["train_loss"] for r in rounds], ls="--", color="gray", label="train (clients)")
    for r in rounds:
        if r["aborted"]:
            ax.axvline(r["round"], color="red", ls=":", lw=1)
    ax.set(xlabel="round (0 = after warm-up)", ylabel="cross-entropy",
           title=f"fedlm {report['mode']} / {report['backend']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes(report: dict[str, Any], path: Path) -> None:
    """Upload bytes per surviving client and aggregation time, per round."""
    done = [r for r in report["rounds"] if not r["aborted"]]
    xs = [r["round"] for r in done]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.bar(xs, [r["bytes_up_per_client"] / 1024 for r in done], color="tab:blue")
    top.set(ylabel="KiB up per client",
            title=f"fedlm {report['mode']} / {report['backend']}: communication")
    bottom.bar(xs, [r["aggregation_seconds"] for r in done], color="tab:orange")
    bottom.set(xlabel="round", ylabel="aggregation s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(report: dict[str, Any], path: Path) -> None:
    """SFT: held-out exact-match accuracy per task per round, with each task's majority baseline."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0] + [r["round"] for r in report["rounds"]]
    for task, first in report["initial_task_eval"].items():
        ys = [first["accuracy"]] + [r["task_eval"].get(task, {}).get("accuracy", float("nan"))
                                    for r in report["rounds"]]
        line = ax.plot(xs, ys, marker="o", label=f"{task}")[0]
        ax.axhline(first["majority_baseline"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out exact-match accuracy (dotted: majority baseline)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(report: dict[str, Any], cfg: RunConfig, out_dir: Path) -> None:
    """Writes the JSON report and both plots."""
    cfg.report_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_loss(report, out_dir / LOSS_PLOT)
    plot_bytes(report, out_dir / BYTES_PLOT)
    if "final_task_eval" in report:
        plot_accuracy(report, out_dir / ACCURACY_PLOT)
