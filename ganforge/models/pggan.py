"""PGGAN: progressive growing of GANs (Karras et al., ICLR 2018).

G and D start at 4x4 and grow together, one resolution at a time, up to the target (<= 1024).
Each new resolution is faded in over `fade_kimg` images (alpha 0 -> 1: the new block's toRGB /
fromRGB output is blended with the 2x-upsampled / 0.5x-pooled path of the previous resolution,
and the real images are crossfaded the same way), then stabilised for `stab_kimg`. Adam state
is reset when a resolution is added (the loop does this when `Schedule.stage` changes).

Layers: equalized learning rate (weights N(0, 1), scaled at run time by gain / sqrt(fan_in)),
PixelNorm after every conv of G, LeakyReLU(0.2) except on outputs, minibatch standard deviation
before D's last block, feature maps min(8192 / 2^stage, 512). At 128x128 and above the resampling
is fused into the convolutions as in the official code (upsample + conv3x3 = stride-2 transposed
conv with a 4x4 kernel; conv3x3 + avgpool = stride-2 conv with a 4x4 kernel): the same function,
a quarter of the work. Loss: WGAN-GP (lambda 10, target 1) + drift 0.001 E[D(x)^2]; with labels,
an AC-GAN head adds cross-entropy on D's class outputs. G is sampled from its EMA (beta 0.999).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.conv import conv2d, conv_transpose2d
from ganforge.errors import OptionError
from ganforge.losses import gradient_penalty
from ganforge.models.base import Condition, GanModel, PhaseLoss, Schedule, StepContext, adam, check_resolution

SQRT2 = math.sqrt(2.0)

# Presets: images per period (kimg) and minibatch per resolution.
PRESETS = {
    # The paper: 800k fade + 800k stabilise, batch 16 up to 128, then 14 / 6 / 3.
    "v1": dict(fade_kimg=800, stab_kimg=800, batch={4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3},
               lr={}, fmap_max=512, z_dim=512),
    # The official single-GPU configuration: 600k + 600k, larger batches at low resolution, lr 0.0015 at 1024.
    "v2": dict(fade_kimg=600, stab_kimg=600, batch={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4},
               lr={1024: 0.0015}, fmap_max=512, z_dim=512),
    # Sized for a CPU (not in the paper): 64 feature maps (about 1/60 of the arithmetic at 32x32), a
    # 128-d latent and 10k + 10k images per period, so 32x32 is reached in minutes instead of days.
    "cpu": dict(fade_kimg=10, stab_kimg=10, batch={4: 32, 8: 32, 16: 32, 32: 32, 64: 16, 128: 8, 256: 4, 512: 2, 1024: 1},
                lr={}, fmap_max=64, z_dim=128),
}


def nf(stage: int, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    """Feature maps at stage s (resolution 2^(s+1)): min(8192 / 2^s, 512)."""
    return max(1, min(fmap_base // (2 ** stage), fmap_max))


def channels_at(res: int, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    return nf(int(math.log2(res)) - 1, fmap_base, fmap_max)


class EqualizedConv2d(nn.Module):
    """Conv with weights N(0, 1) scaled at run time by gain / sqrt(fan_in); bias starts at 0.

    `resample`: "up" fuses nearest 2x upsampling into a stride-2 transposed conv, "down" fuses
    2x2 average pooling into a stride-2 conv (both only for 3x3 kernels); None is a plain conv.
    The convolutions are ganforge.conv's, whose derivatives of every order are convolutions: the
    gradient penalty differentiates D twice.
    """

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = SQRT2, resample: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel * kernel)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        if self.resample is None:
            return conv2d(x, w, self.bias, padding=self.weight.shape[-1] // 2)
        # Sum the 3x3 kernel at the four offsets of a 2x2 block: a 4x4 kernel that does the
        # resampling and the conv in one stride-2 pass.
        w = F.pad(w, (1, 1, 1, 1))
        w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
        if self.resample == "up":  # a transposed conv applies its kernel mirrored: flip to match upsample + conv
            return conv_transpose2d(x, w.flip(-1, -2).transpose(0, 1), self.bias, stride=2, padding=1)
        return conv2d(x, w * 0.25, self.bias, stride=2, padding=1)


class EqualizedLinear(nn.Module):
    def __init__(self, cin: int, cout: int, gain: float = SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    """b = a / sqrt(mean over channels of a^2 + 1e-8), at every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Append one feature map: the std over a group of samples, averaged over features and pixels.

    The group is min(group_size, batch), reduced to the largest size that divides the batch, so
    any batch works (a batch of 14 with groups of 4 uses groups of 2).
    """

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.float().view(g, n // g, c, h, w)             # sample i is in group i % (n // g), as in the official code
        y = (y - y.mean(dim=0)).pow(2).mean(dim=0)          # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))           # one std per group
        y = y.repeat(g).view(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


def fade(low: torch.Tensor, high: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """lerp(low, high, alpha) in the wider dtype of the two: under CUDA autocast one side of a fade
    can be bf16/fp16 (a conv's output) and the other fp32 (an upsample's), which torch.lerp refuses."""
    dtype = torch.promote_types(low.dtype, high.dtype)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(dtype)
    return torch.lerp(low.to(dtype), high.to(dtype), alpha)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def fused_at(res: int, fused_min: int) -> bool:
    return res >= fused_min


class Generator(nn.Module):
    def __init__(self, resolution: int, channels: int, z_dim: int, num_classes: int, fused_min: int,
                 fmap_base: int = 8192, fmap_max: int = 512):
        super().__init__()
        self.num_classes = num_classes
        ch = lambda r: channels_at(r, fmap_base, fmap_max)  # noqa: E731
        self.pixel_norm = PixelNorm()
        self.dense = EqualizedLinear(z_dim + num_classes, ch(4) * 16, gain=SQRT2 / 4)
        self.conv4 = EqualizedConv2d(ch(4), ch(4), 3)
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict({"4": EqualizedConv2d(ch(4), channels, 1, gain=1.0)})
        res = 8
        while res <= resolution:
            up = "up" if fused_at(res, fused_min) else None
            self.blocks[str(res)] = nn.ModuleList([EqualizedConv2d(ch(res // 2), ch(res), 3, resample=up),
                                                   EqualizedConv2d(ch(res), ch(res), 3)])
            self.to_rgb[str(res)] = EqualizedConv2d(ch(res), channels, 1, gain=1.0)
            res *= 2

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        """Images at `resolution` (default: the largest), the newest block blended in by alpha."""
        resolution = resolution or int(list(self.to_rgb)[-1])
        if self.num_classes:
            weights = F.one_hot(labels, self.num_classes) if labels.dtype == torch.long else labels  # ids or a blend
            z = torch.cat([z, weights.to(z.dtype)], dim=1)
        x = self.dense(self.pixel_norm(z)).view(z.shape[0], -1, 4, 4)
        x = self.pixel_norm(lrelu(x))
        x = self.pixel_norm(lrelu(self.conv4(x)))
        prev = x
        res = 4
        while res < resolution:
            res *= 2
            prev = x
            conv_up, conv = self.blocks[str(res)]
            if conv_up.resample is None:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.pixel_norm(lrelu(conv_up(x)))
            x = self.pixel_norm(lrelu(conv(x)))
        rgb = self.to_rgb[str(res)](x)
        if alpha < 1.0 and res > 4:
            rgb_prev = F.interpolate(self.to_rgb[str(res // 2)](prev), scale_factor=2.0, mode="nearest")
            rgb = fade(rgb_prev, rgb, alpha)
        return rgb


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, num_classes: int, fused_min: int, mbstd_group: int,
                 fmap_base: int = 8192, fmap_max: int = 512):
        super().__init__()
        ch = lambda r: channels_at(r, fmap_base, fmap_max)  # noqa: E731
        self.from_rgb = nn.ModuleDict({"4": EqualizedConv2d(channels, ch(4), 1)})
        self.blocks = nn.ModuleDict()
        res = 8
        while res <= resolution:
            down = "down" if fused_at(res, fused_min) else None
            self.blocks[str(res)] = nn.ModuleList([EqualizedConv2d(ch(res), ch(res), 3),
                                                   EqualizedConv2d(ch(res), ch(res // 2), 3, resample=down)])
            self.from_rgb[str(res)] = EqualizedConv2d(channels, ch(res), 1)
            res *= 2
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.conv4 = EqualizedConv2d(ch(4) + 1, ch(4), 3)
        self.dense4 = EqualizedLinear(ch(4) * 16, ch(4))
        self.out = EqualizedLinear(ch(4), 1 + num_classes, gain=1.0)

    def forward(self, images: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """[N, 1 + num_classes]: the critic score, then class logits (AC-GAN)."""
        res = images.shape[-1]
        x = lrelu(self.from_rgb[str(res)](images))
        while res > 4:
            conv, conv_down = self.blocks[str(res)]
            x = lrelu(conv(x))
            x = lrelu(conv_down(x))
            if conv_down.resample is None:
                x = F.avg_pool2d(x, 2)
            if alpha < 1.0 and res == images.shape[-1]:
                skip = lrelu(self.from_rgb[str(res // 2)](F.avg_pool2d(images, 2)))
                x = fade(skip, x, alpha)
            res //= 2
        x = lrelu(self.conv4(self.mbstd(x)))
        x = lrelu(self.dense4(x.flatten(1)))
        return self.out(x)


def crossfade_reals(reals: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Reals at `resolution`, blended like the networks: lerp(upsample(avgpool2(x)), x, alpha)."""
    if reals.shape[-1] != resolution:
        reals = F.adaptive_avg_pool2d(reals, resolution)  # exact box filter: the sizes are powers of two
    if alpha < 1.0 and resolution > 4:
        low = F.interpolate(F.avg_pool2d(reals, 2), scale_factor=2.0, mode="nearest")
        reals = fade(low, reals, alpha)
    return reals


