"""``secagg audit``: run the adversarial-server harness, record and check transcripts.

- ``secagg audit attacks --adversary semi-honest|malicious [--protocol secagg|secagg+|all] --json``
- ``secagg audit transcript FILE [--registry FILE] --json``
- ``secagg audit record FILE [--protocol secagg+ --clients 20 --dim 1000 --adversary ...] --json``
- ``secagg audit search --protocol secagg|secagg+ --clients N --corrupt C --adversary malicious --json``
- ``secagg audit dp --epsilon E [--rounds R --clients N --dim D --canaries M --no-noise] --json``: the
  one-run privacy audit of a distributed-DP configuration (:mod:`secagg.audit.dp_audit`)

Exit status 0 when every attack matched its expectation / the transcript passed / the DP audit's
lower bound stayed at or below the accounted epsilon, 1 otherwise; 2 on bad input (one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..encoding import FixedPoint, Schema
from ..errors import ParameterError
from ..hazmat.keys import SigningKey
from ..graphparams import corrupt_count
from ..params import SecAggConfig, ThreatModel
from ..protocols.secagg import SecAggClient, SecAggServer
from ..router import run_round, stages_for
from ..simulation import dropout_schedule
from ..wire import SERVER_ID
from .attacks import attack_names
from .harness import run_attacks
from .search import Model, search
from .transcript import TranscriptRecorder, config_meta, read_transcript
from .transcript_check import check_transcript, read_registry

__all__ = ["register", "run", "succeeded"]


def register(subparsers: Any) -> None:
    """Add the ``audit`` command (with ``attacks``, ``transcript`` and ``record``) to a CLI."""
    audit = subparsers.add_parser("audit", help="attack harness and transcript checks for auditors")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    a = sub.add_parser("attacks", help="run every scripted server deviation and check its expected outcome")
    a.add_argument("--adversary", choices=["semi-honest", "malicious"], required=True)
    a.add_argument("--protocol", choices=["secagg", "secagg+", "all"], default="all")
    a.add_argument("--attack", action="append", choices=attack_names(), help="run only this attack (repeatable)")
    a.add_argument("--json", action="store_true")
    t = sub.add_parser("transcript", help="check a server-side transcript")
    t.add_argument("file", type=Path)
    t.add_argument("--registry", type=Path, default=None,
                   help='the auditor\'s own registry, JSON {"client id": "Ed25519 public key hex"}; without it '
                        "signatures are checked only against the registry the server recorded")
    t.add_argument("--alpha", type=float, default=1e-3, help="family-wise significance of the chi-square tests")
    t.add_argument("--json", action="store_true")
    s = sub.add_parser("search", help="search a deviating server's strategies for a sum of too few honest inputs")
    s.add_argument("--protocol", choices=["secagg", "secagg+"], default="secagg")
    s.add_argument("--clients", type=int, required=True)
    s.add_argument("--corrupt", type=float, required=True,
                   help="corrupt clients: a count (>= 1) or a fraction of --clients (< 1)")
    s.add_argument("--adversary", choices=["malicious"], default="malicious",
                   help="the search models a deviating server, which only the malicious variant defends against")
    s.add_argument("--dropout", type=float, default=0.0, help="dropout rate used to choose the thresholds")
    s.add_argument("--degree", type=int, default=None, help="SecAgg+ Harary degree k (default: the parameter search's)")
    for name in ("threshold", "quorum"):
        s.add_argument(f"--{name}", type=int, default=None,
                       help=f"override the {name.replace('-', ' ')} (to probe parameters the config refuses)")
    s.add_argument("--samples", type=int, default=2000, help="random strategies beyond n = 7")
    s.add_argument("--json", action="store_true")
    _register_dp(sub)
    r = sub.add_parser("record", help="run one in-memory round and record the server's transcript")
    r.add_argument("file", type=Path)
    r.add_argument("--protocol", choices=["secagg", "secagg+"], default="secagg+")
    r.add_argument("--clients", type=int, default=20)
    r.add_argument("--dim", type=int, default=1000)
    r.add_argument("--adversary", choices=["semi-honest", "malicious"], default="semi-honest")
    r.add_argument("--dropout", type=float, default=0.1)
    r.add_argument("--seed", type=int, default=0, help="seeds the synthetic inputs and dropout schedule only")
    r.add_argument("--json", action="store_true")


def _register_dp(sub: Any) -> None:
    d = sub.add_parser("dp", help="one-run empirical lower bound on the epsilon of a distributed-DP configuration")
    d.add_argument("--epsilon", type=float, required=True, help="the DP target the noise is planned for")
    d.add_argument("--delta", type=float, default=defaults.DP_DELTA)
    d.add_argument("--rounds", type=int, default=4, help="rounds planned and run (the canaries are spread over them)")
    d.add_argument("--clients", type=int, default=10)
    d.add_argument("--dim", type=int, default=1024)
    d.add_argument("--clip", type=float, default=defaults.DP_L2_CLIP, help="L2 clip of each update")
    d.add_argument("--canaries", type=int, default=256, help="canaries in the target client's inputs")
    d.add_argument("--mechanism", choices=["ddgauss", "skellam"], default="ddgauss")
    d.add_argument("--no-noise", action="store_true",
                   help="same pipeline with the noise switched off: shows the audit detects a missing noise")
    d.add_argument("--seed", type=int, default=0, help="seeds the canaries, coins and synthetic data (not the noise)")
    d.add_argument("--confidence", type=float, default=0.95)
    d.add_argument("--guesses", type=int, default=None,
                   help="guess on this many canaries (default: try M, M/2 .. M/16 with the confidence split)")
    d.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed ``audit`` command and return its report (see :func:`succeeded`)."""
    if args.audit_command == "attacks":
        protocols = ("secagg", "secagg+") if args.protocol == "all" else (args.protocol,)
        return run_attacks(args.adversary, protocols, tuple(args.attack) if args.attack else None)
    if args.audit_command == "transcript":
        return _check_transcript_file(args.file, args.registry, args.alpha)
    if args.audit_command == "search":
        return run_search(args)
    if args.audit_command == "dp":
        from .dp_audit import audit  # needs the dp extra (scipy, dp-accounting): import on use

        return audit(args.epsilon, delta=args.delta, rounds=args.rounds, clients=args.clients, dim=args.dim,
                     clip=args.clip, canaries=args.canaries, mechanism=args.mechanism, noise=not args.no_noise,
                     seed=args.seed, confidence=args.confidence, guesses=args.guesses)
    return record_round(args.file, args.protocol, args.clients, args.dim, args.adversary, args.dropout, args.seed)


