"""Adapters that carry secagg's bytes over other federated-learning stacks.

- :mod:`secagg.adapters.flower`: a Flower ServerApp / ClientApp pair and the secure round over Flower
  messages, for every registered protocol.
- :mod:`secagg.adapters.flower_strategy`: ``SecAggStrategy(FedAvg(...))`` and ``make_secagg_mod(...)``: any
  Flower Message-API strategy aggregating secure sums (node side in :mod:`secagg.adapters.flower_node`,
  its private files in :mod:`secagg.adapters.updatestore`). These three are the only modules of secagg
  importing flwr.
- :mod:`secagg.adapters.roundstore`: the node-local write-ahead record that lets a client whose
  process is restarted for every message (Flower's ClientApp model) resume a round without forking;
  :mod:`secagg.adapters.nodestate` replays a SecAgg client from it, :mod:`secagg.adapters.ckksstate`
  keeps a CKKS client's exported state in it.
- :mod:`secagg.adapters.identity`: node identity keys and the registry that the malicious-server
  variant needs across nodes (``secagg identity new|registry|show``); no flwr import.
- :mod:`secagg.adapters.flower_launcher`: starts a local Flower deployment (SuperLink, SuperNodes)
  on loopback, runs an app on it and shuts everything down.

Nothing here is imported by ``import secagg``; each adapter is opt-in.
"""