class PGGAN(GanModel):
    name = "pggan"
    step_forwards = (4, 14)  # the gradient penalty differentiates D twice
    double_backward = ("D",)
    default_batch = None  # per resolution, from the preset
    ema_beta = 0.999
    needs_full_size_images = True
    # None: from the preset (fade_kimg, stab_kimg, fmap_max, z_dim).
    defaults = dict(conditional=False, z_dim=None, preset="v2", fade_kimg=None, stab_kimg=None, lr=0.001, beta1=0.0,
                    beta2=0.99, eps=1e-8, lambda_gp=10.0, drift=0.001, mbstd_group=4, label_weight=1.0, fused_min=128,
                    fmap_base=8192, fmap_max=None, start_resolution=4)
    architecture = ("z_dim", "fmap_base", "fmap_max")

    @classmethod
    def trains_on_labels(cls, model_opts: dict) -> bool:
        return bool(model_opts.get("conditional", False))  # the AC-GAN head

    def __init__(self, config: dict):
        config = {**self.defaults, **config}
        if config["preset"] not in PRESETS:
            raise OptionError(f"--model-opt preset={config['preset']}: choose {' or '.join(PRESETS)}")
        preset = PRESETS[config["preset"]]
        for key in ("fade_kimg", "stab_kimg", "fmap_max", "z_dim"):
            config[key] = preset[key] if config[key] is None else config[key]
        super().__init__(config)
        r = config["resolution"]
        check_resolution("PGGAN", r, largest=1024)
        start = config["start_resolution"]
        if start < 4 or start & (start - 1) or start > r:
            raise OptionError(f"--model-opt start_resolution={start}: a power of two from 4 to --resolution {r}")
        c, n = config["channels"], config.get("num_classes", 0)
        fm = dict(fmap_base=config["fmap_base"], fmap_max=config["fmap_max"])
        self.G = Generator(r, c, config["z_dim"], n, config["fused_min"], **fm)
        self.D = Discriminator(r, c, n, config["fused_min"], config["mbstd_group"], **fm)
        self.make_ema()
        # How far the run has grown, so a snapshot samples at the resolution and fade it reached.
        self.register_buffer("grown_resolution", torch.tensor(start))
        self.register_buffer("grown_alpha", torch.tensor(1.0))

    # --- schedule ---------------------------------------------------------------------------
    def schedule(self, images_seen: int, batch: int | None, resolution: int) -> Schedule:
        c = self.config
        fade, stab = round(c["fade_kimg"] * 1000), round(c["stab_kimg"] * 1000)
        target = c["resolution"]
        images_seen += self.images_before_start()
        res, alpha = 4, 1.0                         # 4x4 first, stabilise only
        if fade + stab == 0:                        # no growing: train at the target size throughout
            res = target
        elif images_seen >= stab:
            level, within = divmod(images_seen - stab, fade + stab)
            if level < int(math.log2(target)) - 2:  # fading in (then stabilising) resolution 8 * 2^level
                res, alpha = 8 * 2 ** level, (min(within / fade, 1.0) if fade else 1.0)
            else:                                   # fully grown: stabilise at the target for the rest of the run
                res = target
        batch = batch or PRESETS[c["preset"]]["batch"][res]
        return Schedule(resolution=res, batch=batch, alpha=alpha, stage=str(res),
                        period=f"{res:04d}-{'fade' if alpha < 1 else 'stable'}")

    def period_starts(self, batch: int | None, resolution: int) -> list[int]:
        """Where each fade-in and each stabilisation begins (the last stabilisation lasts to the end),
        counted from where this run starts in the schedule (`images_before_start`)."""
        c = self.config
        fade, stab = round(c["fade_kimg"] * 1000), round(c["stab_kimg"] * 1000)
        if fade + stab == 0:
            return []
        starts = []
        for level in range(int(math.log2(c["resolution"])) - 2):
            begin = stab + level * (fade + stab)
            starts += [begin, begin + fade]
        offset = self.images_before_start()
        return sorted({s - offset for s in starts if s > offset})

    def images_before_start(self) -> int:
        """Where in the schedule a run that starts at `start_resolution` begins: that resolution's
        stabilisation (a run started from a grown source repeats no growth, no fade)."""
        c = self.config
        fade, stab = round(c["fade_kimg"] * 1000), round(c["stab_kimg"] * 1000)
        if c["start_resolution"] <= 4 or fade + stab == 0:
            return 0
        return stab + (int(math.log2(c["start_resolution"])) - 3) * (fade + stab) + fade

    def start_from(self, source_config: dict, source_state: dict) -> list[str]:
        """Grow on from the resolution the source reached: its larger layers (if any) are copied too,
        untrained as they are; a source grown past this run's --resolution is refused."""
        grown, target = int(source_state["grown_resolution"]), self.config["resolution"]
        if grown > target:
            raise OptionError(f"--resolution {target}: the source has grown to {grown}x{grown}, past it (give "
                              f"--resolution {grown} or more)")
        self.config["start_resolution"] = grown
        self.grown_resolution.fill_(grown)
        return [f"schedule starts at {grown}x{grown}, where the source had grown to"] if grown > 4 else []

    def optimizers(self, schedule: Schedule | None = None) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        res = schedule.resolution if schedule else 4
        lr = PRESETS[c["preset"]]["lr"].get(res, c["lr"])
        kw = dict(lr=lr, betas=(c["beta1"], c["beta2"]), eps=c["eps"])
        return {"G": adam(self.G.parameters(), **kw), "D": adam(self.D.parameters(), **kw)}

    # --- training ---------------------------------------------------------------------------
    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        c, s = self.config, ctx.schedule
        labels = condition.classes
        z = ctx.latents(reals.shape[0])
        if phase == "D":
            reals = crossfade_reals(reals, s.resolution, s.alpha)
            with torch.no_grad():
                fakes = self.G(z, labels, s.resolution, s.alpha)
            reals, fakes = ctx.augment(reals, fakes)  # one draw: the penalty's mix is augmented alike
            out_real, out_fake = self.D(reals, s.alpha), self.D(fakes, s.alpha)
            score_real, score_fake = out_real[:, 0].float(), out_fake[:, 0].float()
            mix = torch.rand(reals.shape[0], 1, 1, 1, generator=ctx.generator, device=reals.device)
            mixed = fade(reals, fakes, mix)
            penalty = gradient_penalty(lambda x: self.D(x, s.alpha)[:, 0], mixed)
            loss = (score_fake.mean() - score_real.mean() + c["lambda_gp"] * penalty
                    + c["drift"] * score_real.pow(2).mean())
            stats = {"loss/D": loss.detach(), "loss/D_gp": penalty.detach(),
                     "loss/D_wdist": (score_real.mean() - score_fake.mean()).detach()}
            if labels is not None:  # AC-GAN: D classifies reals and fakes
                ac = F.cross_entropy(out_real[:, 1:].float(), labels) + F.cross_entropy(out_fake[:, 1:].float(), labels)
                loss = loss + c["label_weight"] * ac
                stats["loss/D_ac"] = ac.detach()
            # A critic's scores have no fixed zero: a real is judged real when it scores above the fakes.
            return PhaseLoss(loss, stats, real_scores=(score_real - score_fake.mean()).detach())
        if phase == "G":
            (fakes,) = ctx.augment(self.G(z, labels, s.resolution, s.alpha))
            out = self.D(fakes, s.alpha)
            loss = -out[:, 0].float().mean()
            if labels is not None:
                loss = loss + c["label_weight"] * F.cross_entropy(out[:, 1:].float(), labels)
            return PhaseLoss(loss, {"loss/G": loss.detach()})
        raise ValueError(f"unknown phase {phase}")

    def after_step(self, stats: dict, ctx: StepContext, optimizers: dict) -> dict:
        self.grown_resolution.fill_(ctx.schedule.resolution)
        self.grown_alpha.fill_(ctx.schedule.alpha)
        return {}

    def discriminate(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.D(images, 1.0)

    def d_blocks(self) -> list[nn.Module]:
        """One block per resolution from the target's down (its fromRGB and its two convs), then the 4x4
        end: fromRGB, the minibatch-std conv, the dense layers and the output."""
        D = self.D
        blocks = [nn.ModuleList([D.from_rgb[r], D.blocks[r]]) for r in reversed(list(D.blocks))]
        return blocks + [nn.ModuleList([D.from_rgb["4"], D.conv4, D.dense4, D.out])]

    # --- sampling ---------------------------------------------------------------------------
    @property
    def sample_resolution(self) -> int:
        return int(self.grown_resolution)

    def sampling_options(self) -> dict:
        return {"resolution": int(self.grown_resolution), "alpha": float(self.grown_alpha)}

    def generate(self, z: torch.Tensor, condition: Condition | None = None, ema: bool = True,
                 resolution: int | None = None) -> torch.Tensor:
        """At the resolution (and fade) the run reached, or any lower grown resolution."""
        grown = int(self.grown_resolution)
        if resolution is not None and resolution > grown:
            raise OptionError(f"--resolution {resolution}: this run has only grown to {grown}x{grown}")
        alpha = float(self.grown_alpha) if resolution in (None, grown) else 1.0
        G = self.G_ema if ema else self.G
        return G(z, condition.classes if condition is not None else None, resolution or grown, alpha)
