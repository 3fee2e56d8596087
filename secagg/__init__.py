"""secagg: secure aggregation of LoRA / prompt tensors for federated LLM training.

Recipes (this module): configs, parties, the protocol registry, the one-call drivers and errors,
for SecAgg, SecAgg+ and CKKS alike. Primitives live in :mod:`secagg.hazmat` and are easy to misuse.

Embedding recipe (any transport; the same loop for every protocol)::

    config = secagg.SecAggConfig.secagg_plus(100, secagg.Schema.of(example_state_dict),
                                             secagg.ThreatModel.semi_honest(0.1, 0.2))
    server = secagg.new_server(config, round_number=r, context=model_digest)
    client = secagg.new_client(config, client_id, round_number=r, context=model_digest)
    client.set_input(lora_state_dict, weight=num_examples)
    # client -> server: client.advertise(); server.receive(bytes) for every arrival
    # server -> clients: server.advance() returns {client_id: bytes}; reply = client.handle(bytes)
    # (None: nothing to send); repeat until server.done, then server.result().average()
"""

from __future__ import annotations

from . import defaults
from .encoding import FixedPoint, Schema
from .errors import (
    InsufficientParties,
    IntegrityError,
    MalformedMessage,
    ParameterError,
    ProtocolAbort,
    SecAggError,
)
from .graphparams import GraphParameters, find_harary_parameters
from .hazmat.keys import SigningKey
from .params import Adversary, SecAggConfig, ThreatModel
from .protocols.ckks import PRESETS, CkksClient, CkksConfig, CkksPreset, CkksResult, CkksServer
from .protocols.registry import DROPOUT_STAGES, PROTOCOLS, Protocol, new_client, new_server, protocol_of
from .protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
from .results import AggregationOutcome, Trace
from .router import run_round
from .simulation import aggregate, simulate

__version__ = "0.1.0"

__all__ = [
    "Adversary",
    "AggregateResult",
    "AggregationOutcome",
    "CkksClient",
    "CkksConfig",
    "CkksPreset",
    "CkksResult",
    "CkksServer",
    "DROPOUT_STAGES",
    "FixedPoint",
    "GraphParameters",
    "InsufficientParties",
    "IntegrityError",
    "MalformedMessage",
    "PRESETS",
    "ParameterError",
    "ProtocolAbort",
    "PROTOCOLS",
    "Protocol",
    "Trace",
    "Schema",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggServer",
    "SigningKey",
    "Stage",
    "ThreatModel",
    "aggregate",
    "defaults",
    "new_client",
    "new_server",
    "protocol_of",
    "find_harary_parameters",
    "run_round",
    "simulate",
]
