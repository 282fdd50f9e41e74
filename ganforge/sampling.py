"""Samples of a model, for users (generate), metrics and the training grids: noise and conditions
drawn from one seed, generated a chunk at a time. Whatever the model, it is asked for its noise
(`sampling_latents`), its conditions (`sample_conditions`) and its images (`generate`)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ganforge.errors import OptionError
from ganforge.models.base import Condition, GanModel
from ganforge.progress import bar

CHUNK = 64  # samples per forward pass: small enough for any GPU and for a CPU's caches
MAX_PSI = 2.0


def truncation(psi: float) -> float:
    """psi, checked: a number from 0 to MAX_PSI (a NaN psi drew all-black images, silently)."""
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi) or not 0 <= psi <= MAX_PSI:
        raise OptionError(f"psi {psi!r}: give a number from 0 to {MAX_PSI:g} (1: the noise as trained)")
    return float(psi)


@torch.no_grad()
def in_chunks(n: int, make: Callable[[int, int], torch.Tensor], desc: str | None = None) -> torch.Tensor:
    """make(start, stop) for consecutive chunks of n samples, as one float tensor on the CPU."""
    out = []
    with bar(n, desc or "", show=desc is not None) as progress:
        for i in range(0, n, CHUNK):
            out.append(make(i, min(i + CHUNK, n)).float().cpu())
            progress.update(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0)


def sample(model: GanModel, n: int, seed: int = 0, condition: Condition | None = None, truncate: bool = True,
           device: str | torch.device = "cpu", desc: str | None = None, psi: float = 1.0) -> tuple[torch.Tensor, Condition]:
    """n images in [-1, 1] of the EMA generator and the condition of each: the given one, else the
    model's (balanced classes, random captions of its prepared data, or nothing). `psi` < 1 pulls
    the noise toward its mean (the truncation trick: more typical, less varied samples)."""
    g = torch.Generator().manual_seed(seed)
    condition = model.sample_conditions(n, g) if condition is None else condition
    z = model.sampling_latents(n, generator=g, truncate=truncate) * truncation(psi)  # every model's noise is centred on 0
    images = in_chunks(n, lambda i, j: model.generate(z[i:j].to(device), condition[i:j].to(device)), desc)
    return images, condition


def sample_from_text(model: GanModel, prompts: list[str], per_prompt: int, seed: int = 0,
                     device: str | torch.device = "cpu", truncate: bool = True, psi: float = 1.0) -> torch.Tensor:
    """Text-to-image: per_prompt images for each prompt, rows in prompt order (`psi` as in `sample`)."""
    g = torch.Generator().manual_seed(seed)
    z = model.sampling_latents(len(prompts) * per_prompt, generator=g, truncate=truncate) * truncation(psi)
    captions = [p for p in prompts for _ in range(per_prompt)]
    return in_chunks(len(captions), lambda i, j: model.generate_from_text(captions[i:j], z[i:j].to(device)))
