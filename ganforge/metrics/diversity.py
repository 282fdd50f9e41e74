"""Sample diversity: a cheap collapse signal, logged every tick and used by the CPU quality judges.

The mean pairwise L2 distance between images, and the same of generated images relative to
real ones: about 1 when samples vary as much as the data, falling toward 0 as a generator
collapses onto few images (which losses and BEGAN's M_global do not show).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of images [N, C, H, W] (N >= 2)."""
    flat = images.detach().float().flatten(1)
    return torch.pdist(flat).mean().item()


def relative_diversity(fakes: torch.Tensor, reals: torch.Tensor) -> float:
    """mean_pairwise_distance(fakes) / mean_pairwise_distance(reals), reals pooled to the fakes' size."""
    fakes = fakes.detach().float().clamp(-1, 1)
    reals = reals.detach().float()
    if reals.shape[-1] != fakes.shape[-1]:
        reals = F.adaptive_avg_pool2d(reals, fakes.shape[-2:])
    return mean_pairwise_distance(fakes) / max(mean_pairwise_distance(reals), 1e-12)
