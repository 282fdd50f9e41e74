"""What a GAN contributes to the shared training loop.

A `GanModel` owns its networks (G, D and the EMA copy of G that is sampled), says which optimizer
updates which network, computes the loss of each phase, and states its schedule. Everything else
(devices, EMA update, precision, checkpoints, logging, grids) is the loop's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ganforge.errors import OptionError


@dataclass
class Phase:
    """One update of one network per training step: `name` is passed to `GanModel.loss`."""

    name: str        # e.g. "D", "G"
    network: str     # attribute of the model that this phase trains: "G" or "D"
    optimizer: str   # key into GanModel.optimizers()


@dataclass
class Schedule:
    """Where training is at a given image count: progressive models change these mid-run."""

    resolution: int
    batch: int
    alpha: float = 1.0                    # fade-in weight of the newest block (1 = fully grown)
    stage: str = ""                       # changes when optimizers must be reset (a new resolution)
    phase: str = ""                       # changes when a sample grid of the finished phase is worth keeping


@dataclass
class StepContext:
    """What a loss needs besides the real batch: seeded noise and the current schedule."""

    latents: Callable[[int], torch.Tensor]       # n -> z on the device, from the run's seeded generator
    schedule: Schedule
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # mean over processes (DDP), for statistics
    step: int = 0
    images_seen: int = 0                         # before this step
    generator: torch.Generator | None = None     # the run's seeded generator, for any other randomness
    indices: torch.Tensor | None = None          # dataset indices of the real batch (captions, ...)
    shared: dict = field(default_factory=dict)   # values one phase of this step hands to the next
    optimizers: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)    # scalars (tensors) a loss wants logged


class GanModel(nn.Module):
    """Base of every GAN in ganforge; see cdcgan.py for the smallest complete example."""

    name: str = "gan"
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module

    defaults: dict = {}  # the model's own hyperparameters; `--model-opt KEY=VALUE` overrides them
    default_batch: int = 64

    def __init__(self, config: dict):
        super().__init__()
        unknown = set(config) - set(self.defaults) - {"resolution", "channels", "num_classes"}
        if unknown:
            raise OptionError(f"--model-opt {', '.join(sorted(unknown))}: not an option of {self.name} "
                             f"(its options: {', '.join(sorted(self.defaults))})")
        for key, value in config.items():  # a value of the default's kind (an int where an int is expected)
            default = self.defaults.get(key)
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if (numeric and (isinstance(value, bool) or not isinstance(value, (int, float)))) or \
                    (isinstance(default, bool) and not isinstance(value, bool)) or (default is None and isinstance(value, str)):
                usual = "chosen by the model" if default is None else default
                raise OptionError(f"--model-opt {key}={value!r}: {self.name} expects "
                                  f"{'true or false' if isinstance(default, bool) else 'a number'} (default: {usual})")
        self.config = dict(config)  # everything needed to rebuild the networks from a snapshot

    # --- set-up -----------------------------------------------------------------------------
    def make_ema(self) -> None:
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", "D"), Phase("G", "G", "G")]

    step_forwards: tuple[int, int] = (4, 9)  # (G, D) forward-equivalents of one training step, for FLOP counts
    double_backward: tuple[str, ...] = ()  # networks a gradient penalty differentiates twice (kept out of compile)
    needs_full_size_images: bool = False  # refuse data smaller than --resolution instead of upscaling it
    ema_beta: float | None = None  # fixed EMA decay per step; None: the loop's half-life in kimg (--ema-kimg)

    def optimizers(self, schedule: Schedule | None = None) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimizers; called again whenever Schedule.stage changes (state reset)."""
        raise NotImplementedError

    def schedule(self, images_seen: int, batch: int, resolution: int) -> Schedule:
        """Fixed-resolution models train at the run's resolution and batch throughout."""
        return Schedule(resolution=resolution, batch=batch)

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, reals: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Scalar loss of `phase` on a real batch in [-1, 1]; put scalars to log into ctx.stats."""
        raise NotImplementedError

    def prepare(self, dataset, device, resumed: bool) -> None:
        """Called once the data is known, before training (DF-GAN embeds its captions here)."""

    def grid_labels(self, rows: int, columns: int) -> torch.Tensor | None:
        """Labels of the training sample grid: one row per class when conditional."""
        if not self.num_classes:
            return None
        return torch.arange(min(self.num_classes, rows)).repeat_interleave(columns)

    def after_step(self, ctx: StepContext) -> None:
        """Hook after all phases of a step (BEGAN's k_t update lives here)."""

    def visuals(self, reals: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Extra image grids for the run directory, by name (BEGAN: D's reconstructions)."""
        return {}

    # --- sampling -----------------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return self.config["z_dim"]

    @property
    def num_classes(self) -> int:
        return self.config.get("num_classes", 0)

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator, device=device)

    def sampling_options(self) -> dict:
        """Extra keyword arguments of G for sampling the state the run reached (fixed numbers, for export)."""
        return {}

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """Images in [-1, 1] from latents (and labels for conditional models)."""
        return (self.G_ema if ema else self.G)(z, labels)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def adam(params, **kwargs) -> torch.optim.Adam:
    """Adam, fused into one kernel per step when the parameters are on a GPU (same maths, fewer launches)."""
    params = list(params)
    fused = bool(params) and params[0].is_cuda
    return torch.optim.Adam(params, fused=fused or None, **kwargs)
