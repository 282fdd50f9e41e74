"""MS-SSIM between random pairs of images: a diversity measure (lower = more diverse).

The standard 5-scale definition (Wang et al. 2003) as in the code PGGAN used: at each scale an
11-tap Gaussian window (sigma 1.5; shrunk with the image when a scale is smaller than 11 px),
'valid' filtering, K1 = 0.01, K2 = 0.03, dynamic range 255; contrast-structure terms of the first
four scales and the full SSIM of the last, weighted (0.0448, 0.2856, 0.3001, 0.2363, 0.1333);
2x2 average downsampling between scales. Negative contrast terms are clamped at 0 so the
fractional powers stay real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.errors import OptionError
from ganforge.progress import bar

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian whose outer product is the 2-D window (it separates)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_terms(a: torch.Tensor, b: torch.Tensor, max_val: float = 255.0, filter_size: int = 11,
               sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image SSIM and contrast-structure, averaged over pixels and channels: two [N] tensors.

    The five local means (a, b, a^2, b^2, ab) come from one separable blur of the five stacked
    ('valid': no padding): 2 x 11 taps a pixel instead of 121."""
    _, c, h, w = a.shape
    size = min(filter_size, h, w)
    g = gaussian_window(size, size * sigma / filter_size).to(a)
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    blurred = F.conv2d(stacked, g.view(1, 1, 1, size).expand(5 * c, 1, 1, size), groups=5 * c)
    blurred = F.conv2d(blurred, g.view(1, 1, size, 1).expand(5 * c, 1, size, 1), groups=5 * c)
    mu_a, mu_b, aa, bb, ab = blurred.chunk(5, dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs_map
    return ssim_map.mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ms_ssim(a: torch.Tensor, b: torch.Tensor, max_val: float = 255.0, floor: float = 0.0) -> torch.Tensor:
    """MS-SSIM of each pair (a[i], b[i]) of images in [0, max_val]: an [N] tensor. A `floor` above 0
    keeps each scale's term off 0, where its fractional power has no gradient (as a loss)."""
    a, b = a.float(), b.float()  # as the official code: within 2e-6 of float64 on digits, 5x faster
    result = torch.ones(a.shape[0], dtype=torch.float32, device=a.device)
    for i, weight in enumerate(WEIGHTS):
        ssim, cs = ssim_terms(a, b, max_val)
        last = i == len(WEIGHTS) - 1
        result = result * (ssim if last else cs).clamp(min=floor) ** weight
        if not last:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return result.float()


def mean_ms_ssim(images_uint8: torch.Tensor, pairs: int = 10_000, seed: int = 0, batch: int = 500,
                 device: str | torch.device = "cpu") -> dict:
    """Mean MS-SSIM over random pairs of distinct images of one set."""
    if len(images_uint8) < 2:
        raise OptionError("MS-SSIM needs at least two images")
    values = random_pairs_ms_ssim(images_uint8, pairs, torch.Generator().manual_seed(seed), batch, device, show=True)
    return {"ms_ssim": values.mean().item(), "pairs": pairs}


def random_pairs_ms_ssim(images_uint8: torch.Tensor, pairs: int, generator: torch.Generator, batch: int = 500,
                         device: str | torch.device = "cpu", show: bool = False) -> torch.Tensor:
    """MS-SSIM of `pairs` random pairs of distinct images of a set (at least two): a [pairs] tensor."""
    n = len(images_uint8)
    first = torch.randint(0, n, (pairs,), generator=generator)
    second = (first + torch.randint(1, n, (pairs,), generator=generator)) % n  # never an image with itself
    values = []
    with bar(pairs, "MS-SSIM", unit="pair", show=show) as progress:
        for i, j in zip(first.split(batch), second.split(batch)):
            values.append(ms_ssim(images_uint8[i].to(device).float(), images_uint8[j].to(device).float()).cpu())
            progress.update(len(i))
    return torch.cat(values) if values else torch.empty(0)
