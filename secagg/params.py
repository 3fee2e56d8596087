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

from .bounds import ThresholdBounds
from .dp.encoding import DpEncoding
from .encoding import FixedPoint, Schema
from .errors import ParameterError
from .graphparams import GRINDING_BITS, corrupt_count, corrupt_neighbour_bound, find_harary_parameters

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

    def corrupt_bound(self, num_clients: int) -> int:
        """c = floor(gamma * n): the number of corrupt clients every guarantee assumes."""
        return corrupt_count(num_clients, self.corrupt_fraction)


def complete_graph_threshold(n: int, threat: ThreatModel) -> int:
    """Smallest safe t for the complete graph.

    Semi-honest: t = c + 1. Malicious: t = q = ceil((n + c + 2)/2), the smallest value with
    2q > n + c and t + q > n + c + 1 (SECURITY.md), so the server learns no sum of fewer than two
    honest inputs.

    Raises:
        ParameterError: t would exceed the expected survivors n - floor(delta*n).
    """
    corrupt = threat.corrupt_bound(n)
    t = -(-(n + corrupt + 2) // 2) if threat.is_malicious else corrupt + 1
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
    encoding: FixedPoint | DpEncoding
    """Fixed point (per-coordinate clip), or distributed DP (:class:`secagg.dp.DpEncoding`)."""
    degree: int | None = None
    threat: ThreatModel = field(kw_only=True)
    """Required: who the thresholds defend against (there is no default threat model)."""
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        n, t, k = self.num_clients, self.threshold, self.degree
        if not 2 <= n <= 2**31 - 2:
            raise ParameterError(f"num_clients must be in [2, 2^31 - 2], got {n}")
        if self.encoding.max_clients < n:
            raise ParameterError(
                f"encoding.max_clients={self.encoding.max_clients} < num_clients={n}: the sum could overflow"
            )
        if isinstance(self.encoding, DpEncoding):
            if self.encoding.dim != self.schema.size:
                raise ParameterError(f"the DP encoding is for {self.encoding.dim} values; the schema has {self.schema.size}")
            if self.encoding.min_survivors > n:
                raise ParameterError(f"DP min_survivors={self.encoding.min_survivors} exceeds num_clients={n}")
        holders = self.holders
        if k is not None and (k < 2 or k % 2):
            raise ParameterError(f"the Harary degree k must be even and >= 2, got {k}")
        if not 1 <= t <= holders:
            raise ParameterError(f"threshold t={t} must be in [1, {holders}] (each secret has {holders} share holders)")
        broken = self.bounds().violations()
        if broken:
            raise ParameterError(
                f"{self.threat.adversary.value} {self.protocol} with n={n}, k={k}, t={t} breaks "
                + "; ".join(broken) + " (SECURITY.md, 'Thresholds')"
            )
        if self.chunk_size < 1024 or self.chunk_size % 64:
            raise ParameterError("chunk_size must be a multiple of 64 and at least 1024")

    @classmethod
    def secagg(
        cls, num_clients: int, schema: Schema, threat: ThreatModel, encoding: FixedPoint | DpEncoding | None = None
    ) -> SecAggConfig:
        """SecAgg (Bonawitz et al.): complete graph, smallest threshold safe for ``threat``."""
        t = complete_graph_threshold(num_clients, threat)
        return cls(num_clients, t, schema, encoding or FixedPoint(max_clients=num_clients), None, threat=threat)

    @classmethod
    def secagg_plus(
        cls, num_clients: int, schema: Schema, threat: ThreatModel, encoding: FixedPoint | DpEncoding | None = None
    ) -> SecAggConfig:
        """SecAgg+ (Bell et al.): Harary graph with (k, t) from fcp's parameter search.

        Falls back to the complete graph when no degree below n - 1 qualifies (small n).
        """
        encoding = encoding or FixedPoint(max_clients=num_clients)
        try:
            graph = find_harary_parameters(
                num_clients, threat.corrupt_fraction, threat.dropout_fraction, threat.is_malicious
            )
        except ParameterError:
            t = complete_graph_threshold(num_clients, threat)
            return cls(num_clients, t, schema, encoding, None, threat=threat)
        return cls(num_clients, graph.threshold, schema, encoding, graph.degree, threat=threat)

    @classmethod
    def for_protocol(
        cls, protocol: str, num_clients: int, schema: Schema, threat: ThreatModel,
        encoding: FixedPoint | DpEncoding | None = None,
    ) -> SecAggConfig:
        """:meth:`secagg` or :meth:`secagg_plus` by name.

        Raises:
            ParameterError: ``protocol`` is neither ``"secagg"`` nor ``"secagg+"``.
        """
        if protocol == "secagg":
            return cls.secagg(num_clients, schema, threat, encoding)
        if protocol == "secagg+":
            return cls.secagg_plus(num_clients, schema, threat, encoding)
        raise ParameterError(f"unknown masking protocol {protocol!r}; use 'secagg' or 'secagg+'")

    @property
    def protocol(self) -> str:
        return "secagg" if self.degree is None else "secagg+"

    @property
    def dim(self) -> int:
        """Words per masked input: the schema's values plus the weight coordinate."""
        if isinstance(self.encoding, DpEncoding):
            return self.encoding.words
        return self.schema.size + 1

    @property
    def dp(self) -> DpEncoding | None:
        """The distributed-DP encoding, if this session adds noise."""
        return self.encoding if isinstance(self.encoding, DpEncoding) else None

    @property
    def corrupt_bound(self) -> int:
        """c: the number of corrupt clients the guarantees assume (floor(gamma * n))."""
        return self.threat.corrupt_bound(self.num_clients)

    @property
    def holders(self) -> int:
        """h: share holders of each client's secrets (its neighbours and itself)."""
        n, k = self.num_clients, self.degree
        return n if k is None else min(k, n - 1) + 1

    @property
    def quorum(self) -> int:
        """Fewest clients that must sign the survivor set (and appear in the key list) per session.

        Semi-honest: t. Malicious: max(t, floor((n + c)/2) + 1), so 2q > n + c and no two disjoint
        groups of honest clients can each complete a session.
        """
        if not self.threat.is_malicious:
            return self.threshold
        return max(self.threshold, (self.num_clients + self.corrupt_bound) // 2 + 1)

    @property
    def corrupt_holders(self) -> int:
        """c_nb: the most corrupt share holders an honest client has (except w.p. 2^-sigma for SecAgg+)."""
        c = self.corrupt_bound
        if self.holders == self.num_clients:
            return c
        return corrupt_neighbour_bound(self.num_clients, self.holders - 1, self.threat.corrupt_fraction,
                                       self.threat.is_malicious)

    def honest_noise_count(self, survivors: int) -> int:
        """The honest noise shares the DP accountant may count in a sum of ``survivors`` inputs.

        Corrupt clients may leave their noise out, so c is subtracted; against a deviating server
        (malicious variant) it may learn sums of as few as l = ``min_honest_inputs`` honest inputs
        whatever the survivor set says, so the count is at most l (SECURITY.md, "Which n").
        """
        count = survivors - self.corrupt_bound
        if self.threat.is_malicious:
            count = min(count, self.bounds().min_honest_inputs())
        return max(1, count)

    def bounds(self) -> ThresholdBounds:
        """The parameters as the security argument (:mod:`secagg.bounds`) sees them."""
        return ThresholdBounds(self.num_clients, self.holders, self.threshold, self.corrupt_bound,
                               self.corrupt_holders, self.quorum, self.threat.is_malicious)

    def security_summary(self) -> dict[str, int]:
        """What the guarantees assume and promise (SECURITY.md, 'Thresholds'); JSON-ready.

        ``min_honest_inputs`` is the fewest honest inputs in any sum the server can learn (for
        SecAgg+ except with probability 2^-40, after ``grinding_bits`` of graph re-draws).
        """
        return {
            "quorum": self.quorum,
            "corrupt_bound": self.corrupt_bound,
            "corrupt_neighbours": self.corrupt_holders,
            "min_honest_inputs": self.bounds().min_honest_inputs(),
            "grinding_bits": GRINDING_BITS if self.holders < self.num_clients and self.threat.is_malicious else 0,
        }

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
        dp = b""
        if isinstance(self.encoding, DpEncoding):
            dp = b"dp\x00" + self.encoding.spec.digest() + struct.pack("<I", self.encoding.min_survivors)
        return hashlib.sha256(b"secagg/v1/config\x00" + fields + threat.encode() + self.schema.digest() + dp).digest()
