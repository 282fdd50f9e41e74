"""Differentiable augmentation of everything D sees, with adaptive strength, for small datasets.

The augmentations are DiffAugment's (Zhao et al. 2020): colour (brightness, saturation, contrast),
translation by up to 1/8 of the image with zero padding, and cutout of a square half the image's
side. As in ADA (Karras et al. 2020), each is applied to each image with probability p, and `ada`
tunes p from the overfitting heuristic r_t = E[sign(D(reals))]: up when D is too sure of the
reals, down when it is not, fast enough to go from 0 to 1 in `ada_kimg` thousand images.

Written here rather than taken from a library: torchvision's and kornia's transforms draw their
randomness from the global RNG and (kornia aside) are not differentiable per sample, and a run needs
both its own seeded stream (resume bit for bit) and one draw shared by a real and its mixed fake.
Knows nothing of any model: a model passes its D inputs through `StepContext.augment` and reports
D's per-real scores (`PhaseLoss.real_scores`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.hardware import restore_generator

MODES = ("none", "diffaug", "ada")
# DiffAugment's policy names, and which of the five "apply?" draws each one switches.
OPS = {"color": (0, 1, 2), "translation": (3,), "cutout": (4,)}
ADA_INTERVAL = 4  # steps between adjustments of p (the ADA paper's)
# Uniforms drawn per image: five "apply?" draws, then brightness, saturation, contrast, shift x/y, cutout x/y.
_DRAWS = 12


def ops_mask(ops: tuple[str, ...], device=None) -> torch.Tensor:
    """Which of the five "apply?" draws the chosen OPS switch on."""
    return torch.tensor([any(i in OPS[op] for op in ops) for i in range(5)], device=device)


def augment(batches: tuple[torch.Tensor, ...], p: torch.Tensor | float, generator: torch.Generator | None,
            chosen: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The batches (all [N, C, H, W] in [-1, 1], the same N) augmented with one random draw: row i of
    each gets the same transforms, so a penalty that mixes a real and a fake row by row sees the
    augmented mix. Differentiable with respect to every batch. `chosen` (an ops_mask) limits the
    transforms; the draws are the same whichever are chosen."""
    first = batches[0]
    n, size = first.shape[0], first.shape[-1]
    u = torch.rand(n, _DRAWS, generator=generator, device=first.device)
    apply = u[:, :5] < torch.as_tensor(p, device=first.device)
    if chosen is not None:
        apply = apply & chosen
    shift = max_shift(size)
    shifts = (u[:, 8:10] * (2 * shift + 1)).floor().long().clamp(max=2 * shift) - shift
    cut = round(size / 2)
    corners = (u[:, 10:12] * (size - cut + 1)).floor().long().clamp(max=size - cut)
    return tuple(_transform(x, apply, u[:, 5:8], shifts, corners, cut) for x in batches)


