"""BEGAN: boundary equilibrium GAN (Berthelot et al. 2017).

D is an autoencoder and L(v) = mean |v - D(v)|^eta its reconstruction loss (eta 1 or 2, the
paper's target norm). D lowers L on reals and raises it on fakes; G lowers L on its fakes. The
equilibrium term k_t decides how hard D pushes fakes away, so that E[L(G(z))] = gamma E[L(x)]:

    L_D = L(x) - k_t L(G(z_D))         L_G = L(G(z_G))
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1),   k_0 = 0
    M_global = L(x) + |gamma L(x) - L(G(z_G))|   (falls as training converges)

Networks: 3x3 convs with ELU, two per scale; encoder filters n, 2n, 3n, ..., stride-2 conv
downsampling to 8x8, then a linear layer to the 64-d embedding h; the decoder maps h linearly to
n x 8 x 8 and upsamples by nearest neighbour. G has the decoder's shape with its own weights and
z ~ U[-1, 1]. With `skip`, the first 8x8 map h0 is upsampled and concatenated after every
upsampling (the paper's skip connections). The learning rate halves whenever the mean M_global over
a window of `lr_window_kimg` does not improve on the best window so far, down to `lr_floor`.

Not in the paper: `mode_seeking` > 0 adds MSGAN's mode-seeking term (Mao et al. 2019) to G's loss,
weight / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the batch's two halves. On sparse images a
reconstruction loss is lowest where there is least ink, so G drifts to the thinnest images (ones,
on digits) while the equilibrium, which holds only on average, lets it; the term rewards G for
sending distant latents to distant images.

Also not in the paper: `pack` > 1 makes D judge packs of that many images stacked along the
channels (PacGAN, Lin et al. 2018). D's loss weighs an image by p_data - k_t p_G, so it pushes a
fake's loss up only where k_t p_G > p_data: with k_t near 0.17 G may draw a digit six times as
often as the data has it before D objects. A pack of m such images is over-represented by the m-th
power of that factor, so G may overdraw by only k_t^(-1/m): 2.4 times for m = 2, 1.6 for m = 4.

Also not in the paper: `denoise` > 0 makes D a denoising autoencoder (one that learns to send
corrupted inputs back to the data; Alain and Bengio 2014). D is given each image (or pack) with
Gaussian noise of that standard deviation added, and L(v) compares its reconstruction with the
clean v; G's loss and k_t use the same errors.

What these options did on digits, seed by seed, is in benchmarks/RESULTS.md ("Does each model learn?").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.errors import OptionError
from ganforge.models.base import Condition, GanModel, PhaseLoss, StepContext, adam, check_resolution


# The two reconstruction losses of a step that k_t follows, as D's and G's phases log them.
L_REAL, L_FAKE = "loss/L_real", "loss/L_fake"


def reconstruction_errors(images: torch.Tensor, reconstructions: torch.Tensor, eta: int = 1) -> torch.Tensor:
    """L(v) = mean |v - D(v)|^eta over each image's pixels (the paper's eta: 1 or 2), one per image."""
    return (images.float() - reconstructions.float()).abs().pow(eta).flatten(1).mean(1)


def reconstruction_loss(images: torch.Tensor, reconstructions: torch.Tensor, eta: int = 1) -> torch.Tensor:
    """L averaged over the batch."""
    return reconstruction_errors(images, reconstructions, eta).mean()


def k_t_update(k_t: torch.Tensor, loss_real: torch.Tensor, loss_fake_g: torch.Tensor, gamma: float,
               lambda_k: float) -> torch.Tensor:
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1)."""
    return (k_t + lambda_k * (gamma * loss_real - loss_fake_g)).clamp(0.0, 1.0)


def m_global(loss_real: torch.Tensor, loss_fake_g: torch.Tensor, gamma: float) -> torch.Tensor:
    """Convergence measure M_global = L(x) + |gamma L(x) - L(G(z_G))|."""
    return loss_real + (gamma * loss_real - loss_fake_g).abs()


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the batch's two halves (MSGAN, Mao et al. 2019)."""
    half = images.shape[0] // 2
    if half == 0:  # a batch of one image has no pair to compare
        return images.new_zeros(())
    images = images.float()  # in fp32 like L: under bf16 autocast small differences would round away
    ratio = (images[:half] - images[half:2 * half]).abs().mean() / (z[:half] - z[half:2 * half]).abs().mean()
    return 1.0 / (ratio + 1e-5)


