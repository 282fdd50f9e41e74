import math

import torch

from ganforge.losses import bce_with_logits


def test_bce_real_target_matches_hand_computed():
    # -log(sigmoid(x)) for x = 0, 2, -1: log 2, log(1 + e^-2), log(1 + e)
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 3
    assert abs(bce_with_logits(torch.tensor([0.0, 2.0, -1.0]), 1.0).item() - expected) < 1e-6
    assert abs(expected - 0.711112) < 1e-6


def test_bce_fake_target_matches_hand_computed():
    # -log(1 - sigmoid(x)) = log(1 + e^x)
    expected = (math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 3
    assert abs(bce_with_logits(torch.tensor([0.0, 2.0, -1.0]), 0.0).item() - expected) < 1e-6
    assert abs(expected - 1.044446) < 1e-6


def test_bce_matches_torch_and_is_stable_for_large_logits():
    x = torch.tensor([-200.0, -3.0, 0.5, 200.0])
    for t in (0.0, 1.0):
        ref = torch.nn.functional.binary_cross_entropy_with_logits(x, torch.full_like(x, t))
        assert torch.allclose(bce_with_logits(x, t), ref)
    assert torch.isfinite(bce_with_logits(x, 1.0))
    assert abs(bce_with_logits(torch.tensor([200.0]), 0.0).item() - 200.0) < 1e-4
