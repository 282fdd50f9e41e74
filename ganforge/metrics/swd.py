"""Sliced Wasserstein distance between Laplacian-pyramid patch statistics (Karras et al., ICLR 2018, appendix D).

For every image, a Laplacian pyramid from full resolution down to 16x16 (5-tap binomial filter,
mirrored borders); at every level 128 random 7x7 neighbourhoods; each set's descriptors of a level
normalised per channel by their own mean and std; then 4 x 128 random unit projections, each
sorted, and the mean absolute difference between the sorted real and fake projections. Reported
x1e3 per level (finest first) and averaged, as in the paper's tables.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ganforge.errors import OptionError
from ganforge.progress import bar

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSSIAN_5X5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")  # scipy's 'mirror': the edge pixel is not repeated
    return F.conv2d(x, kernel.to(x)[None, None].expand(c, 1, 5, 5), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _filter(x, GAUSSIAN_5X5)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = torch.zeros(n, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    up[:, :, ::2, ::2] = x
    return _filter(up, GAUSSIAN_5X5 * 4.0)


def laplacian_pyramid(images: torch.Tensor, min_resolution: int = 16) -> list[torch.Tensor]:
    """Band-pass levels from full resolution down to min_resolution (the last level is the Gaussian)."""
    levels = [images.float()]
    while levels[-1].shape[-1] > min_resolution:
        levels.append(pyr_down(levels[-1]))
    for i in range(len(levels) - 1):
        levels[i] = levels[i] - pyr_up(levels[i + 1])
    return levels


def patch_descriptors(level: torch.Tensor, per_image: int, generator: torch.Generator, size: int = 7) -> torch.Tensor:
    """[N * per_image, C, size, size] random neighbourhoods, positions drawn per image."""
    n, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (n, per_image), generator=generator)
    xs = torch.randint(0, w - size + 1, (n, per_image), generator=generator)
    offs = torch.arange(size)
    rows = (ys[:, :, None] + offs)[:, :, :, None].to(level.device)   # [N, P, size, 1]
    cols = (xs[:, :, None] + offs)[:, :, None, :].to(level.device)   # [N, P, 1, size]
    batch = torch.arange(n, device=level.device)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[batch, rows, cols]            # [N, P, size, size, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n * per_image, c, size, size)


def normalize_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """Per channel, by the mean and std over all descriptors and positions; flattened to vectors."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return desc.flatten(1)


def sorted_columns(x: torch.Tensor) -> torch.Tensor:
    """Each column sorted. On the CPU through numpy: torch's CPU sort of a [N, D] tensor along N took
    ten times numpy's (0.88 s against 0.08 s for 32,768 x 128 on one core), and it is SWD's whole cost."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=0))
    return x.sort(dim=0).values


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None, repeats: int = 4,
                       directions: int = 128, chunk: int = 1 << 20, projections: list | None = None) -> float:
    """Mean over repeats of the mean |sorted(a @ d) - sorted(b @ d)| over `directions` unit vectors d
    (drawn from `generator`, or the given `projections`: one [dim, directions] matrix per repeat)."""
    dists = []
    for r in range(repeats if projections is None else len(projections)):
        d = torch.randn(a.shape[1], directions, generator=generator) if projections is None else projections[r]
        d = (d / d.norm(dim=0, keepdim=True)).to(a)
        pa = sorted_columns(torch.cat([x @ d for x in a.split(chunk)]))
        pb = sorted_columns(torch.cat([x @ d for x in b.split(chunk)]))
        dists.append((pa - pb).abs().mean().item())
    return sum(dists) / len(dists)


def raw_descriptors(images_uint8: torch.Tensor, per_image: int, generator: torch.Generator,
                    device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Unnormalised descriptors [N * per_image, C, 7, 7] of every pyramid level of a few uint8
    images, on the CPU: sets are described a batch at a time and normalised once whole."""
    levels = laplacian_pyramid(images_uint8.to(device).float())
    return [patch_descriptors(level, per_image, generator).cpu() for level in levels]


def describe(images_uint8: torch.Tensor, per_image: int, generator: torch.Generator, batch: int = 256,
             device: str | torch.device = "cpu", side: str = "images") -> list[torch.Tensor]:
    """Unnormalised descriptors of every pyramid level for a set of uint8 images [N, C, H, W]."""
    per_level: list[list[torch.Tensor]] = []
    with bar(len(images_uint8), f"SWD patches ({side})") as progress:
        for chunk in images_uint8.split(batch):
            levels = raw_descriptors(chunk, per_image, generator, device)
            per_level = per_level or [[] for _ in levels]
            for i, level in enumerate(levels):
                per_level[i].append(level)
            progress.update(len(chunk))
    return [torch.cat(d) for d in per_level]


def swd_of_descriptors(real: list[torch.Tensor], fake: list[torch.Tensor], resolution: int, seed: int = 0) -> dict:
    """SWD x1e3 per pyramid level (finest first, labelled by resolution) and their average, from
    each set's unnormalised descriptors (equal counts, positions drawn alike)."""
    g = torch.Generator().manual_seed(seed + 1)
    per_level = {}
    for i, (a, b) in enumerate(zip(real, fake)):
        per_level[str(resolution >> i)] = sliced_wasserstein(normalize_descriptors(a), normalize_descriptors(b), g) * 1e3
    return {"swd_x1e3": per_level, "swd_avg_x1e3": sum(per_level.values()) / len(per_level)}


def check_swd_size(resolution: int) -> None:
    if resolution < 16:
        raise OptionError("SWD needs images of at least 16x16")


def swd(real_uint8: torch.Tensor, fake_uint8: torch.Tensor, seed: int = 0, per_image: int = 128,
        device: str | torch.device = "cpu") -> dict:
    """SWD x1e3 per pyramid level (finest first, labelled by resolution) and their average."""
    if real_uint8.shape != fake_uint8.shape:
        raise OptionError(f"SWD needs equal sets: real {tuple(real_uint8.shape)} vs fake {tuple(fake_uint8.shape)}")
    check_swd_size(real_uint8.shape[-1])
    # Both sets draw neighbourhood positions from the same stream (positions do not depend on content),
    # so identical sets give exactly 0 and the remaining noise is that of the projections.
    real = describe(real_uint8, per_image, torch.Generator().manual_seed(seed), device=device, side="real")
    fake = describe(fake_uint8, per_image, torch.Generator().manual_seed(seed), device=device, side="generated")
    return {**swd_of_descriptors(real, fake, real_uint8.shape[-1], seed), "n": len(real_uint8)}
