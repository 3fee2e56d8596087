"""Identity keys bound to nodes: the PKI the malicious-server variant needs across Flower nodes.

The malicious variant (:meth:`secagg.ThreatModel.malicious`) signs every key advertisement and the
survivor set with a long-term Ed25519 key per client, checked against a *registry* (client id ->
public key) that every party holds. Flower 1.42 offers no key a ClientApp could use for that:
SuperNode authentication (``flower-supernode --auth-supernode-private-key``, ``flwr supernode
register``) proves a SuperNode's ECDSA key to the SuperLink only, the SuperLink keeps the key ->
node id table and assigns node ids itself, and the ClientApp process never sees the key. Against a
server that deviates, the SuperLink operator *is* the adversary, so neither node ids nor Flower's
node registration can identify a client. Hence this module's own PKI, distributed out of band:

- each node operator runs ``secagg identity new --out node.key`` (a private key file, mode 0600,
  and ``node.pub`` next to it) and hands the ``.pub`` file to whoever enrols the population;
- ``secagg identity registry node0.pub node1.pub ... --out registry.json`` assigns client ids
  0..n-1 in argument order; the JSON is the audit tools' registry format
  (``secagg audit transcript --registry``);
- every node gets the same ``registry.json`` and, in its *node config* (set by the node's own
  operator, out of the SuperLink's reach), ``secagg-identity-key`` and ``secagg-registry``.

A node's client id is the registry entry of its key. Each round opens with an ``identify`` step:
every node signs (round context, registry digest, its Flower node id, its client id) and the server
maps nodes to client ids by these signed claims; a node refuses any later message that addresses it
under another id. The registry's digest is bound into every session (:func:`bind_registry`), so a
party holding another registry fails the first signature check. Flower's node authentication stays
useful next to this (it keeps unknown SuperNodes off the SuperLink), but it is not what the
guarantees rest on.

Key files are text, one canonical encoding each: ``secagg-ed25519-private-key-v1 <64 hex>\\n`` and
``secagg-ed25519-public-key-v1 <64 hex>\\n`` (32-byte raw Ed25519, lower-case hex). Nothing here
logs, prints or puts in an error message a private key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..audit.transcript_check import read_registry
from ..errors import IntegrityError, ParameterError, ProtocolAbort
from ..hazmat.keys import PUBLIC_KEY_BYTES, SigningKey, verify_signature
from ..hazmat.random import RandomSource, system_random
from ..params import SecAggConfig

__all__ = [
    "IDENTITY_KEY", "REGISTRY", "MIN_CORRUPT", "DEFAULT_MIN_CORRUPT", "NodeIdentity", "Registry", "admit",
    "corrupt_floor",
    "bind_registry", "new_identity", "read_identity_key", "read_public_key", "write_registry", "register", "run",
]

IDENTITY_KEY = "secagg-identity-key"
"""Node config: path to this node's private identity key file."""
REGISTRY = "secagg-registry"
"""Node config (every ClientApp) and run config (the ServerApp): path to the registry JSON."""
MIN_CORRUPT = "secagg-min-corrupt-fraction"
"""Node config: the smallest corrupt fraction this node accepts from the run config."""
DEFAULT_MIN_CORRUPT = 0.1

_PRIVATE = "secagg-ed25519-private-key-v1 "
_PUBLIC = "secagg-ed25519-public-key-v1 "
_KEY_LINE = re.compile(r"([a-z0-9-]+ )([0-9a-f]{64})\n")
_MAX_KEY_FILE = 256
_LABEL_CLAIM = b"flower-node-claim"
_MAX_NODE_ID = 2**64 - 1