def _transform(x: torch.Tensor, apply: torch.Tensor, colour: torch.Tensor, shifts: torch.Tensor,
               corners: torch.Tensor, cut: int) -> torch.Tensor:
    def chosen(i: int, changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
        return torch.where(apply[:, i].view(-1, 1, 1, 1), changed, unchanged)

    original = x
    brightness, saturation, contrast = colour.to(x.dtype).view(-1, 3, 1, 1, 1).unbind(1)
    x = chosen(0, x + (brightness - 0.5), x)
    grey = x.mean(dim=1, keepdim=True)
    x = chosen(1, (x - grey) * (saturation * 2) + grey, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = chosen(2, (x - mean) * (contrast + 0.5) + mean, x)
    x = chosen(3, _translate(x, shifts), x)
    x = chosen(4, _cutout(x, corners, cut), x)
    # An augmented image is put back in range as the data is, with the gradient of the unclamped
    # value (a saturated pixel still learns). An image no transform touched comes back as it was,
    # bit for bit: a linear-output generator's fakes (BEGAN, PGGAN, DF-GAN) may leave [-1, 1], and
    # D must see them as they are, or G is not answerable for what lies outside (at p = 0, BEGAN's
    # G drifted out of range unseen and its samples broke up into bright frames by 12 kimg).
    return torch.where(apply.any(1).view(-1, 1, 1, 1), x + (x.clamp(-1, 1) - x).detach(), original)


def max_shift(size: int) -> int:
    return max(1, round(size / 8))


def _translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each image moved by its integer (dx, dy); what comes in from outside is 0."""
    n, _, h, w = x.shape
    pad = max_shift(max(h, w))
    padded = F.pad(x, [pad, pad, pad, pad])
    ys = torch.arange(h, device=x.device).view(1, h, 1) - shifts[:, 1].view(n, 1, 1) + pad
    xs = torch.arange(w, device=x.device).view(1, 1, w) - shifts[:, 0].view(n, 1, 1) + pad
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, ys, xs].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, corners: torch.Tensor, cut: int) -> torch.Tensor:
    """Each image with a cut x cut square at its corner set to 0."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    y0, x0 = corners[:, 1].view(n, 1, 1), corners[:, 0].view(n, 1, 1)
    inside = (ys >= y0) & (ys < y0 + cut) & (xs >= x0) & (xs < x0 + cut)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class Augmenter:
    """A run's augmentation: its mode, its probability p, its own seeded generator and (ada) the
    running sum of D's verdicts on reals. Everything stays on the device: no step waits for the host."""

    def __init__(self, mode: str, device: torch.device, seed: int, p: float | None = None,
                 target: float = 0.6, ada_kimg: float = 500.0, ops: tuple[str, ...] = tuple(OPS)):
        if mode not in MODES:
            raise ValueError(f"augmentation {mode!r}: one of {', '.join(MODES)}")
        if not ops or any(op not in OPS for op in ops):
            raise ValueError(f"augmentations {', '.join(ops)}: some of {', '.join(OPS)}")
        self.mode, self.target, self.ada_kimg, self.ops = mode, target, ada_kimg, tuple(ops)
        self.chosen = ops_mask(self.ops, device)  # made once: no host-to-device copy per step
        self.adaptive = mode == "ada" and p is None
        start = p if p is not None else (1.0 if mode == "diffaug" else 0.0)
        self.p = torch.tensor(float(start), device=device)
        self.seed = seed
        self.generator = torch.Generator(device).manual_seed(seed + 7_919)  # apart from the noise's stream
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(real)), count; since the last adjustment
        self.count = torch.zeros((), dtype=torch.long, device=device)  # steps observed

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def describe(self) -> str:
        """One line for log.txt."""
        if not self.active:
            return "augmentation: none"
        ops = ", ".join(self.ops)
        if not self.adaptive:
            return f"augmentation: {self.mode} ({ops}), each transform with p = {self.p.item():g}"
        return (f"augmentation: ada ({ops}), p from {self.p.item():g}, raised while r_t = E[sign(D(reals))] > {self.target:g} "
                f"(0 to 1 in {self.ada_kimg:g} kimg at the fastest)")

    def __call__(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.active:
            return batches
        return augment(batches, self.p, self.generator, self.chosen)

    def observe(self, real_scores: torch.Tensor | None, batch: int, reduce_mean=lambda t: t) -> dict:
        """After a step: D's scores of its reals (positive = judged real) move p every ADA_INTERVAL
        steps. Returns the step's statistics to log."""
        if not self.active:
            return {}
        stats = {"augment/p": self.p.clone()}
        if real_scores is None or not self.adaptive:
            return stats
        signs = torch.sign(real_scores.detach().float())
        self.signs[0] += signs.sum()
        self.signs[1] += signs.numel()  # a number in the kernel's arguments: no copy to the device
        stats["augment/r_t"] = signs.mean()
        # Every ADA_INTERVAL steps p moves and the tally restarts. Decided on the device, the same
        # kernels every step: a step replayed from a CUDA graph repeats it exactly.
        self.count += 1
        due = self.count % ADA_INTERVAL == 0
        r_t = reduce_mean(self.signs[0] / self.signs[1].clamp(min=1))
        step = batch * ADA_INTERVAL / (self.ada_kimg * 1000)
        self.p.copy_(torch.where(due, (self.p + torch.sign(r_t - self.target) * step).clamp(0, 1), self.p))
        self.signs.mul_(~due)
        return stats

    def state_dict(self) -> dict:
        return {"p": self.p.item(), "signs": self.signs.tolist(), "steps": int(self.count),
                "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> bool:
        """Returns False when the random stream could not be carried over (saved on another kind of
        device) and starts afresh."""
        self.p.fill_(state["p"])
        self.signs.copy_(torch.tensor(state["signs"], device=self.signs.device))
        self.count.fill_(state["steps"])
        return restore_generator(self.generator, state["rng"], self.seed + 7_919 + 1_000_003 * state["steps"])
