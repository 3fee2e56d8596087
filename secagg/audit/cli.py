"""``secagg audit``: run the adversarial-server harness, record and check transcripts.

- ``secagg audit attacks --adversary semi-honest|malicious [--protocol secagg|secagg+|all] --json``
- ``secagg audit transcript FILE [--registry FILE] --json``
- ``secagg audit record FILE [--protocol secagg+ --clients 20 --dim 1000 --adversary ...] --json``

Exit status 0 when every attack matched its expectation / the transcript passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..encoding import FixedPoint, Schema
from ..errors import ParameterError
from ..hazmat.keys import SigningKey
from ..params import ThreatModel
from ..protocols.secagg import SecAggClient, SecAggServer
from ..router import run_round, stages_for
from ..simulation import dropout_schedule, make_config
from ..wire import SERVER_ID
from .attacks import attack_names
from .harness import run_attacks
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
    r = sub.add_parser("record", help="run one in-memory round and record the server's transcript")
    r.add_argument("file", type=Path)
    r.add_argument("--protocol", choices=["secagg", "secagg+"], default="secagg+")
    r.add_argument("--clients", type=int, default=20)
    r.add_argument("--dim", type=int, default=1000)
    r.add_argument("--adversary", choices=["semi-honest", "malicious"], default="semi-honest")
    r.add_argument("--dropout", type=float, default=0.1)
    r.add_argument("--seed", type=int, default=0, help="seeds the synthetic inputs and dropout schedule only")
    r.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed ``audit`` command and return its report (see :func:`succeeded`)."""
    if args.audit_command == "attacks":
        protocols = ("secagg", "secagg+") if args.protocol == "all" else (args.protocol,)
        return run_attacks(args.adversary, protocols, tuple(args.attack) if args.attack else None)
    if args.audit_command == "transcript":
        return _check_transcript_file(args.file, args.registry, args.alpha)
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
    return bool(report.get("all_ok", report.get("ok", False)))


def record_round(path: Path, protocol: str, clients: int, dim: int, adversary: str, dropout: float,
                 seed: int) -> dict[str, Any]:
    """Run one round on synthetic inputs and write the server's transcript to ``path``."""
    malicious = adversary == "malicious"
    rate = max(dropout, 0.05)
    threat = ThreatModel.malicious(0.1, rate) if malicious else ThreatModel.semi_honest(0.1, rate)
    config = make_config(protocol, clients, Schema.of(np.zeros(dim, dtype=np.float32)), threat,
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
    schedule = dropout_schedule(clients, dropout, stages_for(malicious), seed)
    with TranscriptRecorder.open(path, SERVER_ID, config_meta(config, 0, registry)) as recorder:
        trace = run_round(server, parties, schedule, tap=recorder)
        count = recorder.count
    if trace.result is None:
        raise ParameterError("the round produced no aggregate")
    return {"file": str(path), "protocol": config.protocol, "clients": clients, "threshold": config.threshold,
            "degree": config.degree, "adversary": adversary, "messages": count,
            "survivors": list(trace.result.survivors), "ok": True}