def xavier_init(module: nn.Module) -> None:
    """Glorot-uniform weights, zero biases: the reference code's initialiser (TensorFlow slim's default).

    PyTorch's default for conv and linear layers draws weights with a third of the variance that
    keeps a signal's scale, so through the encoder's nine plain ELU layers (no normalisation, no
    residuals) the embedding h varied by 0.1% across images at the start. D then learned the
    pixel-wise median image, the fixed point of its L1 loss, whatever its input (L(x) stalled at
    0.26 on digits, the loss of a blank image), and G copied that image: BEGAN's "white blob"
    collapse on MNIST. With this init, h carries the image from the first step.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def conv_elu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU())


class Decoder(nn.Module):
    """h (64-d) -> image: linear to n x 8 x 8, then [conv, conv, upsample] per scale, conv3x3 to RGB (linear)."""

    def __init__(self, resolution: int, channels: int, n: int, h_dim: int, skip: bool):
        super().__init__()
        self.n, self.skip = n, skip
        self.scales = int(math.log2(resolution)) - 2       # 8x8 up to the resolution
        self.fc = nn.Linear(h_dim, n * 8 * 8)
        self.blocks = nn.ModuleList()
        for i in range(self.scales):
            cin = 2 * n if (skip and i > 0) else n
            self.blocks.append(nn.Sequential(conv_elu(cin, n), conv_elu(n, n)))
        self.to_image = nn.Conv2d(n, channels, 3, 1, 1)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h0 = self.fc(h).view(-1, self.n, 8, 8)
        x = h0
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                if self.skip:
                    x = torch.cat([x, F.interpolate(h0, size=x.shape[-2:], mode="nearest")], dim=1)
            x = block(x)
        return self.to_image(x)


class Encoder(nn.Module):
    """image -> h: conv3x3 to n, then [conv, conv, stride-2 conv to the next width] per scale, linear to h."""

    def __init__(self, resolution: int, channels: int, n: int, h_dim: int):
        super().__init__()
        scales = int(math.log2(resolution)) - 2
        layers: list[nn.Module] = [conv_elu(channels, n)]
        for i in range(scales):
            width = n * (i + 1)
            layers += [conv_elu(width, width), conv_elu(width, width)]
            if i < scales - 1:
                layers.append(conv_elu(width, width + n, stride=2))  # filters n, 2n, 3n, ...
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(n * scales * 8 * 8, h_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(images).flatten(1))


class Autoencoder(nn.Module):
    """BEGAN's discriminator: D(v) is the reconstruction of v."""

    def __init__(self, resolution: int, channels: int, n: int, h_dim: int, skip: bool):
        super().__init__()
        self.encoder = Encoder(resolution, channels, n, h_dim)
        self.decoder = Decoder(resolution, channels, n, h_dim, skip)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(images))


