"""What a GAN contributes to the shared training loop, and what shared code may ask of it.

A `GanModel` owns its networks (G, D and the EMA copy of G that is sampled), says which optimizer
updates which network, computes the loss of each phase, and states its schedule. Everything else
(devices, EMA update, precision, checkpoints, logging, grids) is the loop's.

Shared code (the loop, sampling, metrics, bench, the CLI) never names a model: it reads the
model's `conditioning` (nothing, a class, or text) and calls the methods below. What a batch of
samples is conditioned on travels as one `Condition`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ganforge.errors import OptionError


# What a model's samples are conditioned on (GanModel.conditioning).
UNCONDITIONAL, CLASS, TEXT = "unconditional", "class", "text"


@dataclass
class Condition:
    """What each sample of a batch is conditioned on: class ids, or ids of captions in the model's
    prepared caption table (text-to-image). An empty Condition conditions on nothing."""

    classes: torch.Tensor | None = None    # [N] int64 class ids, or [N, num_classes] weights (a blend of classes)
    captions: torch.Tensor | None = None   # [N] int64 rows of the model's CaptionTable

    def _fields(self) -> dict:
        return {"classes": self.classes, "captions": self.captions}

    def __len__(self) -> int:
        return next((len(v) for v in self._fields().values() if v is not None), 0)

    def __getitem__(self, index) -> "Condition":
        return Condition(**{k: None if v is None else v[index] for k, v in self._fields().items()})

    def to(self, device) -> "Condition":
        return Condition(**{k: None if v is None else v.to(device) for k, v in self._fields().items()})

    def split(self, size: int, n: int) -> list["Condition"]:
        """Consecutive pieces of `size` for n samples (n pieces of nothing when unconditioned)."""
        return [self[i:i + size] for i in range(0, n, size)]


def balanced_classes(num_classes: int, n: int) -> torch.Tensor:
    """n class ids spread as evenly as the classes allow, in class order: the first n % k get one more."""
    counts = torch.tensor([n // num_classes + (c < n % num_classes) for c in range(num_classes)])
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def check_resolution(model: str, resolution: int, smallest: int = 8, largest: int | None = None, note: str = "") -> None:
    """Refuse a --resolution that is not a power of two in [smallest, largest]."""
    if resolution < smallest or resolution & (resolution - 1) or (largest is not None and resolution > largest):
        span = f"from {smallest} to {largest}" if largest else f">= {smallest}"
        raise OptionError(f"--resolution {resolution}: {model} needs a power of two {span}{note}")


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
    period: str = ""                      # changes when a sample grid of the finished period is worth keeping
                                          # (PGGAN: each fade and stabilisation), kept as period-<name>.png


@dataclass
class StepContext:
    """What a loss needs besides the real batch and its condition: seeded noise and the schedule."""

    latents: Callable[[int], torch.Tensor]       # n -> z on the device, from the run's seeded generator
    schedule: Schedule
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # mean over processes (DDP), for statistics
    step: int = 0
    images_seen: int = 0                         # before this step
    generator: torch.Generator | None = None     # the run's seeded generator, for any other randomness
    indices: torch.Tensor | None = None          # dataset indices of the real batch (captions, ...)
    # Every image D sees goes through augment(*batches) first (reals, fakes, a penalty's inputs; one
    # call per set of batches that a penalty mixes row by row); the identity unless --augment is on.
    augment: Callable[..., tuple] = lambda *batches: batches


@dataclass
class PhaseLoss:
    """What `GanModel.loss` gives back for one phase on one (micro-)batch, all on the device."""

    loss: torch.Tensor                                            # the scalar the phase's network minimises
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars to log, by name
    real_scores: torch.Tensor | None = None  # D's phase: its score of each real, > 0 where it judges it real (ADA)


class GanModel(nn.Module):
    """Base of every GAN in ganforge; see cdcgan.py for the smallest complete example."""

    name: str = "gan"
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module

    defaults: dict = {}  # the model's own hyperparameters; `--model-opt KEY=VALUE` overrides them
    default_batch: int = 64
    stat_panels: tuple[str, ...] = ()  # stats.jsonl groups ("began/...") charted one series per panel
    latent_interpolation: str = "slerp"  # how a latent walk moves: "slerp" (Gaussian latents) or "lerp"

    @classmethod
    def trains_on_labels(cls, model_opts: dict) -> bool:
        """Whether a run with these --model-opt values needs class-labelled data."""
        return False

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
            sized = key in self.architecture and isinstance(value, (int, float)) and not isinstance(value, bool)
            if sized and not (value >= 1 and value == int(value)):  # a width or a latent size: -4 is no shape
                raise OptionError(f"--model-opt {key}={value!r}: it sizes {self.name}'s networks, so it is a whole "
                                  f"number of at least 1 (default: {default if default is not None else 'chosen by the model'})")
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

    def period_starts(self, batch: int | None, resolution: int) -> list[int] | None:
        """The image counts (besides 0) from which `schedule` may give another period, stage or batch:
        what a run's plan splits it at without asking `schedule` at every step. None: not stated (the
        plan then asks `schedule` at every step); a fixed schedule has none."""
        return [] if type(self).schedule is GanModel.schedule else None

    # --- training ---------------------------------------------------------------------------
    def training_condition(self, labels: torch.Tensor, ctx: StepContext) -> Condition:
        """The condition of a real batch, from its class labels (and ctx.indices, ctx.generator); every
        phase of the step sees the same one."""
        return Condition(classes=labels) if self.conditioning == CLASS else Condition()

    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        """The loss of `phase` on a real batch in [-1, 1], with what to log beside it."""
        raise NotImplementedError

    def prepare(self, dataset, device, resumed: bool) -> None:
        """Called once the data is known, before training or evaluating (DF-GAN embeds its captions here)."""

    def prepare_synthetic(self, batch: int, device, generator: torch.Generator) -> None:
        """Stand-in for `prepare` with random data, for timing a step (bench); nothing by default."""

    def after_step(self, stats: dict[str, torch.Tensor], ctx: StepContext,
                   optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        """Hook after all phases of a step (BEGAN's k_t update lives here): `stats` are the step's
        (this process's means over its micro-batches), `optimizers` the run's (a learning rate to
        change). Returns further statistics to log."""
        return {}

    def host_step(self, images_seen: int, batch: int) -> bool:
        """Whether the step from `images_seen` does work on the host besides launching kernels (BEGAN
        halving its learning rate): such a step cannot be replayed from a CUDA graph and runs eagerly."""
        return False

    def visuals(self, reals: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra image grids for the run directory, by name (BEGAN: D's reconstructions)."""
        return {}

    def discriminate(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        """D's plain forward pass on a batch (what bench counts FLOPs of)."""
        return self.D(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor | None:
        """Latents whose samples resemble the images, where the model has an encoder (a start for
        `ganforge project`); None where it has none."""
        return None

    # --- fine-tuning: a new run from another run's networks (--init-from), FreezeD (--freeze-d) ----
    architecture: tuple[str, ...] = ()  # config keys that shape the networks: a source must have the same values
    frozen_parameters: tuple = ()       # D's parameters --freeze-d keeps as they are (the step gives them no gradient)

    def start_from(self, source_config: dict, source_state: dict) -> list[str]:
        """Called before a new run loads a source run's networks: refuse a source it cannot start from
        (naming the option), and set up where it starts. Returns lines for log.txt. A fixed-resolution
        model needs the source's resolution (its layers' widths follow it)."""
        if source_config["resolution"] != self.config["resolution"]:
            raise OptionError(f"--resolution {self.config['resolution']}: the source was trained at "
                              f"{source_config['resolution']}x{source_config['resolution']}")
        return []

    def d_blocks(self) -> list[nn.Module]:
        """D in blocks from the image side, what --freeze-d N counts (the first N get no updates);
        by default one block, the whole of D."""
        return [self.D]

    # --- sampling -----------------------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return self.config["z_dim"]

    @property
    def num_classes(self) -> int:
        return self.config.get("num_classes", 0)

    @property
    def conditioning(self) -> str:
        """UNCONDITIONAL, CLASS (class ids; `num_classes` of them) or TEXT (captions; the model then
        has `captions`, a CaptionTable of its prepared data, `encode_text` (captions -> sentence
        vectors), `generate_from_text` and `generate_from_vectors`)."""
        return CLASS if self.num_classes else UNCONDITIONAL

    @property
    def sample_resolution(self) -> int:
        """The resolution the model samples at now (a progressive model: as far as it has grown)."""
        return self.config["resolution"]

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator, device=device)

    def sampling_latents(self, n: int, generator: torch.Generator | None = None, truncate: bool = True) -> torch.Tensor:
        """The noise of samples for users and metrics; a model whose paper samples truncated noise
        (DF-GAN) draws it here when `truncate`."""
        return self.sample_latents(n, generator=generator)

    def sampling_truncation(self) -> str:
        """How `sampling_latents(truncate=True)` shapes the noise, as a metric's protocol records it."""
        return "none"

    def sample_conditions(self, n: int, generator: torch.Generator | None = None) -> Condition:
        """Conditions for n samples to generate or evaluate: classes balanced and in order; nothing
        for unconditional models (text models: random captions of the prepared data)."""
        if self.conditioning == CLASS:
            return Condition(classes=balanced_classes(self.num_classes, n))
        return Condition()

    def grid_conditions(self, rows: int, columns: int) -> Condition:
        """Conditions of the training sample grid: one row per class when class-conditional."""
        if self.conditioning == CLASS:
            return Condition(classes=torch.arange(min(self.num_classes, rows)).repeat_interleave(columns))
        return Condition()

    def sampling_options(self) -> dict:
        """Extra keyword arguments of G for sampling the state the run reached (fixed numbers, for export)."""
        return {}

    def generate(self, z: torch.Tensor, condition: Condition | None = None, ema: bool = True) -> torch.Tensor:
        """Images in [-1, 1] from latents (and class ids, or class weights, for class-conditional models)."""
        classes = condition.classes if condition is not None else None
        return (self.G_ema if ema else self.G)(z, classes)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def adam(params, **kwargs) -> torch.optim.Adam:
    """Adam, fused into one kernel per step when the parameters are on a GPU (same maths, fewer launches)."""
    params = list(params)
    fused = bool(params) and params[0].is_cuda
    return torch.optim.Adam(params, fused=fused or None, **kwargs)
