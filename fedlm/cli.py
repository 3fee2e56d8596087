"""``fedlm run``: the command-line entry point.

Every ``RunConfig`` field is a flag (``--clients-per-round`` for
``clients_per_round``) whose help text comes from the field, so the CLI and
the configuration cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedlm.config import (BACKENDS, DP_DEFAULTS, DTYPE_NAMES, ENGINES, FLOWER_RUNTIMES, MODES, SERVER_OPTIMIZERS, SFT_DEFAULTS, TASKS, RunConfig,
                          field_help)
from secagg.cli import OneLineParser

_CONVERTERS: dict[str, type] = {"int": int, "float": float, "str": str,
                                "float | None": float, "str | None": str, "int | None": int}
_CHOICES: dict[str, tuple[str, ...]] = {"mode": MODES, "backend": BACKENDS, "dtype": DTYPE_NAMES, "task": TASKS,
                                        "server_opt": SERVER_OPTIMIZERS, "engine": ENGINES,
                                        "flower_runtime": FLOWER_RUNTIMES}


def read_config_file(path: str) -> dict[str, Any]:
    """Flag values from a TOML file (keys are field names, ``-`` or ``_``), or from the ``config``
    section of a fedlm JSON report, so a run can be reproduced.

    Raises:
        ValueError: unreadable file, bad syntax, or a key that is not a ``fedlm run`` flag.
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({type(exc).__name__})") from None
    try:
        if file.suffix == ".json":
            loaded = json.loads(text)
            loaded = loaded.get("config", loaded) if isinstance(loaded, dict) else loaded
        else:
            loaded = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path}: expected a table of flag values")
    names = {f.name for f in fields(RunConfig)}
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"--config {path}: not fedlm run flags: {', '.join(unknown)}")
    return values


def _add_field(parser: argparse.ArgumentParser, name: str, type_name: str,
               default: Any) -> None:
    """Adds the flag for one ``RunConfig`` field."""
    flag = "--" + name.replace("_", "-")
    help_text = field_help(name)
    if name in ("data", "lora_targets"):
        parser.add_argument(flag, nargs="+", default=list(default or []),
                            metavar="FILE" if name == "data" else "NAME", help=help_text)
    elif name in ("freeze_a", "flower_compare"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=help_text)
    elif type_name == "bool":
        parser.add_argument(flag, action="store_true", default=bool(default), help=help_text)
    else:
        suffix = "" if default is None else " (default: %(default)s)"
        parser.add_argument(flag, type=_CONVERTERS[type_name], default=default,
                            choices=_CHOICES.get(name), help=help_text + suffix)


def build_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The ``fedlm`` argument parser with its ``run`` subcommand; ``defaults`` (e.g. from
    ``--config``) replace the fields' own defaults, and flags given on the command line win."""
    parser = OneLineParser(
        prog="fedlm", description="Federated training of a small LM over secure aggregation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, aggregate, evaluate; write report and plots",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", default=None, metavar="FILE",
                     help="TOML file of flag values, or a fedlm report.json (its config section); "
                          "flags on the command line win")
    for f in fields(RunConfig):
        default = f.default if f.default is not MISSING else None
        if defaults and f.name in defaults:
            default = defaults[f.name]
        _add_field(run, f.name, str(f.type), default)
    return parser


def config_from_args(args: argparse.Namespace, explicit: frozenset[str] = frozenset()) -> RunConfig:
    """Builds the ``RunConfig`` from parsed arguments.

    Under ``--task sft`` (when ``--mode`` is not given) and ``--dp-epsilon``, the fields of
    :data:`SFT_DEFAULTS` and :data:`DP_DEFAULTS` not in ``explicit`` (given on the command line or
    in a config file) take those defaults (DP last, with its mode's own learning rate), as FFA-LoRA
    does under DP.
    """
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    values["data"] = tuple(values["data"])
    values["lora_targets"] = tuple(values["lora_targets"])
    if values["task"] == "sft" and "mode" not in explicit:  # the rate and steps go with the mode
        values.update({k: v for k, v in SFT_DEFAULTS.items() if k not in explicit})
    if values["dp_epsilon"] is not None:
        values.update({k: v for k, v in DP_DEFAULTS.items() if k not in explicit})
        if "mode" not in explicit and "lr" not in explicit:
            values["lr"] = None  # the DP mode's own default rate
    return RunConfig(**values)


