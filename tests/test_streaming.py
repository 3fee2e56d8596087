from __future__ import annotations

import tracemalloc

import numpy as np

from secagg import ThreatModel

from .helpers import make_parties, small_config


def test_server_memory_is_o_of_d_not_n_times_d() -> None:
    """Masked inputs are folded into one accumulator as they arrive."""
    n, dim = 12, 200_000
    config = small_config(n, dim, threshold=3, threat=ThreatModel.semi_honest(0.0, 0.0))
    server, clients = make_parties(config)
    words = config.encoding.encode(np.zeros(dim))
    for c in clients.values():
        c.set_encoded_input(words)
        server.receive(c.advertise())
    outbox = server.advance()
    for c, d in outbox.items():
        server.receive(clients[c].handle(d))
    outbox = server.advance()
    masked = [clients[c].handle(d) for c, d in outbox.items()]
    vector_bytes = config.dim * config.encoding.dtype.itemsize
    tracemalloc.start()
    for data in masked:
        server.receive(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.5 * vector_bytes, f"server allocated {peak} bytes while summing {n} vectors of {vector_bytes}"