# -- key files ----------------------------------------------------------------------------------------
def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` (never overwrite) with ``mode`` and write ``text`` durably."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise ParameterError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ParameterError(f"cannot create {path}: {type(exc).__name__}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; it never widens a private file
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_key(data: bytes, prefix: str, what: str) -> bytes:
    match = _KEY_LINE.fullmatch(data.decode("ascii", errors="replace"))
    if match is None or match.group(1) != prefix:
        raise ParameterError(f"{what} is not in the canonical form {prefix.strip()!r} + 64 lower-case hex + newline")
    return bytes.fromhex(match.group(2))


def new_identity(out: str | Path, random: RandomSource = system_random) -> tuple[Path, bytes]:
    """Create a fresh Ed25519 identity: the private key file ``out`` (mode 0600) and ``<out stem>.pub``.

    Guarantees neither file existed before (nothing is overwritten) and the private key is 32 bytes
    of ``random`` (``os.urandom`` by default). It does not protect the file beyond its mode.
    Returns:
        The public key file's path and the raw 32-byte public key.
    Raises:
        ParameterError: ``out`` ends in ``.pub``, or either file exists or cannot be written.
    """
    key_path = Path(out)
    if key_path.suffix == ".pub":
        raise ParameterError("the private key file must not end in .pub (that name is for the public key)")
    public_path = key_path.with_suffix(".pub")
    for path in (key_path, public_path):
        if os.path.lexists(path):
            raise ParameterError(f"{path} exists; refusing to overwrite it")
    seed = random(32)
    public = SigningKey.from_private_bytes(seed).public_bytes
    _write_new(key_path, f"{_PRIVATE}{seed.hex()}\n", 0o600)
    _write_new(public_path, f"{_PUBLIC}{public.hex()}\n", 0o644)
    return public_path, public


def read_identity_key(path: str | Path) -> SigningKey:
    """Load a private identity key file written by :func:`new_identity`.

    Guarantees the file is a regular file owned by this user that neither group nor others can
    read or write (like OpenSSH's rule for private keys), in the canonical form.
    Raises:
        ParameterError: the file is missing, unreadable, too open or not a private key file (the
            message never contains the file's content).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ParameterError(f"cannot read the identity key {path}: {type(exc).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ParameterError(f"the identity key {path} must be a regular file owned by this user with mode "
                                 "0600 (chmod 600)")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    return SigningKey.from_private_bytes(_parse_key(data, _PRIVATE, f"the identity key {path}"))


def read_public_key(path: str | Path) -> bytes:
    """The raw 32-byte key of a public key file written by :func:`new_identity`.

    Raises:
        ParameterError: unreadable, not in the canonical form, or a *private* key file (refused
            explicitly, so a private key never ends up in a registry).
    """
    try:
        data = Path(path).read_bytes()[: _MAX_KEY_FILE + 1]
    except OSError as exc:
        raise ParameterError(f"cannot read the public key {path}: {type(exc).__name__}") from None
    if data.startswith(_PRIVATE.encode()):
        raise ParameterError(f"{path} holds a PRIVATE key: give the .pub file, and keep this one secret")
    return _parse_key(data, _PUBLIC, f"the public key {path}")


# -- the registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registry:
    """Client id -> Ed25519 public key for ids ``0..n-1``: the population of a malicious-model session.

    Guarantees at least two entries, consecutive ids from 0 and pairwise distinct keys (one key
    cannot hold two seats). It does not check that each key decodes to a curve point: an entry
    whose key does not simply never verifies, so that seat cannot take part.
    """

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.keys) < 2:
            raise ParameterError("a registry needs at least two clients")
        if any(not isinstance(k, bytes) or len(k) != PUBLIC_KEY_BYTES for k in self.keys):
            raise ParameterError(f"registry keys must be {PUBLIC_KEY_BYTES} bytes each")
        if len(set(self.keys)) != len(self.keys):
            raise ParameterError("the registry lists one public key twice")

    @classmethod
    def of(cls, mapping: Mapping[int, bytes]) -> Registry:
        """From ``{client id: public key}``.

        Raises:
            ParameterError: the ids are not exactly ``0..n-1``, or the keys break the rules above.
        """
        if sorted(mapping) != list(range(len(mapping))):
            raise ParameterError("registry client ids must be exactly 0..n-1")
        return cls(tuple(mapping[i] for i in range(len(mapping))))

    @classmethod
    def read(cls, path: str | Path) -> Registry:
        """Read a registry JSON (``{"client id": "public key hex"}``, the audit tools' format).

        Raises:
            ParameterError: unreadable, malformed, or breaking the rules above.
        """
        return cls.of(read_registry(path))

    def __len__(self) -> int:
        return len(self.keys)

    def as_dict(self) -> dict[int, bytes]:
        """``{client id: public key}``, as the parties take it (``registry=``)."""
        return dict(enumerate(self.keys))

    def to_json(self) -> dict[str, str]:
        return {str(i): key.hex() for i, key in enumerate(self.keys)}

    def digest(self) -> bytes:
        """SHA-256 over the ordered keys: two registries agree iff their digests do."""
        return hashlib.sha256(b"secagg/v1/registry\x00" + struct.pack("<I", len(self.keys)) + b"".join(self.keys)).digest()

    def client_of(self, public_key: bytes) -> int:
        """The client id the registry assigns ``public_key``.

        Raises:
            ParameterError: the key is not in the registry.
        """
        try:
            return self.keys.index(public_key)
        except ValueError:
            raise ParameterError("this node's identity key is not in the registry") from None

    def verify_claim(self, context: bytes, node_id: int, client_id: int, signature: bytes) -> None:
        """Check a node's signed claim to be ``client_id`` (see :meth:`NodeIdentity.claim`).

        Raises:
            IntegrityError: an id outside the registry, or a signature that does not verify.
        """
        if not 0 <= client_id < len(self.keys):
            raise IntegrityError("claim for a client outside the registry")
        verify_signature(self.keys[client_id], signature, _LABEL_CLAIM, _claim_bytes(context, node_id, client_id))


def write_registry(public_key_files: Sequence[str | Path], out: str | Path) -> Registry:
    """Enrol the keys of ``public_key_files`` as clients ``0..n-1`` (in order) and write ``out``.

    Raises:
        ParameterError: a file is not a public key file, a key repeats, fewer than two, or ``out``
            exists (nothing is overwritten).
    """
    registry = Registry(tuple(read_public_key(p) for p in public_key_files))
    _write_new(Path(out), json.dumps(registry.to_json(), indent=1) + "\n", 0o644)
    return registry


def bind_registry(context: bytes, registry: Registry) -> bytes:
    """The session context of a round under ``registry``: both sides derive it, so parties holding
    different registries get different sessions and refuse each other's signatures."""
    return hashlib.sha256(b"secagg/v1/registry-context\x00" + registry.digest() + context).digest()


def _claim_bytes(context: bytes, node_id: int, client_id: int) -> bytes:
    if not (0 <= node_id <= _MAX_NODE_ID and 0 <= client_id < 2**32):
        raise ParameterError("node id or client id out of range")
    return context + struct.pack("<QI", node_id, client_id)


# -- one node's identity -------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class NodeIdentity:
    """This node's identity key, the registry, and the client id the registry gives the key."""

    key: SigningKey
    registry: Registry
    client_id: int
    min_corrupt: float = DEFAULT_MIN_CORRUPT

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeIdentity | None:
        """Load the identity named by the node config, or None if the node has none.

        Raises:
            ParameterError: only one of ``secagg-identity-key`` / ``secagg-registry`` is set, a file
                is bad, the key is not in the registry, or ``secagg-min-corrupt-fraction`` is not a
                fraction.
        """
        key_path, registry_path = node_config.get(IDENTITY_KEY) or "", node_config.get(REGISTRY) or ""
        if not key_path and not registry_path:
            return None
        if not (key_path and registry_path):
            raise ParameterError(f"set both node config keys {IDENTITY_KEY!r} and {REGISTRY!r}, or neither")
        floor = corrupt_floor(node_config)
        key = read_identity_key(str(key_path))
        registry = Registry.read(str(registry_path))
        return cls(key, registry, registry.client_of(key.public_bytes), floor)

    def claim(self, context: bytes, node_id: int) -> bytes:
        """Sign that Flower node ``node_id`` holds this client's key in the session ``context``.

        Ed25519 is deterministic: the same claim is the same bytes every time.
        """
        return self.key.sign(_LABEL_CLAIM, _claim_bytes(context, node_id, self.client_id))

    def __getstate__(self) -> None:
        raise TypeError("a node identity holds a private key and cannot be pickled")

    def __repr__(self) -> str:
        return f"NodeIdentity(client_id={self.client_id}, registry={self.registry.digest().hex()[:16]}...)"


def corrupt_floor(node_config: Mapping[str, Any]) -> float:
    """The least corrupt fraction this node lets a run assume (node config ``secagg-min-corrupt-fraction``,
    default 0.1): the thresholds come from the run config, which the server side writes.

    Raises:
        ParameterError: the value is not a fraction in [0, 1).
    """
    floor = node_config.get(MIN_CORRUPT, DEFAULT_MIN_CORRUPT)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise ParameterError(f"node config {MIN_CORRUPT!r} must be a fraction in [0, 1)")
    return float(floor)


def admit(node: NodeIdentity | None, config: SecAggConfig, client_id: int,
          node_config: Mapping[str, Any] | None = None) -> None:
    """The node's rules for taking part in a round as ``client_id`` under ``config`` (``node_config``: the
    node's own, for its corrupt-fraction floor when it has no identity).

    A node without an identity joins semi-honest rounds only. A node with one joins malicious-model
    rounds only (a semi-honest run config would be a downgrade by whoever wrote it), over exactly its
    registry's population, as its own registry entry, with a corrupt fraction at least its floor
    (the thresholds come from the run config, which the server side writes).
    Raises:
        ParameterError: a malicious-model round on a node without an identity.
        ProtocolAbort: any other rule is broken.
    """
    if node is None:
        if config.threat.is_malicious:
            raise ParameterError(f"a malicious-model round needs this node's identity: set the node config keys "
                                 f"{IDENTITY_KEY!r} and {REGISTRY!r}")
        floor = corrupt_floor(node_config or {})
        if config.threat.corrupt_fraction < floor:  # a semi-honest node checks the thresholds' premise too
            raise ProtocolAbort(f"the run assumes a corrupt fraction below this node's floor {floor} ({MIN_CORRUPT})")
        return
    if not config.threat.is_malicious:
        raise ProtocolAbort("this node holds an identity key and joins malicious-model rounds only")
    if config.num_clients != len(node.registry):
        raise ProtocolAbort(f"a session of {config.num_clients} clients; this node's registry has {len(node.registry)}")
    if client_id != node.client_id:
        raise ProtocolAbort(f"asked to act as client {client_id}; this node's registry entry is {node.client_id}")
    if config.threat.corrupt_fraction < node.min_corrupt:
        raise ProtocolAbort(f"the run assumes a corrupt fraction of {config.threat.corrupt_fraction}; this node "
                            f"requires at least {node.min_corrupt} ({MIN_CORRUPT})")


# -- command line: ``secagg identity new|registry|show`` ----------------------------------------------------
def register(subparsers: Any) -> None:
    """Add ``secagg identity`` to a CLI built of :class:`secagg.cli.OneLineParser`."""
    identity = subparsers.add_parser("identity", help="identity keys and the registry for malicious-model rounds")
    sub = identity.add_subparsers(dest="identity_command", required=True)
    n = sub.add_parser("new", help="create an Ed25519 identity key (mode 0600) and its .pub file")
    n.add_argument("--out", type=Path, required=True, help="the private key file; the public one is <stem>.pub")
    n.add_argument("--json", action="store_true")
    r = sub.add_parser("registry", help="enrol public keys as clients 0..n-1, in argument order")
    r.add_argument("public_keys", type=Path, nargs="+", help=".pub files written by `secagg identity new`")
    r.add_argument("--out", type=Path, required=True, help="the registry JSON to write (never overwritten)")
    r.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="the digest of a registry, or the key of a .pub file (compare out of band)")
    s.add_argument("file", type=Path)
    s.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute a parsed ``identity`` command; every failure is a :class:`~secagg.SecAggError`."""
    if args.identity_command == "new":
        public_path, public = new_identity(args.out)
        return {"key": str(args.out), "public_key_file": str(public_path), "public_key": public.hex()}
    if args.identity_command == "registry":
        registry = write_registry(args.public_keys, args.out)
        return {"registry": str(args.out), "clients": len(registry), "digest": registry.digest().hex()}
    if args.file.suffix == ".pub":
        return {"file": str(args.file), "public_key": read_public_key(args.file).hex()}
    registry = Registry.read(args.file)
    return {"file": str(args.file), "clients": len(registry), "digest": registry.digest().hex()}
