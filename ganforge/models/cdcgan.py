"""Conditional DCGAN, as in the Neural Network Console GAN sample (README, "Two commands").

The sample defines four networks over one set of parameters:
  Generator          trains G with D frozen: BCE(D(G(z, y), y), 1)
  DiscriminatorFake  trains D with G frozen: BCE(D(G(z, y), y), 0)
  DiscriminatorReal  trains D on real images: BCE(D(x, y), 1)
  RuntimeGenerator   inference only: (noise, label) -> image
Here they are the phases "D" (Real + Fake, summed into one update) and "G" of one model, and the
RuntimeGenerator is the EMA copy of G (`G_ema`), which is what `generate` and `export` use.
The label enters both networks: a learned embedding concatenated to z in G, and a learned
label map (one channel, R x R) concatenated to the image in D. With num_classes = 0 the same
networks form the unconditional DCGAN (`--model dcgan`).
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge.losses import bce_with_logits
from ganforge.models.base import Condition, GanModel, PhaseLoss, StepContext, adam, check_resolution


def channels_at(res: int, resolution: int, base: int, cap: int) -> int:
    """DCGAN widths: `base` channels at full resolution, doubling each halving, capped."""
    return min(cap, base * resolution // res)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN paper initialisation: conv weights N(0, 0.02); batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 1.0)


class Generator(nn.Module):
    """(z, label) -> image in [-1, 1]: transposed conv + BN + ReLU from 4x4 up, tanh at the end."""

    def __init__(self, resolution: int, channels: int, z_dim: int, num_classes: int, base: int, cap: int,
                 embed_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = z_dim + (embed_dim if num_classes else 0)
        layers: list[nn.Module] = []
        ch = channels_at(4, resolution, base, cap)
        layers += [nn.ConvTranspose2d(in_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        res = 4
        while res * 2 < resolution:
            out = channels_at(res * 2, resolution, base, cap)
            layers += [nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            ch, res = out, res * 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:  # class ids, or weights over the classes (a blend of their embeddings)
            z = torch.cat([z, self.embed(labels) if labels.dtype == torch.long else labels @ self.embed.weight], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """(image, label) -> one logit: strided conv + LeakyReLU(0.2) down to 4x4 (BN after the first)."""

    def __init__(self, resolution: int, channels: int, num_classes: int, base: int, cap: int):
        super().__init__()
        self.resolution = resolution
        self.label_map = nn.Embedding(num_classes, resolution * resolution) if num_classes else None
        in_ch = channels + (1 if num_classes else 0)
        ch = channels_at(resolution // 2, resolution, base, cap)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        res = resolution // 2
        while res > 4:
            out = channels_at(res // 2, resolution, base, cap)
            layers += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch, res = out, res // 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_map is not None:
            maps = self.label_map(labels).view(-1, 1, self.resolution, self.resolution).to(images.dtype)
            images = torch.cat([images, maps], dim=1)
        return self.net(images).flatten()


class CDCGAN(GanModel):
    """Conditional DCGAN: BCE losses, Adam(2e-4, 0.5, 0.999) for both networks."""

    name = "cdcgan"
    defaults = dict(z_dim=100, base_channels=None, max_channels=512, embed_dim=50, lr=2e-4, beta1=0.5, beta2=0.999)
    architecture = ("z_dim", "base_channels", "max_channels", "embed_dim")

    @classmethod
    def trains_on_labels(cls, model_opts: dict) -> bool:
        return True

    def __init__(self, config: dict):
        config = {**self.defaults, **config}
        if config["base_channels"] is None:  # DCGAN's 64 at 64x64 and above; half that for small images
            config["base_channels"] = 32 if config["resolution"] <= 32 else 64
        super().__init__(config)
        r, c, n = config["resolution"], config["channels"], config.get("num_classes", 0)
        check_resolution("DCGAN", r)
        self.G = Generator(r, c, config["z_dim"], n, config["base_channels"], config["max_channels"], config["embed_dim"])
        self.D = Discriminator(r, c, n, config["base_channels"], config["max_channels"])
        self.make_ema()

    def optimizers(self, schedule=None) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = (c["beta1"], c["beta2"])
        return {"G": adam(self.G.parameters(), lr=c["lr"], betas=betas),
                "D": adam(self.D.parameters(), lr=c["lr"], betas=betas)}

    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        labels = condition.classes
        z = ctx.latents(reals.shape[0])
        if phase == "D":
            with torch.no_grad():  # G is frozen in the DiscriminatorFake phase
                fakes = self.G(z, labels)
            reals, fakes = ctx.augment(reals, fakes)
            logits_real = self.D(reals, labels)
            d_real = bce_with_logits(logits_real, 1.0)               # DiscriminatorReal
            d_fake = bce_with_logits(self.D(fakes, labels), 0.0)   # DiscriminatorFake
            return PhaseLoss(d_real + d_fake, {"loss/D_real": d_real.detach(), "loss/D_fake": d_fake.detach()},
                             real_scores=logits_real.detach())
        if phase == "G":
            (fakes,) = ctx.augment(self.G(z, labels))
            g = bce_with_logits(self.D(fakes, labels), 1.0)  # Generator (D frozen by the loop)
            return PhaseLoss(g, {"loss/G": g.detach()})
        raise ValueError(f"unknown phase {phase}")

    def discriminate(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.D(images, condition.classes)

    def d_blocks(self) -> list[nn.Module]:
        """One block per convolution of D (with its batch norm), from the image side; the label map is in none."""
        blocks: list[nn.ModuleList] = []
        for layer in self.D.net:
            if isinstance(layer, nn.Conv2d):
                blocks.append(nn.ModuleList())
            blocks[-1].append(layer)
        return blocks


class DCGAN(CDCGAN):
    """The same networks without labels, for unlabelled image folders."""

    name = "dcgan"

    @classmethod
    def trains_on_labels(cls, model_opts: dict) -> bool:
        return False

    def __init__(self, config: dict):
        super().__init__({**config, "num_classes": 0})
