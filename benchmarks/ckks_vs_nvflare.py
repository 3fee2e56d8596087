"""Question: does our CKKS aggregation upload fewer bytes and finish sooner than NVFlare's?

Both run in this one process on the same random LoRA-sized update (d = 4,194,304 by default) for a
few clients, end to end: key setup, encryption at every client, aggregation at the server,
decryption. Printed: a table (upload bytes, bytes per value, encrypt / aggregate / decrypt / end-to-
end seconds) and the ratios ours / theirs.

* ours: the full protocol (``secagg.protocols.ckks``) with the addition-only preset (N = 4096, one
  60-bit data prime), one ciphertext per 2048-value chunk, keys sent once per session, chunk
  encryption and decryption in a process pool;
* NVFlare-style: N = 8192, coeff [60, 40, 40], scale 2^40, one ``ckks_vector`` per 32,768-value
  tensor, each serialised with the public context (here the smallest one, public key only, which
  favours NVFlare), the weight multiplied in the clear at the server, every client holding the key.

Run: ``PYTHONPATH=. python benchmarks/ckks_vs_nvflare.py [--dim D] [--clients N]``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from secagg.encoding import Schema
from secagg.protocols.ckks import PRESETS, CkksClient, CkksConfig, CkksServer
from secagg.protocols.ckks.parallel import ChunkPool

TENSOR = 32768


@dataclass
class Row:
    """One system's measurements."""

    name: str
    upload_bytes: float
    dim: int
    encrypt_s: float
    aggregate_s: float
    decrypt_s: float
    total_s: float
    max_abs_error: float

    @property
    def bytes_per_value(self) -> float:
        return self.upload_bytes / self.dim


def synthetic_updates(clients: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.05, dim).astype(np.float32) for _ in range(clients)]


def _sent(data: bytes | None) -> bytes:
    """A message the protocol says this party sends at this point."""
    assert data is not None
    return data


def _ours_setup(config: CkksConfig, server: CkksServer, parties: dict[int, CkksClient]) -> dict[int, bytes]:
    for cid in sorted(parties):  # every client advertises its channel key
        server.receive(_sent(parties[cid].advertise()))
    (generator, key_list), = server.advance().items()
    server.receive(_sent(parties[generator].handle(key_list)))
    return dict(server.advance())


def run_ours(updates: list[np.ndarray], weights: list[int], pool: ChunkPool, preset: str = "addition-128") -> Row:
    """The whole protocol round with one of our presets, timed stage by stage."""
    n, dim = len(updates), updates[0].shape[0]
    start = time.perf_counter()
    config = CkksConfig(n, Schema.of(updates[0]), PRESETS[preset], max_weight=max(weights))
    server = CkksServer(config)
    parties = {i: CkksClient(config, i, pool=pool) for i in range(n)}
    contexts = _ours_setup(config, server, parties)
    encrypt = aggregate = 0.0
    sizes = []
    for i in range(n):
        parties[i].set_input(updates[i], weights[i])
        t0 = time.perf_counter()
        upload = _sent(parties[i].handle(contexts[i]))
        t1 = time.perf_counter()
        server.receive(upload)
        encrypt, aggregate = encrypt + t1 - t0, aggregate + time.perf_counter() - t1
        sizes.append(len(upload))
    t0 = time.perf_counter()
    (holder, request), = server.advance().items()
    aggregate += time.perf_counter() - t0
    t0 = time.perf_counter()
    server.receive(_sent(parties[holder].handle(request)))
    server.advance()
    decrypt = time.perf_counter() - t0
    total = time.perf_counter() - start
    exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates)) / sum(weights)
    error = float(np.abs(server.result().average_vector() - exact).max())
    return Row(f"ours ({preset})", float(np.mean(sizes)), dim, encrypt / n, aggregate, decrypt, total, error)


def _nv_context() -> tuple[ts.Context, bytes]:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2.0**40
    return ctx, ctx.serialize(save_secret_key=False, save_relin_keys=False, save_galois_keys=False)


def _nv_encrypt(ctx: ts.Context, public: bytes, update: np.ndarray) -> list[bytes]:
    """One message per tensor: the serialized vector and the context that goes with it."""
    return [
        ts.ckks_vector(ctx, update[a : a + TENSOR].astype(np.float64)).serialize() + public
        for a in range(0, update.shape[0], TENSOR)
    ]


def _nv_aggregate(ctx: ts.Context, public_len: int, uploads: list[list[bytes]], weights: list[int]) -> list[bytes]:
    """NVFlare's weighted accumulation: clear weight times each tensor, then add."""
    out = []
    for t in range(len(uploads[0])):
        total = None
        for upload, weight in zip(uploads, weights):
            vec = ts.ckks_vector_from(ctx, upload[t][:-public_len]) * float(weight)
            total = vec if total is None else total + vec
        assert total is not None
        out.append(total.serialize())
    return out


def run_nvflare(updates: list[np.ndarray], weights: list[int]) -> Row:
    n, dim = len(updates), updates[0].shape[0]
    start = time.perf_counter()
    ctx, public = _nv_context()
    t0 = time.perf_counter()
    uploads = [_nv_encrypt(ctx, public, u) for u in updates]
    t1 = time.perf_counter()
    summed = _nv_aggregate(ctx, len(public), uploads, weights)
    t2 = time.perf_counter()
    plain = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, b).decrypt()) for b in summed]) / sum(weights)
    t3 = time.perf_counter()
    exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates)) / sum(weights)
    error = float(np.abs(plain[:dim] - exact).max())
    size = float(np.mean([sum(len(m) for m in u) for u in uploads]))
    return Row("NVFlare-style", size, dim, (t1 - t0) / n, t2 - t1, t3 - t2, t3 - start, error)


def _table(rows: list[Row]) -> str:
    head = f"{'system':<22}{'upload MB':>11}{'B/value':>9}{'enc s':>8}{'agg s':>8}{'dec s':>8}{'e2e s':>8}{'max err':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<22}{r.upload_bytes / 1e6:>11.1f}{r.bytes_per_value:>9.2f}{r.encrypt_s:>8.2f}"
            f"{r.aggregate_s:>8.2f}{r.decrypt_s:>8.2f}{r.total_s:>8.2f}{r.max_abs_error:>10.1e}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=4_194_304)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    updates = synthetic_updates(args.clients, args.dim, args.seed)
    weights = [1 + i % 3 for i in range(args.clients)]
    with ChunkPool() as pool:
        t0 = time.perf_counter()
        pool.warm_up()
        warm = time.perf_counter() - t0
        ours = run_ours(updates, weights, pool)
    theirs = run_nvflare(updates, weights)
    print(f"d = {args.dim:,}, {args.clients} clients, enc s = per client; pool start-up (once per process) {warm:.2f} s")
    print(_table([ours, theirs]))
    print(f"upload bytes ours/theirs: {ours.upload_bytes / theirs.upload_bytes:.3f}  (target <= 0.6)")
    print(f"end-to-end time ours/theirs: {ours.total_s / theirs.total_s:.3f}  (target <= 1.0)")
    print(f"end-to-end incl. pool start-up ours/theirs: {(ours.total_s + warm) / theirs.total_s:.3f}")


if __name__ == "__main__":
    main()
