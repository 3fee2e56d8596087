"""Adapters that carry secagg's bytes over other federated-learning stacks.

- :mod:`secagg.adapters.flower`: a Flower ServerApp / ClientApp pair and the secure round over Flower
  messages.
- :mod:`secagg.adapters.flower_strategy`: ``SecAggStrategy(FedAvg(...))`` and ``secagg_mod``: any Flower
  Message-API strategy aggregating secure sums (node side in :mod:`secagg.adapters.flower_node`).
  These three are the only modules importing flwr.
- :mod:`secagg.adapters.nodestate`: the node-local write-ahead store that lets a client whose
  process is restarted for every message (Flower's ClientApp model) resume a round without forking.
- :mod:`secagg.adapters.flower_launcher`: starts a local Flower deployment (SuperLink, SuperNodes)
  on loopback, runs an app on it and shuts everything down.

Nothing here is imported by ``import secagg``; each adapter is opt-in.
"""
