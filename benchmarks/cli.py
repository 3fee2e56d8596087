"""The ``secagg bench`` subcommand: its flags (:func:`register`) and its run (:func:`run`).

``secagg/cli.py`` imports this module only to build its parser; this module imports nothing beyond
the standard library at load time, so ``secagg params`` / ``simulate`` never load flwr, TenSEAL
or matplotlib. The benchmark's dependencies are imported when ``secagg bench`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

SECTION_NAMES = ("client_masking", "server_vs_dropout", "n_sweep", "ckks", "upload_bytes")


def register(sub: Any) -> None:
    """Add the ``bench`` subparser to ``secagg``'s subcommands."""
    b = sub.add_parser("bench", help="benchmarks: ours vs Flower's SecAgg+, NVFlare-style CKKS and the "
                                     "AES-CTR bound, measured in one run (needs the 'bench' and 'flower' extras)")
    b.add_argument("--quick", action="store_true", help="small sizes, few repeats (about a minute); for CI")
    b.add_argument("--json", metavar="FILE", default=None, help="write the full report as JSON here")
    b.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into this directory")
    b.add_argument("--text", metavar="FILE", default=None, help="also write the printed tables here")
    b.add_argument("--skip", nargs="+", default=[], choices=SECTION_NAMES, help="sections to leave out")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the flags ask for; print tables; write JSON, plots and text if asked."""
    from .bench import HEADLINES, Plan
    from .bench import run as run_plan
    from .tables import headline_table

    plan = replace(Plan.quick_plan() if args.quick else Plan.full(), skip=list(args.skip))
    printed: list[str] = []

    def echo(text: str) -> None:
        printed.append(text)
        print(text, flush=True)

    report = run_plan(plan, echo)
    machine = report["machine"]
    echo(headline_table(report, HEADLINES))
    echo(f"\n{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
         f"flwr {machine['versions'].get('flwr')}, tenseal {machine['versions'].get('tenseal')}; "
         f"{report['date']}; {'quick' if plan.quick else 'full'} run, {report['wall_seconds']:.0f} s wall")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    if args.plots:
        from .plots import write_plots

        for path in write_plots(report, Path(args.plots)):
            echo(f"plot written to {path}")
    if args.text:
        Path(args.text).write_text("\n".join(printed) + "\n")
    return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli")
    register(parser.add_subparsers(dest="command", required=True))
    sys.exit(run(parser.parse_args(["bench", *sys.argv[1:]])))
