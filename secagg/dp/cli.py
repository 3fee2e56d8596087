"""``secagg dp plan``: choose distributed-DP parameters for a privacy target.

``secagg dp plan --epsilon E --delta D --rounds R --clients N --min-survivors S --dim D --clip C
[--mechanism ddgauss|skellam] [--bits B] --json`` prints :meth:`DpPlan.to_json`. The flags and JSON
field names are a contract with users' scripts: add, never rename.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``dp`` command (with ``plan``) to a CLI's subparsers."""
    dp = subparsers.add_parser("dp", help="distributed differential privacy: plan noise, scale and ring width")
    sub = dp.add_subparsers(dest="dp_command", required=True)
    p = sub.add_parser("plan", help="choose bits, scale and per-client noise for (epsilon, delta) over rounds")
    p.add_argument("--epsilon", type=float, required=True, help="target epsilon over all rounds")
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--clients", type=int, required=True, help="clients per round (sizes the ring)")
    p.add_argument("--min-survivors", type=int, required=True,
                   help="fewest honest clients whose noise is in a released sum (worst case: see SECURITY.md)")
    p.add_argument("--dim", type=int, required=True, help="length of each client's vector")
    p.add_argument("--clip", type=float, required=True, help="L2 clip norm of each client's vector")
    p.add_argument("--mechanism", choices=["ddgauss", "skellam"], default="ddgauss")
    p.add_argument("--bits", type=int, default=None, help="ring width (default: chosen, at most 20 if possible)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ``dp`` subcommand named in ``args``; raises :class:`ParameterError` on bad input."""
    from .plan import plan  # needs the dp extra; imported only when the command runs

    result = plan(args.epsilon, args.delta, args.rounds, args.clients, args.min_survivors, args.dim,
                  args.clip, mechanism=args.mechanism, bits=args.bits)
    return result.to_json()
