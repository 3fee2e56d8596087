"""Client masking and server unmasking next to the AES-CTR hardware bound, measured in one run.

Question: how close to the bound does SecAgg+ masking run at d = 4,194,304 (LLaMA-7B LoRA r=8 on
q,v), and how does Flower's SecAgg+ masking (its public functions, if flwr is installed) compare?

bound(k) = k AES-256-CTR expansions of d uint32 words into a preallocated buffer + k in-place
uint32 adds + one deterministic quantisation of the float32 input. Ours additionally draws a self
mask and stochastic-rounding noise (two more AES streams): the ratio shows their total cost.

Run: ``python -m benchmarks.masking [--dim D] [--repeats R] [--plot FILE]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import numpy as np

from secagg import FixedPoint, Schema, SecAggConfig, ThreatModel
from secagg.hazmat.keys import AgreementKeyPair
from secagg.hazmat.prg import MaskStream
from secagg.protocols.secagg import SecAggClient, SecAggServer, Stage
from secagg.protocols.secagg.masking import mask_input
from secagg.router import run_round

LLAMA7B_LORA_R8_QV = 4_194_304


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bound(values: np.ndarray, k: int, encoding: FixedPoint) -> Callable[[], object]:
    d = values.shape[0]
    acc = np.empty(d, dtype=np.uint32)
    buf = np.empty(d, dtype=np.uint32)
    keys = [os.urandom(32) for _ in range(k)]

    def run() -> None:
        scaled = np.clip(values, -encoding.clip_bound, encoding.clip_bound) * float(2**encoding.fractional_bits)
        acc[:] = scaled.astype(np.int64).astype(np.uint32)
        for key in keys:
            MaskStream(key).fill(buf)
            np.add(acc, buf, out=acc)

    return run


def client_at_delivery(values: np.ndarray, k: int, encoding: FixedPoint) -> tuple[SecAggClient, bytes]:
    """A real client of a complete graph with k neighbours, stopped just before masking."""
    schema = Schema.of(values)
    config = SecAggConfig(k + 1, max(2, k // 2), schema, encoding, None, threat=ThreatModel.semi_honest(0.0, 0.0))
    server = SecAggServer(config)
    clients = {i: SecAggClient(config, i) for i in range(k + 1)}
    clients[0].set_input(values)
    for party in clients.values():
        server.receive(party.advertise())
    outbox = server.advance()
    for cid, data in outbox.items():
        reply = clients[cid].handle(data)
        assert reply is not None
        server.receive(reply)
    return clients[0], server.advance()[0]


def masking_step(client: SecAggClient, values: np.ndarray, k: int) -> Callable[[], object]:
    """The client's own masking code (:func:`mask_input`) for ``client``'s session, with a fresh seed,
    mask key pair and k peer keys: the same streams and quantisation as in its round."""
    seed, masking = os.urandom(32), AgreementKeyPair.generate()
    peers = {p: AgreementKeyPair.generate().public_bytes for p in range(1, k + 1)}
    return lambda: mask_input(client.config, client.session, client.client_id, seed, masking, peers, values=values)


def masking_row(values: np.ndarray, k: int, encoding: FixedPoint, repeats: int) -> dict[str, float]:
    client, delivery = client_at_delivery(values, k, encoding)
    ours_mask = median_seconds(masking_step(client, values, k), repeats)
    start = time.perf_counter()
    client.handle(delivery)  # the whole stage once: AEAD opens, key agreement, masking, MAC tag
    ours_stage = time.perf_counter() - start
    bound_s = median_seconds(bound(values, k, encoding), repeats)
    return {"k": k, "ours_s": ours_mask, "stage_s": ours_stage, "bound_s": bound_s, "ratio": ours_mask / bound_s}


def flower_masking(values: np.ndarray, k: int, repeats: int) -> float | None:
    """Flower's SecAgg+ client masking, composed from flwr's own public functions."""
    try:
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            parameters_addition, parameters_mod, parameters_subtraction)
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    except ImportError:
        return None
    mod_range, dims = 1 << 32, [values.shape]
    seeds = [os.urandom(32) for _ in range(k + 1)]

    def run() -> None:
        masked = quantize([values], 8.0, 1 << 22)
        masked = parameters_addition(masked, pseudo_rand_gen(seeds[-1], mod_range, dims))
        for i, seed in enumerate(seeds[:-1]):
            mask = pseudo_rand_gen(seed, mod_range, dims)
            masked = (parameters_addition if i % 2 else parameters_subtraction)(masked, mask)
        parameters_mod(masked, mod_range)

    return median_seconds(run, max(1, repeats // 2))


def server_row(dim: int, n: int, k: int, dropout: float, encoding: FixedPoint) -> dict[str, float]:
    """Server time for one SecAgg+ round (n clients, degree k, dropouts after sharing)."""
    schema = Schema.of(np.zeros(dim, dtype=np.float32))
    config = SecAggConfig(n, k // 2 + 1, schema, encoding, k, threat=ThreatModel.semi_honest(0.0, dropout))
    server = SecAggServer(config)
    clients = {i: SecAggClient(config, i) for i in range(n)}
    words = encoding.encode(np.zeros(dim))
    for c in clients.values():
        c.set_encoded_input(words)
    drops = {i: "mask" for i in range(int(round(dropout * n)))}
    trace = run_round(server, clients, drops)
    survivors = len(trace.result.survivors)
    corrections = sum(1 for u in drops for v in server.graph[u] if v not in drops)
    streams = survivors + corrections
    acc = np.zeros(dim + 1, dtype=np.uint32)
    buf = np.empty(dim + 1, dtype=np.uint32)
    keys = [os.urandom(32) for _ in range(streams)]

    def unmask_bound() -> None:
        for key in keys:
            MaskStream(key).fill(buf)
            np.subtract(acc, buf, out=acc)

    return {
        "n": n, "k": k, "dropped": len(drops), "streams": streams,
        "unmask_s": trace.server_seconds[Stage.UNMASK.value],
        "server_total_s": sum(trace.server_seconds.values()),
        "bound_s": median_seconds(unmask_bound, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=LLAMA7B_LORA_R8_QV)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--degrees", type=int, nargs="+", default=[4, 10, 20])
    parser.add_argument("--plot", default=None, help="write a PNG bar chart here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)  # ok: synthetic benchmark input
    values = (rng.standard_normal(args.dim) * 0.01).astype(np.float32)
    encoding = FixedPoint(clip_bound=8.0, fractional_bits=18, max_clients=1000)  # Flower-equivalent precision
    print(f"client masking, d = {args.dim:,}, {encoding.modulus_bits}-bit ring in uint32, median of {args.repeats}")
    print(f"{'k':>4} {'ours ms':>9} {'stage ms':>9} {'bound ms':>9} {'ours/bound':>11} {'flower ms':>10} {'flower/ours':>12}")
    rows = []
    for k in args.degrees:
        row = masking_row(values, k, encoding, args.repeats)
        flower_s = flower_masking(values, k, args.repeats) if k == 10 else None
        rows.append(row)
        flower = f"{flower_s * 1e3:10.1f} {flower_s / row['ours_s']:11.1f}x" if flower_s else ""
        print(f"{k:>4} {row['ours_s'] * 1e3:9.1f} {row['stage_s'] * 1e3:9.1f} {row['bound_s'] * 1e3:9.1f} "
              f"{row['ratio']:10.2f}x {flower}")
    srv = server_row(args.dim, 20, 10, 0.2, encoding)
    print(f"\nserver, n = {srv['n']}, k = {srv['k']}, {srv['dropped']} dropped after sharing, d = {args.dim:,}")
    print(f"unmask stage {srv['unmask_s'] * 1e3:.1f} ms ({srv['streams']} mask streams); "
          f"bound {srv['bound_s'] * 1e3:.1f} ms; ratio {srv['unmask_s'] / srv['bound_s']:.2f}x; "
          f"all server stages {srv['server_total_s'] * 1e3:.1f} ms")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = [str(int(r["k"])) for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["ours_s"] * 1e3 for r in rows], 0.4, label="secagg (ours)")
    ax.bar(x + 0.2, [r["bound_s"] * 1e3 for r in rows], 0.4, label="AES-CTR bound")
    ax.set_xticks(x, ks)
    ax.set_xlabel("neighbours k")
    ax.set_ylabel("client masking (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
