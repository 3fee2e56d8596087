"""Node identities for malicious-model rounds: key files, the registry, claims, ``secagg identity``.

No flwr here: :mod:`secagg.adapters.identity` is the part of the Flower PKI that does not move bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from secagg import IntegrityError, ParameterError, ProtocolAbort, SecAggConfig, ThreatModel
from secagg.adapters import identity
from secagg.adapters.identity import NodeIdentity, Registry, bind_registry
from secagg.audit.transcript_check import read_registry
from secagg.cli import main
from secagg.encoding import Schema
from secagg.hazmat.keys import SigningKey


def _enrol(tmp_path: Path, count: int) -> tuple[list[Path], list[Path], Path]:
    keys = [tmp_path / f"node{i}.key" for i in range(count)]
    publics = [identity.new_identity(k)[0] for k in keys]
    registry = tmp_path / "registry.json"
    identity.write_registry(publics, registry)
    return keys, publics, registry


# -- key files ---------------------------------------------------------------------------------------------
def test_new_identity_writes_a_private_key_only_its_owner_reads(tmp_path) -> None:
    public_path, public = identity.new_identity(tmp_path / "node.key")
    assert public_path == tmp_path / "node.pub"
    assert stat.S_IMODE(os.stat(tmp_path / "node.key").st_mode) == 0o600
    assert identity.read_identity_key(tmp_path / "node.key").public_bytes == public
    assert identity.read_public_key(public_path) == public
    text = (tmp_path / "node.key").read_text()
    assert text.startswith("secagg-ed25519-private-key-v1 ") and len(text) == 30 + 64 + 1
    assert identity.new_identity(tmp_path / "other.key")[1] != public  # fresh randomness each time


def test_new_identity_never_overwrites(tmp_path) -> None:
    identity.new_identity(tmp_path / "node.key")
    before = (tmp_path / "node.key").read_bytes()
    with pytest.raises(ParameterError, match="exists"):
        identity.new_identity(tmp_path / "node.key")
    (tmp_path / "lonely.pub").write_text("x")
    with pytest.raises(ParameterError, match="lonely.pub exists"):
        identity.new_identity(tmp_path / "lonely.key")
    assert not (tmp_path / "lonely.key").exists() and (tmp_path / "node.key").read_bytes() == before
    with pytest.raises(ParameterError, match=r"must not end in \.pub"):
        identity.new_identity(tmp_path / "x.pub")


def test_a_private_key_readable_by_others_is_refused(tmp_path) -> None:
    identity.new_identity(tmp_path / "node.key")
    os.chmod(tmp_path / "node.key", 0o640)
    with pytest.raises(ParameterError, match="mode 0600"):
        identity.read_identity_key(tmp_path / "node.key")


@pytest.mark.parametrize("edit", [
    lambda t: t.upper(),                                 # upper-case hex (and prefix)
    lambda t: t.rstrip("\n"),                            # no newline
    lambda t: t + "\n",                                  # trailing line
    lambda t: t.replace("private", "public"),            # the other kind
    lambda t: t[:-3] + "\n",                             # short key
    lambda t: t.replace("-v1 ", "-v2 "),                 # unknown version
])
def test_a_non_canonical_key_file_is_refused_without_echoing_it(tmp_path, edit) -> None:
    identity.new_identity(tmp_path / "node.key")
    text = (tmp_path / "node.key").read_text()
    (tmp_path / "node.key").write_text(edit(text))
    with pytest.raises(ParameterError) as caught:
        identity.read_identity_key(tmp_path / "node.key")
    assert text.split()[1][:16] not in str(caught.value).lower()


def test_a_private_key_is_never_taken_for_a_public_one(tmp_path) -> None:
    identity.new_identity(tmp_path / "node.key")
    with pytest.raises(ParameterError, match="PRIVATE"):
        identity.read_public_key(tmp_path / "node.key")
    with pytest.raises(ParameterError, match="PRIVATE"):
        identity.write_registry([tmp_path / "node.pub", tmp_path / "node.key"], tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


# -- the registry ---------------------------------------------------------------------------------------------
def test_the_registry_file_is_the_audit_format_with_ids_in_argument_order(tmp_path) -> None:
    keys, publics, path = _enrol(tmp_path, 3)
    registry = Registry.read(path)
    assert read_registry(path) == registry.as_dict()  # `secagg audit transcript --registry` reads it
    assert [registry.client_of(identity.read_identity_key(k).public_bytes) for k in keys] == [0, 1, 2]
    swapped = Registry((registry.keys[1], registry.keys[0], registry.keys[2]))
    assert swapped.digest() != registry.digest() and len({registry.digest(), Registry.of(read_registry(path)).digest()}) == 1
    with pytest.raises(ParameterError, match="not in the registry"):
        registry.client_of(SigningKey.generate().public_bytes)


@pytest.mark.parametrize("table, match", [
    ({0: b"a" * 32}, "at least two"),
    ({0: b"a" * 32, 2: b"b" * 32}, "exactly 0..n-1"),
    ({1: b"a" * 32, 2: b"b" * 32}, "exactly 0..n-1"),
    ({0: b"a" * 32, 1: b"a" * 32}, "twice"),
    ({0: b"a" * 32, 1: b"b" * 31}, "32 bytes"),
])
def test_registry_rules(table, match) -> None:
    with pytest.raises(ParameterError, match=match):
        Registry.of(table)


def test_the_registry_is_bound_into_the_session(tmp_path) -> None:
    _, _, path = _enrol(tmp_path, 3)
    registry = Registry.read(path)
    other = Registry((registry.keys[0], registry.keys[1], SigningKey.generate().public_bytes))
    assert bind_registry(b"ctx", registry) != bind_registry(b"ctx", other)
    assert bind_registry(b"ctx", registry) != bind_registry(b"ctx2", registry)
    assert bind_registry(b"ctx", registry) == bind_registry(b"ctx", Registry.read(path))


# -- claims and the node's rules ------------------------------------------------------------------------------------
def _node(tmp_path: Path, index: int = 1, count: int = 4, **extra: object) -> NodeIdentity:
    keys, _, path = _enrol(tmp_path, count)
    node = NodeIdentity.from_node_config({identity.IDENTITY_KEY: str(keys[index]), identity.REGISTRY: str(path), **extra})
    assert node is not None
    return node


def test_a_claim_verifies_only_for_its_node_client_and_session(tmp_path) -> None:
    node = _node(tmp_path)
    claim = node.claim(b"s" * 32, 4242)
    assert claim == node.claim(b"s" * 32, 4242)  # Ed25519 is deterministic: replays give the same bytes
    node.registry.verify_claim(b"s" * 32, 4242, 1, claim)
    for context, node_id, client in ((b"t" * 32, 4242, 1), (b"s" * 32, 4243, 1), (b"s" * 32, 4242, 2), (b"s" * 32, 4242, 9)):
        with pytest.raises(IntegrityError):
            node.registry.verify_claim(context, node_id, client, claim)


def test_node_config_without_identity_is_none_and_half_a_config_is_refused(tmp_path) -> None:
    assert NodeIdentity.from_node_config({"partition-id": 0}) is None
    with pytest.raises(ParameterError, match="both"):
        NodeIdentity.from_node_config({identity.REGISTRY: "r.json"})
    with pytest.raises(ParameterError, match="fraction"):
        _node(tmp_path, **{identity.MIN_CORRUPT: 1.5})


def _config(n: int, threat: ThreatModel) -> SecAggConfig:
    return SecAggConfig.secagg(n, Schema.of(np.zeros(3, dtype=np.float32)), threat)


def test_admit_follows_the_node_rules(tmp_path) -> None:
    node = _node(tmp_path)
    identity.admit(node, _config(4, ThreatModel.malicious(0.1, 0.2)), 1)
    identity.admit(None, _config(4, ThreatModel.semi_honest()), 3)
    with pytest.raises(ParameterError, match="needs this node's identity"):
        identity.admit(None, _config(4, ThreatModel.malicious(0.1, 0.2)), 1)
    for config, client, match in (
        (_config(4, ThreatModel.semi_honest()), 1, "malicious-model rounds only"),
        (_config(4, ThreatModel.malicious(0.1, 0.2)), 0, "registry entry is 1"),
        (_config(5, ThreatModel.malicious(0.1, 0.2)), 1, "registry has 4"),
        (_config(4, ThreatModel.malicious(0.05, 0.2)), 1, "at least 0.1"),
    ):
        with pytest.raises(ProtocolAbort, match=match):
            identity.admit(node, config, client)


def test_a_node_identity_keeps_its_key_out_of_repr_and_pickles(tmp_path) -> None:
    node = _node(tmp_path)
    secret = (tmp_path / "node1.key").read_text().split()[1]
    assert secret not in repr(node) and secret[:16] not in repr(node.key)
    with pytest.raises(TypeError):
        pickle.dumps(node)
    with pytest.raises(TypeError):
        pickle.dumps(node.key)


# -- the command line --------------------------------------------------------------------------------------------------
def test_cli_new_registry_show(tmp_path, capsys) -> None:
    for i in range(3):
        assert main(["identity", "new", "--out", str(tmp_path / f"n{i}.key"), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["public_key"] == identity.read_public_key(tmp_path / f"n{i}.pub").hex()
        assert "private" not in json.dumps(out).lower()
    pubs = [str(tmp_path / f"n{i}.pub") for i in range(3)]
    assert main(["identity", "registry", *pubs, "--out", str(tmp_path / "r.json"), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["clients"] == 3 and made["digest"] == Registry.read(tmp_path / "r.json").digest().hex()
    assert main(["identity", "show", str(tmp_path / "r.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == made["digest"]


@pytest.mark.parametrize("args, match", [
    (["identity", "registry", "n0.pub", "--out", "r.json"], "cannot read the public key"),
    (["identity", "registry", "n0.key", "n1.pub", "--out", "r2.json"], "PRIVATE"),
    (["identity", "new", "--out", "n0.key"], "exists"),
    (["identity", "show", "missing.json"], "cannot read the registry"),
])
def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch, args, match) -> None:
    monkeypatch.chdir(tmp_path)
    identity.new_identity(tmp_path / "n0.key")
    identity.new_identity(tmp_path / "n1.key")
    if args[1] == "registry" and args[2] == "n0.pub":
        (tmp_path / "n0.pub").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and err.startswith("secagg: error:")