def explicit_fields(argv: Sequence[str], config_file: dict[str, Any] | None) -> frozenset[str]:
    """The RunConfig fields a user set: flags on the command line and keys of the config file."""
    given = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return frozenset(given | set(config_file or {}))


def _fmt(value: float | None, spec: str) -> str:
    """A number, or "-" for a field the report withholds (e.g. under DP)."""
    return "-" if value is None else format(value, spec)


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
            table.add_row(str(r["round"]), "aborted", dropped, _fmt(r["train_loss"], ".3f"),
                          f"{r['eval_loss_mean']:.4f}", "-", "-", "-")
            continue
        table.add_row(str(r["round"]), f"{len(r['survivors'])}/{len(r['sampled'])}", dropped,
                      _fmt(r["train_loss"], ".3f"), f"{r['eval_loss_mean']:.4f}",
                      f"{r['bytes_up_per_client'] / 1024:.1f}",
                      f"{r['aggregation_seconds']:.2f}", _fmt(r["max_abs_diff_vs_plain"], ".2e"))
    return table


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """Prints the table, the loss change, the secure-vs-plain check and file paths."""
    console.print(summary_table(report))
    console.print(f"held-out loss: {report['initial_eval_loss']:.4f} -> "
                  f"{report['final_eval_loss']:.4f}   wall {report['wall_seconds']:.1f} s")
    if "dp" in report:
        dp = report["dp"]
        console.print(f"distributed DP: epsilon {dp['epsilon']:.3f} of {dp['target_epsilon']} (delta {dp['delta']:g}), "
                      f"noise multiplier {dp['noise_multiplier']:.2f}, {dp['bits']}-bit ring, noise/signal "
                      f"{dp['noise_to_signal']:.1f}" + (f"; {dp['stopped']}" if dp["stopped"] else ""), highlight=False)
    elif report["engine"] == "flower":
        check = report.get("engine_check")
        if check is None or check["within_bound"] is None:
            console.print("Flower engine: no in-memory check" + (f" ({check['skipped']})" if check else ""))
        else:
            verdict = "[green]yes[/]" if check["within_bound"] else "[red]NO[/]"
            console.print(f"Flower == in-memory engine, round by round, within the quantisation bounds: {verdict} "
                          f"(max |diff| {check['max_abs_diff']:.3e} over {len(check['rounds'])} rounds)")
    else:
        verdict = {True: "[green]yes[/]", False: "[red]NO[/]", None: "n/a (nothing to compare)"}[
            report["secure_equals_plain"]]
        console.print(f"secure == plain FedAvg within bound: {verdict} (max |diff| "
                      f"{report['max_abs_diff_vs_plain']:.3e} <= quantisation bound {report['error_bound']:.3e}"
                      f" + float32 rounding {report['float32_slack']:.3e})")
    for task, scores in report.get("final_task_eval", {}).items():
        first = report["initial_task_eval"][task]
        console.print(f"task {task}: accuracy {first['accuracy']:.3f} -> {scores['accuracy']:.3f} "
                      f"(majority baseline {scores['majority_baseline']:.3f}), response loss "
                      f"{first['loss']:.3f} -> {scores['loss']:.3f}", highlight=False)
    for sample in report.get("samples", [])[:3]:
        console.print(f"[bold]{sample['domain']}[/] {sample['prompt']!r}\n  before: {sample['before']!r}\n"
                      f"  after:  {sample['after']!r}", markup=True, highlight=False)
    console.print(f"model: {report['artifacts']['model']}   plots: "
                  + ", ".join(report["artifacts"]["plots"]))
    console.print(f"report: {report['artifacts']['report']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``fedlm`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from_file = None
        if args.config is not None:
            from_file = read_config_file(args.config)
            parser = build_parser(from_file)
            args = parser.parse_args(argv)
        cfg = config_from_args(args, explicit_fields(list(argv if argv is not None else sys.argv[1:]), from_file))
    except (ValueError, TypeError) as exc:  # one line, exit 2 (argparse itself prints usage for bad syntax)
        print(f"fedlm: error: {exc}", file=sys.stderr)
        return 2
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
