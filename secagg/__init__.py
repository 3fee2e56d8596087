"""secagg: secure aggregation of LoRA / prompt tensors for federated LLM training.

Recipes (this module): configs, parties, drivers and errors. Primitives live in
:mod:`secagg.hazmat` and are easy to misuse.

Embedding recipe (any transport)::

    schema = secagg.Schema.of(example_state_dict)
    config = secagg.SecAggConfig.secagg_plus(num_clients=100, schema=schema,
                                             threat=secagg.ThreatModel.semi_honest(0.1, 0.2))
    server = secagg.SecAggServer(config, round_number=r, context=model_digest)
    client = secagg.SecAggClient(config, client_id, round_number=r, context=model_digest)
    client.set_input(lora_state_dict, weight=num_examples)
    # client -> server: client.advertise(); server.receive(bytes) for every arrival
    # server -> clients: server.advance() returns {client_id: bytes}; reply = client.handle(bytes)
    # repeat until server.stage is Stage.DONE, then server.result().average()
"""

from __future__ import annotations

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
from .protocols.secagg import AggregateResult, SecAggClient, SecAggServer, Stage
from .router import RoundTrace, run_round
from .simulation import DROPOUT_STAGES, AggregationOutcome, aggregate, simulate

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
    "RoundTrace",
    "Schema",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggServer",
    "SigningKey",
    "Stage",
    "ThreatModel",
    "aggregate",
    "find_harary_parameters",
    "run_round",
    "simulate",
]
