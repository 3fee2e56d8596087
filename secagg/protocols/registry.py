"""The protocol registry: one descriptor per protocol, and the only place that lists them.

A :class:`Protocol` names a protocol's config, party and result types, the stages at which a client
can drop (in protocol order, each with the server stage whose client message it never sends) and
the fields it adds to the common ``simulate`` report. Drivers (the router, the simulator, the CLI,
the adapters) look protocols up here; adding one (threshold CKKS is next) means one descriptor and
its parties, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ParameterError
from ..params import SecAggConfig
from .ckks import CkksClient, CkksConfig, CkksResult, CkksServer
from .secagg import AggregateResult, SecAggClient, SecAggServer

__all__ = ["DropoutStage", "Protocol", "PROTOCOLS", "DROPOUT_STAGES", "protocol_of", "new_server", "new_client"]


@dataclass(frozen=True)
class DropoutStage:
    """A point at which a client can vanish: it never sends the message due in ``server_stage``
    (nor anything later)."""

    name: str
    server_stage: str


@dataclass(frozen=True)
class Protocol:
    """What a driver needs to know about one protocol."""

    name: str
    config_type: type
    client_type: type[Any]
    """A :class:`~secagg.protocols.base.ClientParty`: ``(config, client_id, **options)``."""
    server_type: type[Any]
    """A :class:`~secagg.protocols.base.ServerParty`: ``(config, **options)``."""
    result_type: type
    dropout_stages: Callable[[Any], tuple[DropoutStage, ...]]
    """config (or None: the protocol's semi-honest config) -> the dropout stages, in protocol order."""
    report_fields: tuple[str, ...] = ()
    """Fields this protocol adds to the common ``secagg simulate`` report."""
    message_stages: tuple[str, ...] = ()
    """Every server stage, in any variant of the protocol, whose message a client answers, in protocol
    order: the step names a transport may carry (:meth:`server_stages` gives one config's)."""

    def stage_names(self, config: Any) -> tuple[str, ...]:
        """The dropout stage names of ``config`` (``None``: of the protocol's semi-honest config)."""
        return tuple(s.name for s in self.dropout_stages(config))

    def server_stages(self, config: Any) -> tuple[str, ...]:
        """The server stages of ``config`` (``None``: of the semi-honest config) at which a client sends,
        in protocol order, each once: the values ``server.stage.value`` takes while the round runs."""
        return tuple(dict.fromkeys(s.server_stage for s in self.dropout_stages(config)))

    def check_dropouts(self, config: Any, dropouts: dict[int, str]) -> None:
        """Refuse a dropout schedule that names a stage this protocol (and config) does not have.

        Raises:
            ParameterError: naming the stage and the valid ones.
        """
        valid = self.stage_names(config)
        for client, stage in dropouts.items():
            if stage not in valid:
                raise ParameterError(f"client {client}: unknown {self.name} dropout stage {stage!r}; "
                                     f"use one of {list(valid)}")


_MASKING_STAGES = ("advertise", "share", "mask", "consistency", "unmask")


def _masking_stages(config: SecAggConfig | None) -> tuple[DropoutStage, ...]:
    """SecAgg / SecAgg+ (``None``: a semi-honest config); the malicious variant adds consistency."""
    malicious = config is not None and config.threat.is_malicious
    return tuple(DropoutStage(n, n) for n in _MASKING_STAGES if malicious or n != "consistency")


def _ckks_stages(config: CkksConfig | None) -> tuple[DropoutStage, ...]:
    return (
        DropoutStage("advertise", "advertise"),
        DropoutStage("generate", "generate"),     # the designated generator never delivers the key
        DropoutStage("before-upload", "upload"),  # the client never uploads
        DropoutStage("after-upload", "decrypt"),  # it uploads, then vanishes (a key holder cannot decrypt)
    )


_MASKING_FIELDS = ("threshold", "degree", "quorum", "modulus_bits", "word_bytes", "ring_bits")

PROTOCOLS: dict[str, Protocol] = {
    name: Protocol(name, SecAggConfig, SecAggClient, SecAggServer, AggregateResult, _masking_stages, _MASKING_FIELDS,
                   _MASKING_STAGES)
    for name in ("secagg", "secagg+")
}
PROTOCOLS["ckks"] = Protocol(
    "ckks", CkksConfig, CkksClient, CkksServer, CkksResult, _ckks_stages,
    ("preset", "committee", "ciphertext_bytes_per_client", "decrypted_by"),
    ("advertise", "generate", "upload", "decrypt"),
)

DROPOUT_STAGES: dict[str, tuple[str, ...]] = {name: p.stage_names(None) for name, p in PROTOCOLS.items()}
"""Protocol name -> its dropout stages (SecAgg's malicious variant adds ``consistency``)."""


def protocol_of(config: Any) -> Protocol:
    """The descriptor of the protocol ``config`` configures.

    Raises:
        ParameterError: ``config`` is not a registered protocol's config.
    """
    protocol = PROTOCOLS.get(getattr(config, "protocol", ""))
    if protocol is None or not isinstance(config, protocol.config_type):
        raise ParameterError(f"{type(config).__name__} is not the config of a registered protocol "
                             f"({', '.join(PROTOCOLS)})")
    return protocol


def new_server(config: Any, **options: Any) -> Any:
    """The server party of ``config``'s protocol (``options``: as for that server class)."""
    return protocol_of(config).server_type(config, **options)


def new_client(config: Any, client_id: int, **options: Any) -> Any:
    """A client party of ``config``'s protocol (``options``: as for that client class)."""
    return protocol_of(config).client_type(config, client_id, **options)
