"""Server optimisers against the published update rules (Reddi et al., ICLR'21, Algorithm 2), and
FedProx's proximal term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedlm.cli import main
from fedlm.client import local_train
from fedlm.loop import run
from fedlm.server_opt import ServerOptimizer
from tests.fedlm.helpers import tiny_config

B1, B2, TAU, ETA = 0.9, 0.99, 1e-3, 0.1
X0, D1, D2 = 1.0, 0.5, -0.2


def _two_steps(name: str) -> tuple[float, float]:
    opt = ServerOptimizer(name, ETA, B1, B2, TAU)
    x1 = opt.step({"w": torch.tensor([X0], dtype=torch.float64)}, {"w": torch.tensor([D1], dtype=torch.float64)})
    x2 = opt.step(x1, {"w": torch.tensor([D2], dtype=torch.float64)})
    return float(x1["w"]), float(x2["w"])


def test_fedavg_and_fedavgm_follow_their_rules() -> None:
    assert _two_steps("fedavg") == pytest.approx((X0 + ETA * D1, X0 + ETA * D1 + ETA * D2), abs=1e-15)
    m1 = D1
    m2 = B1 * m1 + D2
    assert _two_steps("fedavgm") == pytest.approx((X0 + ETA * m1, X0 + ETA * m1 + ETA * m2), abs=1e-15)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimisers_follow_algorithm_2(name: str) -> None:
    """Two steps by hand: m_{-1} = 0, v_{-1} = tau^2, x += eta m / (sqrt(v) + tau)."""
    m, v, x, expected = 0.0, TAU**2, X0, []
    for d in (D1, D2):
        m = B1 * m + (1 - B1) * d
        if name == "fedadam":
            v = B2 * v + (1 - B2) * d * d
        else:
            v = v - (1 - B2) * d * d * math.copysign(1.0, v - d * d)
        x = x + ETA * m / (math.sqrt(v) + TAU)
        expected.append(x)
    assert _two_steps(name) == pytest.approx(tuple(expected), rel=1e-12)
    assert _two_steps("fedadam") != pytest.approx(_two_steps("fedyogi"), rel=1e-6)  # the v rules differ


def test_state_dtype_is_kept_and_unknown_optimiser_refused() -> None:
    opt = ServerOptimizer("fedadam", 0.01)
    out = opt.step({"w": torch.ones(3, dtype=torch.bfloat16)}, {"w": torch.full((3,), 0.1)})
    assert out["w"].dtype == torch.bfloat16 and bool((out["w"] > 1).all())
    with pytest.raises(ValueError, match="choose one of"):
        ServerOptimizer("sgd", 1.0)


def test_fedprox_term_pulls_the_local_model_towards_the_global_one() -> None:
    def moved(mu: float) -> float:
        model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
        torch.manual_seed(1)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.1)
        start = [p.detach().clone() for p in model.parameters()]
        blocks = torch.randint(0, 50, (16, 9), generator=torch.Generator().manual_seed(2))
        local_train(_LM(model), blocks, steps=20, batch_size=4, lr=0.05,
                    generator=torch.Generator().manual_seed(3), prox_mu=mu)
        return math.sqrt(sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start)))

    free, proximal = moved(0.0), moved(50.0)
    assert proximal < 0.5 * free


class _LM(torch.nn.Module):
    """A two-layer stand-in with a causal-LM call signature (what ``batch_loss`` uses)."""

    def __init__(self, inner: torch.nn.Sequential) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: object = None) -> object:
        logits = self.inner(input_ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1))
        return type("Out", (), {"loss": loss})()


def test_a_run_with_fedadam_and_fedprox_completes_and_learns(tmp_path: Path) -> None:
    report = run(tiny_config(tmp_path, backend="secagg", server_opt="fedadam", prox_mu=0.01, rounds=3))
    assert report["config"]["server_opt"] == "fedadam" and report["config"]["prox_mu"] == 0.01
    assert report["final_eval_loss"] < report["initial_eval_loss"]
    assert report["secure_equals_plain"] is True


def test_bad_server_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--server-opt", "sgd"], ["--server-lr", "0"], ["--server-beta2", "1.0"], ["--prox-mu", "-1"]):
        with pytest.raises(SystemExit) as info:
            raise SystemExit(main(["run", *flags]))
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and "Traceback" not in "\n".join(err)
