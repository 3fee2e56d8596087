"""Server optimisers: how the securely aggregated mean delta moves the global model.

They need only the aggregate, so they compose with every backend (the server never sees a client's
delta). The update rules are those of Reddi et al., "Adaptive Federated Optimization", ICLR'21,
Algorithm 2, with the pseudo-gradient Delta_t = the weighted mean of the clients' deltas:

- ``fedavg``:  x_{t+1} = x_t + eta * Delta_t                       (eta = 1 is plain FedAvg)
- ``fedavgm``: m_t = beta1 * m_{t-1} + Delta_t; x_{t+1} = x_t + eta * m_t   (Hsu et al., 2019)
- ``fedadam``: m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t;
               v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2;
               x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)
- ``fedyogi``: as fedadam, but v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)

with m_{-1} = 0 and v_{-1} = tau^2, as in the paper. Moments are kept in float64 per tensor.
"""

from __future__ import annotations

import torch

from fedlm.config import SERVER_OPTIMIZERS, RunConfig
from fedlm.model import StateDict

__all__ = ["ServerOptimizer", "server_optimizer"]


class ServerOptimizer:
    """Applies one round's mean delta to the global state; keeps the moments between rounds.

    Args:
        name: one of :data:`SERVER_OPTIMIZERS`.
        lr: eta. beta1, beta2, tau: the moment decay rates and the adaptivity floor.
    """

    def __init__(self, name: str, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        if name not in SERVER_OPTIMIZERS:
            raise ValueError(f"server optimiser {name!r}: choose one of {SERVER_OPTIMIZERS}")
        self.name, self.lr, self.beta1, self.beta2, self.tau = name, lr, beta1, beta2, tau
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The moments, as flat named tensors (``m/<name>``, ``v/<name>``)."""
        return {f"m/{k}": v for k, v in self._m.items()} | {f"v/{k}": v for k, v in self._v.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores moments written by :meth:`state_dict`."""
        self._m = {k[2:]: v.to(torch.float64) for k, v in state.items() if k.startswith("m/")}
        self._v = {k[2:]: v.to(torch.float64) for k, v in state.items() if k.startswith("v/")}

    def step(self, state: StateDict, delta: StateDict) -> StateDict:
        """x_{t+1} for every tensor of ``state`` given Delta_t = ``delta`` (same names and shapes)."""
        return {name: self._step_one(name, state[name], delta[name]) for name in state}

    def _step_one(self, name: str, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        g = d.to(torch.float64)
        if self.name == "fedavg":
            update = g
        elif self.name == "fedavgm":
            m = self._m.get(name, torch.zeros_like(g))
            update = self._m[name] = self.beta1 * m + g
        else:
            m = self._m.get(name, torch.zeros_like(g))
            v = self._v.get(name, torch.full_like(g, self.tau**2))
            m = self._m[name] = self.beta1 * m + (1 - self.beta1) * g
            square = g * g
            if self.name == "fedadam":
                v = self.beta2 * v + (1 - self.beta2) * square
            else:
                v = v - (1 - self.beta2) * square * torch.sign(v - square)
            self._v[name] = v
            update = m / (v.sqrt() + self.tau)
        return (x.to(torch.float64) + self.lr * update).to(x.dtype)


def server_optimizer(cfg: RunConfig) -> ServerOptimizer:
    """The optimiser the run configuration names, with its resolved learning rate."""
    return ServerOptimizer(cfg.server_opt, cfg.resolved_server_lr, cfg.server_beta1, cfg.server_beta2,
                           cfg.server_tau)
