from __future__ import annotations

import math

import torch

from fedlm.client import _add_dp_noise
from fedlm.config import RunConfig


def test_dp_noise_clips_the_l2_norm_and_adds_calibrated_noise() -> None:
    cfg = RunConfig(dp_noise=0.5, dp_l2_clip=1.0, clients_per_round=4)
    delta = {"b": torch.full((200, 100), 10.0)}
    noisy = _add_dp_noise(delta, cfg)["b"]
    expected_std = 0.5 * 1.0 / math.sqrt(4)
    clipped_value = 1.0 / math.sqrt(200 * 100)  # the clipped delta is uniform with L2 norm 1
    assert abs(noisy.mean().item() - clipped_value) < 0.01
    assert abs(noisy.std().item() - expected_std) < 0.01
    assert noisy.dtype == torch.float32 and noisy.shape == (200, 100)
