"""Threat models and validated protocol configurations.

Every relation the security argument needs is checked when a config is built, with a message that
names the failed relation and how to fix it (peft's ``LoraConfig`` style).
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from dataclasses import dataclass, field

from .encoding import FixedPoint, Schema
from .errors import ParameterError
from .graphparams import find_harary_parameters

__all__ = ["Adversary", "ThreatModel", "SecAggConfig", "PROTOCOL_IDS"]

PROTOCOL_IDS = {"secagg": 1, "secagg+": 2, "ckks": 3}


class Adversary(enum.Enum):
    """Who the protocol defends against."""

    SEMI_HONEST = "semi-honest"
    MALICIOUS = "malicious"


@dataclass(frozen=True)
class ThreatModel:
    """Assumed fractions of corrupt (colluding with the server) and dropping clients.

    Args:
        adversary: a semi-honest server follows the protocol; a malicious one may deviate.
        corrupt_fraction: gamma, clients that may collude with the server.
        dropout_fraction: delta, clients expected to drop at some stage.
    """

    adversary: Adversary = Adversary.SEMI_HONEST
    corrupt_fraction: float = 0.1
    dropout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.adversary, Adversary):
            raise ParameterError("adversary must be an Adversary")
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ParameterError(f"{name} must be in [0, 1), got {value!r}")

    @classmethod
    def semi_honest(cls, corrupt: float = 0.1, dropout: float = 0.2) -> ThreatModel:
        return cls(Adversary.SEMI_HONEST, corrupt, dropout)

    @classmethod
    def malicious(cls, corrupt: float = 0.1, dropout: float = 0.1) -> ThreatModel:
        return cls(Adversary.MALICIOUS, corrupt, dropout)

    @property
    def is_malicious(self) -> bool:
        return self.adversary is Adversary.MALICIOUS


def complete_graph_threshold(n: int, threat: ThreatModel) -> int:
    """Smallest safe t for the complete graph: t > gamma*n, or t > (n + gamma*n)/2 if malicious.

    Raises:
        ParameterError: t would exceed the expected survivors n - floor(delta*n).
    """
    corrupt = math.floor(threat.corrupt_fraction * n + 1e-9)
    t = (n + corrupt) // 2 + 1 if threat.is_malicious else corrupt + 1
    t = max(t, 2) if n >= 3 else n
    survivors = n - math.floor(threat.dropout_fraction * n + 1e-9)
    if t > survivors:
        raise ParameterError(
            f"threshold {t} (needed against {corrupt} corrupt clients) exceeds the {survivors} "
            f"expected survivors of n={n} with dropout {threat.dropout_fraction}: lower the rates"
        )
    return t


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg / SecAgg+ session, shared by the server and every client.

    Client ids are ``0 .. num_clients - 1``. ``degree`` is the number of neighbours k in the Harary
    graph (SecAgg+); ``None`` means the complete graph (SecAgg). Each client's secrets are shared
    t-out-of-(k + 1) among its neighbours and itself (t-out-of-n for the complete graph). Build with :meth:`secagg` or
    :meth:`secagg_plus` unless you choose k and t yourself.
    """

    num_clients: int
    threshold: int
    schema: Schema
    encoding: FixedPoint
    degree: int | None = None
    threat: ThreatModel = field(default_factory=ThreatModel)
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        n, t, k = self.num_clients, self.threshold, self.degree
        if not 2 <= n <= 2**31 - 2:
            raise ParameterError(f"num_clients must be in [2, 2^31 - 2], got {n}")
        if self.encoding.max_clients < n:
            raise ParameterError(
                f"encoding.max_clients={self.encoding.max_clients} < num_clients={n}: the sum could overflow"
            )
        holders = (n - 1 if k is None else min(k, n - 1)) + 1  # the neighbours and the client itself
        if k is not None and (k < 2 or k % 2):
            raise ParameterError(f"the Harary degree k must be even and >= 2, got {k}")
        if not 1 <= t <= holders:
            raise ParameterError(f"threshold t={t} must be in [1, {holders}] (each secret has {holders} share holders)")
        corrupt = math.floor(self.threat.corrupt_fraction * n + 1e-9)
        if k is None and not self.threat.is_malicious and t <= corrupt:
            raise ParameterError(f"t={t} must exceed the {corrupt} corrupt clients, or they recover masks")
        if k is None and self.threat.is_malicious and t <= (n + corrupt) / 2:
            raise ParameterError(
                f"against a malicious server t must exceed (n + corrupt)/2 = {(n + corrupt) / 2}, got {t}"
            )
        if self.chunk_size < 1024 or self.chunk_size % 64:
            raise ParameterError("chunk_size must be a multiple of 64 and at least 1024")

    @classmethod
    def secagg(
        cls, num_clients: int, schema: Schema, threat: ThreatModel | None = None, encoding: FixedPoint | None = None
    ) -> SecAggConfig:
        """SecAgg (Bonawitz et al.): complete graph, smallest threshold safe for ``threat``."""
        threat = threat or ThreatModel()
        t = complete_graph_threshold(num_clients, threat)
        return cls(num_clients, t, schema, encoding or FixedPoint(max_clients=num_clients), None, threat)

    @classmethod
    def secagg_plus(
        cls, num_clients: int, schema: Schema, threat: ThreatModel | None = None, encoding: FixedPoint | None = None
    ) -> SecAggConfig:
        """SecAgg+ (Bell et al.): Harary graph with (k, t) from fcp's parameter search.

        Falls back to the complete graph when no degree below n - 1 qualifies (small n).
        """
        threat = threat or ThreatModel()
        encoding = encoding or FixedPoint(max_clients=num_clients)
        try:
            graph = find_harary_parameters(
                num_clients, threat.corrupt_fraction, threat.dropout_fraction, threat.is_malicious
            )
        except ParameterError:
            return cls(num_clients, complete_graph_threshold(num_clients, threat), schema, encoding, None, threat)
        return cls(num_clients, graph.threshold, schema, encoding, graph.degree, threat)

    @property
    def protocol(self) -> str:
        return "secagg" if self.degree is None else "secagg+"

    @property
    def dim(self) -> int:
        """Words per masked input: the schema's values plus the weight coordinate."""
        return self.schema.size + 1

    @property
    def quorum(self) -> int:
        """Fewest clients that must sign the survivor set (and appear in the key list) per session.

        Semi-honest: t. Malicious: max(t, floor((n + corrupt)/2) + 1), an honest-majority quorum, so
        no two disjoint groups of honest clients can each complete a session (Bonawitz et al. need
        it for the consistency round; for the complete graph t already exceeds it).
        """
        if not self.threat.is_malicious:
            return self.threshold
        corrupt = math.floor(self.threat.corrupt_fraction * self.num_clients + 1e-9)
        return max(self.threshold, (self.num_clients + corrupt) // 2 + 1)

    def digest(self) -> bytes:
        """SHA-256 over every public parameter; bound into the session id."""
        enc = self.encoding
        fields = struct.pack(
            "<IIIdIIIQ",
            self.num_clients,
            self.threshold,
            self.degree or 0,
            enc.clip_bound,
            enc.fractional_bits,
            enc.max_weight,
            enc.max_clients,
            self.chunk_size,
        )
        threat = f"{self.threat.adversary.value}|{self.threat.corrupt_fraction!r}|{self.threat.dropout_fraction!r}"
        return hashlib.sha256(b"secagg/v1/config\x00" + fields + threat.encode() + self.schema.digest()).digest()
