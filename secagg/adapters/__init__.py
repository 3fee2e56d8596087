"""Adapters that carry secagg's bytes over other federated-learning stacks.

- :mod:`secagg.adapters.flower`: a Flower ServerApp / ClientApp pair (the only module importing flwr).
- :mod:`secagg.adapters.nodestate`: the node-local write-ahead store that lets a client whose
  process is restarted for every message (Flower's ClientApp model) resume a round without forking.
- :mod:`secagg.adapters.identity`: node identity keys and the registry that the malicious-server
  variant needs across nodes (``secagg identity new|registry|show``); no flwr import.
- :mod:`secagg.adapters.flower_launcher`: starts a local Flower deployment (SuperLink, SuperNodes)
  on loopback, runs an app on it and shuts everything down.

Nothing here is imported by ``import secagg``; each adapter is opt-in.
"""
