"""Regenerate the known-answer vectors in this folder from INDEPENDENT reference computations.

Provenance: nothing here calls secagg's own PRG, KDF, Shamir or wire code.
- prg.json: AES-256 in ECB mode applied to big-endian counter blocks 0, 1, 2, ... (the definition
  of CTR mode with an all-zero initial counter block, NIST SP 800-38A section 6.5), read as
  little-endian uint32 words.
- kdf.json: HKDF-SHA256 (RFC 5869) written out with the standard library's ``hmac``, with
  info = b"secagg/v1/" + label + b"\\x00" + context and an empty salt.
- shamir.json: polynomials with fixed coefficients over GF(2^31 - 1), evaluated with Python
  integers; secrets cut into little-endian 16-bit chunks.
- wire.json: headers and bodies packed by hand with ``struct`` from the layout in secagg/wire.py;
  bit-packed vectors built as one Python integer sum(word_i << (i * bits)) written little-endian.
Run: ``python tests/vectors/generate.py`` (writes the JSON files next to this script).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HERE = Path(__file__).parent
PRIME = 2**31 - 1


def aes_ctr_reference(key: bytes, words: int) -> list[int]:
    blocks = -(-words * 4 // 16)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(blocks))
    return list(struct.unpack(f"<{words}I", stream[: 4 * words]))


def hkdf_reference(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def shamir_reference(secret: bytes, coefficients: list[list[int]], xs: list[int]) -> list[list[int]]:
    chunks = [int.from_bytes(secret[i : i + 2], "little") for i in range(0, len(secret), 2)]
    shares = []
    for x in xs:
        row = []
        for c, a0 in enumerate(chunks):
            poly = [a0] + [coefficients[j][c] for j in range(len(coefficients))]
            row.append(sum(a * pow(x, j, PRIME) for j, a in enumerate(poly)) % PRIME)
        shares.append(row)
    return shares


def packed_reference(words: list[int], bits: int) -> bytes:
    stream = sum(w << (i * bits) for i, w in enumerate(words))
    return stream.to_bytes(-(-len(words) * bits // 8), "little")


def main() -> None:
    prg = {
        "provenance": "AES-256-ECB over big-endian counter blocks (NIST SP 800-38A CTR definition); see generate.py",
        "cases": [
            {"key": bytes(range(32)).hex(), "words": aes_ctr_reference(bytes(range(32)), 10)},
            {"key": (b"\xff" * 32).hex(), "words": aes_ctr_reference(b"\xff" * 32, 9)},
        ],
    }
    kdf_cases = []
    for label, context in [(b"pairwise-mask", b""), (b"self-mask", b"session-0"), (b"share-encryption", bytes(40))]:
        ikm = hashlib.sha256(label).digest()
        info = b"secagg/v1/" + label + b"\x00" + context
        kdf_cases.append({"ikm": ikm.hex(), "label": label.decode(), "context": context.hex(),
                          "okm": hkdf_reference(ikm, info).hex()})
    kdf = {"provenance": "RFC 5869 HKDF-SHA256 via stdlib hmac, empty salt; see generate.py", "cases": kdf_cases}
    secret = bytes(range(100, 132))
    coefficients = [[(7919 * (j + 1) * (c + 3)) % PRIME for c in range(16)] for j in range(2)]
    xs = [1, 2, 5, 9]
    shamir = {
        "provenance": "degree-2 polynomials with fixed coefficients over GF(2^31-1), Python ints; see generate.py",
        "secret": secret.hex(), "threshold": 3, "coefficients": coefficients, "xs": xs,
        "shares": shamir_reference(secret, coefficients, xs),
    }
    header = struct.pack("<4sHBBQ32sII", b"SAGG", 1, 5, 2, 7, bytes(range(32)), 3, 0xFFFFFFFF)
    body = struct.pack("<BQ", 20, 3) + packed_reference([1, 2, 0xFFFFF], 20)
    packed_cases = []
    for bits in (1, 3, 12, 20, 37, 63, 64):
        words = [(0x9E3779B97F4A7C15 * (i + 1)) % (1 << bits) for i in range(11)]
        packed_cases.append({"bits": bits, "words": words,
                             "bytes": (struct.pack("<BQ", bits, len(words)) + packed_reference(words, bits)).hex()})
    ids = struct.pack("<I", 3) + struct.pack("<3I", 1, 4, 9)
    wire = {
        "provenance": "packed by hand with struct from the documented layout; see generate.py",
        "masked_input": {"kind": 5, "protocol": 2, "round": 7, "session": bytes(range(32)).hex(), "sender": 3,
                         "recipient": 0xFFFFFFFF, "bits": 20, "words": [1, 2, 0xFFFFF], "bytes": (header + body).hex()},
        "packed": packed_cases,
        "id_list": {"ids": [1, 4, 9], "bytes": ids.hex()},
    }
    for name, data in [("prg", prg), ("kdf", kdf), ("shamir", shamir), ("wire", wire)]:
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
