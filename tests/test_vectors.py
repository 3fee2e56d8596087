"""Known-answer tests against independently generated vectors (see tests/vectors/generate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from secagg.hazmat import shamir
from secagg.hazmat.keys import derive_key
from secagg.hazmat.prg import MaskStream, expand
from secagg.protocols.secagg import messages as m
from secagg.wire import Header, Reader, Writer

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> dict:
    data = json.loads((VECTORS / f"{name}.json").read_text())
    assert data["provenance"]
    return data


def test_prg_matches_aes_ctr_definition() -> None:
    for case in load("prg")["cases"]:
        key = bytes.fromhex(case["key"])
        assert expand(key, len(case["words"])).tolist() == case["words"]


def test_prg_chunked_fill_equals_one_shot() -> None:
    key = bytes(range(32))
    whole = expand(key, 10_000)
    stream, parts = MaskStream(key), []
    for size in (1, 3, 4, 1000, 5000, 3992):
        buf = np.empty(size, dtype=np.uint32)
        stream.fill(buf)
        parts.append(buf)
    assert np.array_equal(np.concatenate(parts), whole)


def test_kdf_labels_match_rfc5869_reference() -> None:
    for case in load("kdf")["cases"]:
        okm = derive_key(bytes.fromhex(case["ikm"]), case["label"].encode(), bytes.fromhex(case["context"]))
        assert okm.hex() == case["okm"]


def test_shamir_matches_reference_polynomials() -> None:
    v = load("shamir")
    coefficient_bytes = np.asarray(v["coefficients"], dtype="<u4").tobytes()
    source = iter([coefficient_bytes])
    shares = shamir.split([bytes.fromhex(v["secret"])], v["threshold"], v["xs"], random=lambda n: next(source))
    assert shares[:, 0, :].tolist() == v["shares"]
    picked = [0, 2, 3]
    secret = shamir.reconstruct([v["xs"][i] for i in picked], np.asarray(v["shares"])[picked][:, None, :])
    assert secret == [bytes.fromhex(v["secret"])]


def test_wire_layout_matches_hand_packed_bytes() -> None:
    v = load("wire")["masked_input"]
    header = Header(v["kind"], v["protocol"], v["round"], bytes.fromhex(v["session"]), v["sender"], v["recipient"])
    writer = Writer()
    m.MaskedInput(np.asarray(v["words"], dtype=np.uint32), v["bits"]).write(writer)
    assert writer.finish(header).hex() == v["bytes"]
    header_again, reader = Header.decode(bytes.fromhex(v["bytes"]))
    assert header_again == header
    assert reader.packed(3, v["bits"], np.uint32).tolist() == v["words"]
    reader.done()
    for case in load("wire")["packed"]:
        words = np.asarray(case["words"], dtype=np.uint64)
        assert Writer().packed(words, case["bits"]).body().hex() == case["bytes"]
        reader = Reader(memoryview(bytes.fromhex(case["bytes"])))
        assert reader.packed(len(words), case["bits"], np.uint64).tolist() == case["words"]
        reader.done()
    ids = load("wire")["id_list"]
    assert Writer().ids(ids["ids"]).body().hex() == ids["bytes"]
    assert Reader(memoryview(bytes.fromhex(ids["bytes"]))).ids(10) == tuple(ids["ids"])
