"""How do server time, client time and memory grow with n at d = 100,000 (SecAgg+, 5% dropout)?

Runs ``secagg simulate --protocol secagg+ --dim D --dropout 0.05 --json`` once per client count, each
in a fresh process (so ``peak_rss_bytes`` is that run's own peak), and prints per stage the
server's seconds, the clients' mean seconds, the peak RSS and the wall time, then the ratios of
server seconds per client and client seconds between the largest and the smallest n (1.0: linear
server, n-independent clients). The simulations stream their inputs above 5e7 values
(``--streaming auto``), so memory is O(d + n·k).

Run: ``python -m benchmarks.scale [--clients 1000 5000 10000] [--dim 100000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

STAGES = ("advertise", "share", "mask", "unmask")


def run(clients: int, dim: int, dropout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "secagg", "simulate", "--protocol", "secagg+", "--clients", str(clients),
               "--dim", str(dim), "--dropout", str(dropout), "--json"]
    start = time.perf_counter()
    report: dict[str, Any] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    report["wall_seconds"] = time.perf_counter() - start
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.05)
    args = parser.parse_args()
    reports = [run(n, args.dim, args.dropout) for n in args.clients]
    print(f"{'n':>6} {'k':>3} {'exact':>5} " + " ".join(f"{'srv ' + s[:6]:>11}" for s in STAGES)
          + f" {'srv total':>9} " + " ".join(f"{'cli ' + s[:6] + ' ms':>14}" for s in STAGES)
          + f" {'peak RSS MiB':>12} {'wall s':>7}")
    for r in reports:
        server, client = r["server_seconds"], r["client_seconds"]
        print(f"{r['clients']:>6} {r['degree']:>3} {str(r['exact']):>5} "
              + " ".join(f"{server.get(s, 0.0):>11.3f}" for s in STAGES) + f" {sum(server.values()):>9.2f} "
              + " ".join(f"{1e3 * client.get(s, {}).get('mean', 0.0):>14.2f}" for s in STAGES)
              + f" {r['peak_rss_bytes'] / 2**20:>12.0f} {r['wall_seconds']:>7.1f}")
    if len(reports) > 1:
        small, large = reports[0], reports[-1]
        per_client = [sum(r["server_seconds"].values()) / r["clients"] for r in (small, large)]
        print(f"server seconds per client, n={large['clients']} / n={small['clients']}: {per_client[1] / per_client[0]:.2f}")
        for s in ("share", "mask"):
            ratio = large["client_seconds"][s]["mean"] / small["client_seconds"][s]["mean"]
            print(f"client {s} mean, n={large['clients']} / n={small['clients']}: {ratio:.2f}")


if __name__ == "__main__":
    main()
