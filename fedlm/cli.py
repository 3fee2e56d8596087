"""``fedlm run``: the command-line entry point.

Every ``RunConfig`` field is a flag (``--clients-per-round`` for
``clients_per_round``) whose help text comes from the field, so the CLI and
the configuration cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedlm.config import BACKENDS, DTYPE_NAMES, MODES, SERVER_OPTIMIZERS, RunConfig, field_help

_CONVERTERS: dict[str, type] = {"int": int, "float": float, "str": str,
                                "float | None": float, "str | None": str}
_CHOICES: dict[str, tuple[str, ...]] = {"mode": MODES, "backend": BACKENDS, "dtype": DTYPE_NAMES,
                                        "server_opt": SERVER_OPTIMIZERS}


def _add_field(parser: argparse.ArgumentParser, name: str, type_name: str,
               default: Any) -> None:
    """Adds the flag for one ``RunConfig`` field."""
    flag = "--" + name.replace("_", "-")
    help_text = field_help(name)
    if name == "data":
        parser.add_argument(flag, nargs="+", default=[], metavar="FILE", help=help_text)
    elif name == "lora_targets":
        parser.add_argument(flag, nargs="+", default=[], metavar="NAME", help=help_text)
    elif name == "freeze_a":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                            help=help_text)
    elif type_name == "bool":
        parser.add_argument(flag, action="store_true", help=help_text)
    else:
        suffix = "" if default is None else " (default: %(default)s)"
        parser.add_argument(flag, type=_CONVERTERS[type_name], default=default,
                            choices=_CHOICES.get(name), help=help_text + suffix)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedlm`` argument parser with its ``run`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedlm", description="Federated training of a small LM over secure aggregation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, aggregate, evaluate; write report and plots",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(RunConfig):
        default = f.default if f.default is not MISSING else None
        _add_field(run, f.name, str(f.type), default)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Builds the ``RunConfig`` from parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    values["data"] = tuple(values["data"])
    values["lora_targets"] = tuple(values["lora_targets"])
    return RunConfig(**values)


def summary_table(report: dict[str, Any]) -> Table:
    """A per-round table of the report."""
    table = Table(title=f"fedlm {report['mode']} / {report['backend']} ({report['engine']})",
                  box=box.SIMPLE_HEAD)
    for col in ("round", "surv.", "dropped", "train", "eval", "KiB up", "agg s", "|Δ plain|"):
        table.add_column(col, justify="right", overflow="fold",
                         min_width=15 if col == "dropped" else None)
    for r in report["rounds"]:
        dropped = ", ".join(f"{d['client']}@{d['stage']}" for d in r["dropped"]) or "-"
        if r["aborted"]:
            table.add_row(str(r["round"]), "aborted", dropped, f"{r['train_loss']:.3f}",
                          f"{r['eval_loss_mean']:.4f}", "-", "-", "-")
            continue
        table.add_row(str(r["round"]), f"{len(r['survivors'])}/{len(r['sampled'])}", dropped,
                      f"{r['train_loss']:.3f}", f"{r['eval_loss_mean']:.4f}",
                      f"{r['bytes_up_per_client'] / 1024:.1f}",
                      f"{r['aggregation_seconds']:.2f}", f"{r['max_abs_diff_vs_plain']:.2e}")
    return table


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """Prints the table, the loss change, the secure-vs-plain check and file paths."""
    console.print(summary_table(report))
    console.print(f"held-out loss: {report['initial_eval_loss']:.4f} -> "
                  f"{report['final_eval_loss']:.4f}   wall {report['wall_seconds']:.1f} s")
    verdict = {True: "[green]yes[/]", False: "[red]NO[/]", None: "n/a (nothing to compare)"}[
        report["secure_equals_plain"]]
    console.print(f"secure == plain FedAvg within bound: {verdict} (max |diff| "
                  f"{report['max_abs_diff_vs_plain']:.3e} <= quantisation bound {report['error_bound']:.3e}"
                  f" + float32 rounding {report['float32_slack']:.3e})")
    console.print(f"model: {report['artifacts']['model']}   plots: "
                  + ", ".join(report["artifacts"]["plots"]))
    console.print(f"report: {report['artifacts']['report']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``fedlm`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from fedlm.loop import run  # torch loads only once flags are valid
    from secagg import SecAggError
    from fedlm.errors import InputError
    from fedlm.progress import RichProgress, RunProgress

    console = Console(stderr=cfg.quiet)
    progress = RunProgress() if cfg.quiet else RichProgress(console)
    try:
        with progress:
            report = run(cfg, progress)
    except (SecAggError, InputError) as exc:
        print(f"fedlm: error: {exc}", file=sys.stderr)
        return 2
    if cfg.quiet:
        print(f"report: {report['artifacts']['report']}")
    else:
        print_summary(console, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