class BEGAN(GanModel):
    name = "began"
    default_batch = 16  # the paper's
    stat_panels = ("began",)  # M_global, k_t and the learning rate each on a panel of its own
    latent_interpolation = "lerp"  # z fills the cube [-1, 1]^d: straight lines stay inside it
    defaults = dict(z_dim=64, h_dim=64, base_channels=64, gamma=0.5, lambda_k=0.001, eta=1, lr=1e-4, lr_floor=2e-5,
                    lr_window_kimg=100.0, beta1=0.5, beta2=0.999, skip=False, mode_seeking=0.0, pack=1, denoise=0.0)
    architecture = ("z_dim", "h_dim", "base_channels", "skip", "pack")

    def __init__(self, config: dict):
        config = {**self.defaults, **config, "num_classes": 0}
        super().__init__(config)
        r, c, n = config["resolution"], config["channels"], config["base_channels"]
        check_resolution("BEGAN", r, note=" (its smallest map is 8x8)")
        if not 0 < config["gamma"] <= 1:
            raise OptionError(f"--gamma {config['gamma']}: must be in (0, 1]")
        if config["eta"] not in (1, 2):
            raise OptionError(f"--model-opt eta={config['eta']}: the target norm is 1 or 2")
        if config["mode_seeking"] < 0:
            raise OptionError(f"--model-opt mode_seeking={config['mode_seeking']}: a weight, 0 (off) or more")
        if config["denoise"] < 0:
            raise OptionError(f"--model-opt denoise={config['denoise']}: the noise's standard deviation, 0 (off) or more")
        if config["pack"] < 1:
            raise OptionError(f"--model-opt pack={config['pack']}: the number of images D judges together, 1 or more")
        self.G = Decoder(r, c, n, config["z_dim"], config["skip"])
        self.D = Autoencoder(r, c * config["pack"], n, config["h_dim"], config["skip"])
        self.G.apply(xavier_init)
        self.D.apply(xavier_init)
        self.make_ema()
        # Equilibrium state and the M_global stall detector, kept as buffers so snapshots resume exactly.
        self.register_buffer("k_t", torch.zeros(()))
        self.register_buffer("m_window_sum", torch.zeros(()))
        self.register_buffer("m_window_steps", torch.zeros(()))
        self.register_buffer("m_best", torch.tensor(float("inf")))

    def optimizers(self, schedule=None) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = (c["beta1"], c["beta2"])
        return {"G": adam(self.G.parameters(), lr=c["lr"], betas=betas),
                "D": adam(self.D.parameters(), lr=c["lr"], betas=betas)}

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.rand(n, self.z_dim, generator=generator, device=device) * 2 - 1  # z ~ U[-1, 1]

    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        z = ctx.latents(reals.shape[0])
        if phase == "D":
            with torch.no_grad():
                fakes = self.G(z)
            reals, fakes = ctx.augment(reals, fakes)  # D reconstructs the augmented image it was given
            eta = self.config["eta"]
            reals, fakes = self.pack(reals), self.pack(fakes)
            real_errors = reconstruction_errors(reals, self.D(self.corrupt(reals, ctx)), eta)
            loss_real = real_errors.mean()
            loss_fake = reconstruction_loss(fakes, self.D(self.corrupt(fakes, ctx)), eta)
            loss = loss_real - self.k_t * loss_fake
            # An autoencoder judges a real real when it reconstructs it better than it does the fakes.
            return PhaseLoss(loss, {L_REAL: loss_real.detach(), "loss/D": loss.detach()},
                             real_scores=(loss_fake - real_errors).detach())
        if phase == "G":
            images = self.G(z)
            (fakes,) = ctx.augment(images)
            fakes = self.pack(fakes)
            loss_fake_g = reconstruction_loss(fakes, self.D(self.corrupt(fakes, ctx)), self.config["eta"])
            if self.config["mode_seeking"] > 0:
                diversity_penalty = mode_seeking_loss(images, z)
                return PhaseLoss(loss_fake_g + self.config["mode_seeking"] * diversity_penalty,
                                 {L_FAKE: loss_fake_g.detach(), "began/mode_seeking": diversity_penalty.detach()})
            return PhaseLoss(loss_fake_g, {L_FAKE: loss_fake_g.detach()})
        raise ValueError(f"unknown phase {phase}")

    def corrupt(self, images: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """What D is given to reconstruct: the images, plus Gaussian noise when `denoise` > 0."""
        sigma = self.config["denoise"]
        if sigma == 0:
            return images
        noise = torch.randn(images.shape, generator=ctx.generator, device=images.device, dtype=images.dtype)
        return images + sigma * noise

    def pack(self, images: torch.Tensor) -> torch.Tensor:
        """Consecutive images stacked along the channels, `pack` at a time: what D judges."""
        m = self.config["pack"]
        if images.shape[0] % m:
            raise OptionError(f"--model-opt pack={m}: the batch per process ({images.shape[0]}) must be a multiple of it")
        return images.reshape(images.shape[0] // m, m * images.shape[1], *images.shape[2:])

    @torch.no_grad()
    def after_step(self, stats: dict, ctx: StepContext, optimizers: dict) -> dict:
        gamma, c = self.config["gamma"], self.config
        # With several processes, k_t follows the losses of the whole batch, identically on every rank.
        # The step's losses as logged (averaged over micro-batches when the batch is accumulated).
        loss_real, loss_fake_g = ctx.reduce_mean(stats[L_REAL]), ctx.reduce_mean(stats[L_FAKE])
        m = m_global(loss_real, loss_fake_g, gamma)
        self.k_t.copy_(k_t_update(self.k_t, loss_real, loss_fake_g, gamma, c["lambda_k"]))
        self.m_window_sum += m
        self.m_window_steps += 1
        if self.host_step(ctx.images_seen, ctx.schedule.batch):
            # Read by the host once a window (100 kimg by default): the learning rate lives there.
            mean = (self.m_window_sum / self.m_window_steps).item()
            if mean < self.m_best.item():
                self.m_best.fill_(mean)
            else:  # M_global stalled over a whole window: halve the learning rate, down to the floor
                for opt in optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = max(group["lr"] * 0.5, c["lr_floor"])
            self.m_window_sum.zero_()
            self.m_window_steps.zero_()
        # Filled on the device from a number in the kernel's arguments (torch.tensor would copy from the host).
        lr = torch.full((), optimizers["G"].param_groups[0]["lr"], device=self.k_t.device)
        return {"began/m_global": m, "began/k_t": self.k_t.clone(), "began/lr": lr}

    def host_step(self, images_seen: int, batch: int) -> bool:
        """The step that ends a learning-rate window (every lr_window_kimg)."""
        window = round(self.config["lr_window_kimg"] * 1000)
        return images_seen // window != (images_seen + batch) // window

    def discriminate(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.D(self.pack(images))

    def d_blocks(self) -> list[nn.Module]:
        """The encoder's scales from the image side (the first with the input conv), then the encoder's
        linear layer with the whole decoder."""
        net = list(self.D.encoder.net)  # input conv; then per scale two convs and a stride-2 conv (not after the last)
        scales = [nn.ModuleList(net[:4])] + [nn.ModuleList(net[i:i + 3]) for i in range(4, len(net), 3)]
        return scales + [nn.ModuleList([self.D.encoder.fc, self.D.decoder])]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """D's encoder: its code of an image, in G's latent cube (a start for projection, free)."""
        if self.config["h_dim"] != self.z_dim or self.config["pack"] > 1:
            return None
        return self.D.encoder(images).clamp(-1, 1)

    @torch.no_grad()
    def visuals(self, reals: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's reconstructions beside the real images: pairs (real, D(real)) along each row."""
        m = self.config["pack"]
        reals = reals[:reals.shape[0] // m * m]  # whole packs only
        recon = self.D(self.pack(reals)).reshape(reals.shape).clamp(-1, 1)
        return {"reconstructions": torch.stack([reals, recon], dim=1).flatten(0, 1)}
