"""The ``secagg`` command line: ``secagg params``, ``simulate``, ``audit``, ``dp``, ``identity`` and ``bench``.

The flags and JSON field names are a contract with users' scripts: add, never rename.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, Sequence

import numpy as np

from .adapters import identity as identity_cli
from .audit import cli as audit_cli
from .dp import cli as dp_cli
from . import defaults
from .encoding import FixedPoint, Schema
from .errors import ParameterError, SecAggError
from .graphparams import CORRECTNESS_BITS, SECURITY_BITS, find_harary_parameters
from .params import Adversary, SecAggConfig, ThreatModel

__all__ = ["main", "OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose every error is one line on stderr and exit status 2 (no usage block).

    Subcommand parsers are made of the same class, so they behave the same."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    threat = ThreatModel(Adversary(args.adversary), args.corrupt, args.dropout)
    schema = Schema.of(np.zeros(1, dtype=np.float32))
    if args.protocol == "secagg":
        config = SecAggConfig.secagg(args.clients, schema, threat)
    else:
        graph = find_harary_parameters(args.clients, args.corrupt, args.dropout, threat.is_malicious)
        config = SecAggConfig(args.clients, graph.threshold, schema, FixedPoint(max_clients=args.clients),
                              graph.degree, threat=threat)
    return {
        "k": config.degree if config.degree is not None else args.clients - 1,
        "t": config.threshold,
        "protocol": config.protocol,
        "clients": args.clients,
        "dropout": args.dropout,
        "corrupt": args.corrupt,
        "adversary": args.adversary,
        "security_bits": SECURITY_BITS,
        "correctness_bits": CORRECTNESS_BITS,
        **config.security_summary(),
    }


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    if (args.dp is None) != (args.epsilon is None):
        raise ParameterError("--dp and --epsilon go together: --dp ddgauss|skellam --epsilon E")
    if args.dp is not None and args.protocol == "ckks":
        raise ParameterError("distributed DP runs on secagg and secagg+ only: CKKS would need real-valued noise, "
                             "a weaker argument this library does not make (SECURITY.md)")
    if args.protocol == "ckks":
        from .simulation_ckks import simulate_ckks

        report: dict[str, Any] = simulate_ckks(
            args.clients, args.dim, args.dropout, args.seed, stage=args.stage, preset=args.preset
        )
        return report
    from .simulation import DpRequest, simulate

    adversary = Adversary(args.adversary)
    threat = ThreatModel(adversary, args.corrupt, args.expected_dropout if args.expected_dropout is not None
                         else max(args.dropout, 0.05))
    encoding = FixedPoint(args.clip, args.fractional_bits, 1, max(args.clients, args.max_clients or 0))
    dp = DpRequest(args.dp, args.epsilon, args.delta, args.rounds, args.dp_clip) if args.dp else None
    streaming = {"auto": None, "on": True, "off": False}[args.streaming]
    return simulate(args.protocol, args.clients, args.dim, args.dropout, args.seed, stage=args.stage,
                    threat=threat, encoding=encoding, scale=args.scale, dp=dp, streaming=streaming)


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=False))
        return
    for key, value in report.items():
        print(f"{key:>24}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="secagg", description="Secure aggregation for federated learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="choose the threshold t (and the SecAgg+ degree k) and show the guarantees")
    p.add_argument("--protocol", choices=["secagg", "secagg+"], default="secagg+")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--dropout", type=float, required=True, help="expected dropout fraction")
    p.add_argument("--corrupt", type=float, required=True, help="fraction of clients colluding with the server")
    p.add_argument("--adversary", choices=["semi-honest", "malicious"], default="semi-honest")
    p.add_argument("--json", action="store_true")
    s = sub.add_parser("simulate", help="run one full aggregation round in memory")
    s.add_argument("--protocol", choices=["secagg", "secagg+", "ckks"], default="secagg+")
    s.add_argument("--clients", type=int, default=10)
    s.add_argument("--dim", type=int, default=1000)
    s.add_argument("--dropout", type=float, default=0.0, help="fraction of clients that drop")
    s.add_argument("--stage", default=None, help="stage at which they drop (default: random per client)")
    s.add_argument("--seed", type=int, default=0, help="seeds the synthetic data and dropout schedule only")
    s.add_argument("--adversary", choices=["semi-honest", "malicious"], default="semi-honest")
    s.add_argument("--corrupt", type=float, default=0.1)
    s.add_argument("--expected-dropout", type=float, default=None, help="dropout rate used to choose k and t")
    s.add_argument("--clip", type=float, default=defaults.CLIP_BOUND)
    s.add_argument("--fractional-bits", type=int, default=defaults.FRACTIONAL_BITS)
    s.add_argument("--max-clients", type=int, default=None)
    s.add_argument("--scale", type=float, default=1.0, help="std-dev of the synthetic inputs")
    s.add_argument("--preset", default=defaults.CKKS_PRESET, help="CKKS preset: addition-128 or precision-128")
    s.add_argument("--dp", choices=["ddgauss", "skellam"], default=None,
                   help="distributed differential privacy: each client adds discrete noise before masking")
    s.add_argument("--epsilon", type=float, default=None, help="DP target epsilon over --rounds rounds")
    s.add_argument("--delta", type=float, default=defaults.DP_DELTA, help="DP delta")
    s.add_argument("--rounds", type=int, default=1, help="rounds the DP noise is planned for")
    s.add_argument("--dp-clip", type=float, default=defaults.DP_L2_CLIP, help="L2 clip of each update under DP")
    s.add_argument("--streaming", choices=["auto", "on", "off"], default="auto",
                   help="derive each client's input only when it masks (memory O(d + n*k)); auto: when "
                        "clients * dim > 5e7 (secagg and secagg+)")
    s.add_argument("--json", action="store_true")
    audit_cli.register(sub)
    dp_cli.register(sub)
    identity_cli.register(sub)
    _register_bench(sub)
    return parser


def _register_bench(sub: Any) -> None:
    """``secagg bench`` lives in the ``benchmarks`` package; its flags module imports only the standard
    library, and the benchmark's own dependencies (flwr, TenSEAL, matplotlib) load when it runs."""
    try:
        from benchmarks import cli as bench_cli
    except ImportError:  # installed without the benchmarks package
        return
    bench_cli.register(sub)


def _bench(args: argparse.Namespace) -> int:
    from benchmarks import cli as bench_cli

    return bench_cli.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    try:
        if args.command == "audit":
            report = audit_cli.run(args)
        elif args.command == "dp":
            report = dp_cli.run(args)
        elif args.command == "identity":
            report = identity_cli.run(args)
        else:
            report = _params(args) if args.command == "params" else _simulate(args)
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    _print(report, args.json)
    return 0 if args.command != "audit" or audit_cli.succeeded(report) else 1


if __name__ == "__main__":
    sys.exit(main())
