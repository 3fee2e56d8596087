"""Every attack of the harness, against both variants and both protocols, matches its expectation."""

from __future__ import annotations

import pytest

from secagg.audit.attacks import ATTACKS, attack_names
from secagg.audit.harness import BY_DESIGN, DETECTED, REFUSED, SUCCEEDED, run_attacks

REPORTS: dict[str, dict] = {}


def report(adversary: str) -> dict:
    if adversary not in REPORTS:
        REPORTS[adversary] = run_attacks(adversary)
    return REPORTS[adversary]


def rows(adversary: str, name: str) -> list[dict]:
    found = [r for r in report(adversary)["rows"] if r["name"] == name]
    assert {r["protocol"] for r in found} == {"secagg", "secagg+"}
    return found


def test_the_catalogue_covers_the_issue() -> None:
    assert set(attack_names()) == {
        "both-survivor-and-dropped", "inconsistent-survivor-sets", "false-dropout-claim", "key-substitution-mitm",
        "replay-earlier-round", "replay-earlier-session", "different-models", "split-sessions", "tampered-bytes",
        "sybils-without-registry", "sybils-with-registry",
        # issue 8: each of these succeeded against the code before its fix (see the closing note)
        "restricted-delivery", "graph-grinding", "advertise-dropout-amplification", "mirrored-key", "bad-share-abort",
    }
    assert all(a.malicious.outcome in (REFUSED, DETECTED) for a in ATTACKS)


@pytest.mark.parametrize("adversary", ["semi-honest", "malicious"])
def test_all_ok_and_row_fields(adversary: str) -> None:
    out = report(adversary)
    assert out["all_ok"] is True
    assert len(out["rows"]) == 2 * len(ATTACKS)
    for row in out["rows"]:
        assert {"name", "expected", "outcome", "ok", "reason", "evidence"} <= set(row)
        if row["expected"] != BY_DESIGN:
            assert row["individual_inputs_leaked"] == []


@pytest.mark.parametrize("name", attack_names())
def test_malicious_variant_refuses_or_detects(name: str) -> None:
    for row in rows("malicious", name):
        assert row["ok"], row
        assert row["outcome"] in (REFUSED, DETECTED)
        assert row["individual_inputs_leaked"] == []


@pytest.mark.parametrize("name", attack_names())
def test_semi_honest_variant_matches_its_documented_limits(name: str) -> None:
    attack = next(a for a in ATTACKS if a.name == name)
    for row in rows("semi-honest", name):
        assert row["ok"], row
        if attack.semi_honest.outcome == BY_DESIGN:
            assert row["outcome"] == SUCCEEDED
            assert len(row["individual_inputs_leaked"]) == (1 if attack.semi_honest.leaks else 0)
        else:
            assert row["outcome"] == attack.semi_honest.outcome


def test_evidence_names_the_check_that_fired() -> None:
    overlap = rows("semi-honest", "both-survivor-and-dropped")[0]
    assert "both surviving and dropped" in overlap["evidence"]
    mitm = rows("malicious", "key-substitution-mitm")[0]
    assert "signature verification failed" in mitm["evidence"]
    split = rows("malicious", "split-sessions")[1]
    assert "advertised keys; need 12" in split["evidence"]
    models = rows("semi-honest", "different-models")[0]
    assert "delivery" in models["evidence"]


def test_isolation_attacks_are_refused_by_the_check_the_proof_uses() -> None:
    plain, plus = rows("malicious", "restricted-delivery")
    assert "the quorum is 12" in plain["evidence"]
    assert "fewer than t = 8 of their share holders" in plus["evidence"]
    grinding = rows("malicious", "graph-grinding")[1]
    # 24 contexts x 2 server channel keys: the keys change nothing, each context one graph
    assert "48 graph draws gave 24 distinct graph" in grinding["evidence"]
    for row in rows("malicious", "mirrored-key") + rows("semi-honest", "mirrored-key"):
        assert "not canonically encoded" in row["evidence"]
    for row in rows("malicious", "bad-share-abort"):
        assert "identified and left out" in row["evidence"] and "exact" in row["evidence"]
