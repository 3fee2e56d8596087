"""What does sending masked vectors at the ring width cost in time, and save in bytes?

A masked input of d words of a b-bit ring used to travel as machine words (1, 2, 4 or 8 bytes);
it now travels as exactly b bits per word (``Writer.packed``). For d = 4,194,304 and b in
{12, 20, 37, 64} this prints bytes per value and, old (machine words) vs new (packed), medians of:

* field encode: the vector field alone (``Writer.array`` vs ``Writer.packed``);
* field decode: parse it and add it into the server's accumulator (old: zero-copy view; new:
  unpacked into a reused buffer);
* message encode / decode: the whole authenticated message, i.e. with the header and the Poly1305
  tag the client computes and the server checks.

Run: ``python -m benchmarks.packing [--dim D] [--repeats R]``
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import numpy as np

from benchmarks.masking import LLAMA7B_LORA_R8_QV, median_seconds
from secagg.encoding import word_dtype
from secagg.wire import SERVER_ID, Header, Reader, Writer, strip_tag



def median_ms(fn: Callable[[], object], repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats)


def row(bits: int, dim: int, repeats: int) -> dict[str, float]:
    dtype = word_dtype(bits)
    rng = np.random.default_rng(bits)  # ok: synthetic benchmark input
    words = (rng.integers(0, 1 << 63, dim, dtype=np.uint64, endpoint=True) & np.uint64((1 << bits) - 1)).astype(dtype)
    header = Header(5, 2, 0, bytes(32), 3, SERVER_ID)
    key = os.urandom(32)
    acc, buf = np.zeros(dim, dtype=dtype), np.empty(dim, dtype=dtype)

    def encode(packed: bool) -> Callable[[], bytes]:
        return lambda: (Writer().packed(words, bits) if packed else Writer().array(words)).finish(header, key)

    def read(reader: Reader, packed: bool) -> None:
        vector = reader.packed(dim, bits, dtype, out=buf) if packed else reader.array(dtype.itemsize, dim)
        reader.done()
        np.add(acc, vector, out=acc)

    def field_decode(body: bytes, packed: bool) -> Callable[[], None]:
        return lambda: read(Reader(memoryview(body)), packed)

    def message_decode(message: bytes, packed: bool) -> Callable[[], None]:
        return lambda: read(Header.decode(strip_tag(message, key))[1], packed)

    out: dict[str, float] = {"bits": bits, "old_bpv": dtype.itemsize, "new_bpv": bits / 8}
    for name, packed in (("old", False), ("new", True)):
        body = (Writer().packed(words, bits) if packed else Writer().array(words)).body()
        message = encode(packed)()
        out[f"{name}_fenc"] = median_ms(lambda: (Writer().packed(words, bits) if packed else Writer().array(words)).body(), repeats)
        out[f"{name}_fdec"] = median_ms(field_decode(body, packed), repeats)
        out[f"{name}_menc"] = median_ms(encode(packed), repeats)
        out[f"{name}_mdec"] = median_ms(message_decode(message, packed), repeats)
        out[f"{name}_bytes"] = len(message)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=LLAMA7B_LORA_R8_QV)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 20, 37, 64])
    args = parser.parse_args()
    print(f"masked input, d = {args.dim:,}, old = machine words, new = ring width; ms, median of {args.repeats}")
    print(f"{'b':>3} {'B/value':>11} {'field enc':>15} {'field dec+add':>15} {'msg enc':>15} {'msg dec+add':>15}"
          f" {'msg enc new/old':>16} {'msg dec new/old':>16}")
    for bits in args.bits:
        r = row(bits, args.dim, args.repeats)
        print(f"{bits:>3} {r['old_bpv']:>4.2f} -> {r['new_bpv']:<4.3g}"
              + "".join(f" {r['old_' + k]:>6.2f} -> {r['new_' + k]:<5.2f}" for k in ("fenc", "fdec", "menc", "mdec"))
              + f" {r['new_menc'] / r['old_menc']:>15.2f}x {r['new_mdec'] / r['old_mdec']:>15.2f}x")


if __name__ == "__main__":
    main()