def _check_transcript_file(path: Path, registry_path: Path | None, alpha: float) -> dict[str, Any]:
    """``secagg audit transcript``: every failure is a :class:`SecAggError` (one line, exit status 2)."""
    if not path.is_file():
        raise ParameterError(f"no transcript at {path}")
    registry = read_registry(registry_path) if registry_path is not None else None
    try:
        transcript = read_transcript(path)
    except OSError as exc:
        raise ParameterError(f"cannot read the transcript {path}: {type(exc).__name__}") from None
    return {"file": str(path), **check_transcript(transcript, registry=registry, alpha=alpha)}


def succeeded(report: dict[str, Any]) -> bool:
    """Whether a report from :func:`run` means success (exit status 0)."""
    if "leaks" in report:
        return not report["leaks"]
    return bool(report.get("all_ok", report.get("ok", False)))


def search_config(protocol: str, clients: int, corrupt: int, dropout: float, degree: int | None) -> SecAggConfig:
    """The malicious config the parameter code yields (or, with ``degree``, the smallest valid t)."""
    threat = ThreatModel.malicious(corrupt / clients, dropout)
    schema = Schema.of(np.zeros(1, dtype=np.float32))
    encoding = FixedPoint(max_clients=clients)
    if degree is None:
        return SecAggConfig.for_protocol(protocol, clients, schema, threat, encoding)
    for t in range(1, degree + 2):
        try:
            return SecAggConfig(clients, t, schema, encoding, degree, threat=threat)
        except ParameterError:
            continue
    raise ParameterError(f"no threshold makes degree k={degree} safe for n={clients} and {corrupt} corrupt clients")


def run_search(args: argparse.Namespace) -> dict[str, Any]:
    """``secagg audit search``: the adversary search of :mod:`secagg.audit.search` on one parameter set."""
    n = args.clients
    if args.corrupt < 0 or (args.corrupt >= 1 and args.corrupt != int(args.corrupt)):
        raise ParameterError("--corrupt is a whole number of clients (>= 1) or a fraction in [0, 1)")
    corrupt = int(args.corrupt) if args.corrupt >= 1 else corrupt_count(n, args.corrupt)
    if not 0 <= corrupt < n:
        raise ParameterError(f"--corrupt must leave at least one honest client of {n}")
    degree = args.degree if args.protocol == "secagg+" else None
    config = search_config(args.protocol, n, corrupt, args.dropout, degree)
    model = Model.of_config(config)
    overrides = {"threshold": args.threshold, "quorum": args.quorum}
    if any(v is not None for v in overrides.values()):
        chosen = {k: (v if v is not None else getattr(model, k)) for k, v in overrides.items()}
        model = Model.build(n, model.degree, chosen["threshold"], chosen["quorum"], corrupt, promised=model.promised)
    report = search(model, samples=args.samples)
    return {"protocol": args.protocol, "adversary": args.adversary, **report.to_json()}


def record_round(path: Path, protocol: str, clients: int, dim: int, adversary: str, dropout: float,
                 seed: int) -> dict[str, Any]:
    """Run one round on synthetic inputs and write the server's transcript to ``path``."""
    malicious = adversary == "malicious"
    rate = max(dropout, 0.05)
    threat = ThreatModel.malicious(0.1, rate) if malicious else ThreatModel.semi_honest(0.1, rate)
    config = SecAggConfig.for_protocol(protocol, clients, Schema.of(np.zeros(dim, dtype=np.float32)), threat,
                                       FixedPoint(max_clients=clients))
    identities = {i: SigningKey.generate() for i in range(clients)} if malicious else None
    registry = {i: k.public_bytes for i, k in identities.items()} if identities else None
    context = b"secagg audit record"
    server = SecAggServer(config, context=context, registry=registry)
    parties = {i: SecAggClient(config, i, context=context, identity=identities[i] if identities else None,
                               registry=registry) for i in range(clients)}
    rng = np.random.default_rng(seed)  # ok: synthetic inputs, not secrets
    for party in parties.values():
        party.set_input(rng.normal(size=dim).astype(np.float32))
    schedule = dropout_schedule(clients, dropout, stages_for(config), seed)
    with TranscriptRecorder.open(path, SERVER_ID, config_meta(config, 0, registry)) as recorder:
        trace = run_round(server, parties, schedule, tap=recorder)
        count = recorder.count
    if trace.result is None:
        raise ParameterError("the round produced no aggregate")
    return {"file": str(path), "protocol": config.protocol, "clients": clients, "threshold": config.threshold,
            "degree": config.degree, "adversary": adversary, "messages": count,
            "survivors": list(trace.result.survivors), "ok": True}
