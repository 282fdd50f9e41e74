"""DF-GAN: deep fusion text-to-image GAN (Tao et al., CVPR 2022).

One stage: z (100-d) -> dense -> 8nf x 4 x 4 -> UPBlocks (nearest 2x up, DFBlock, conv3x3,
DFBlock, conv3x3, plus a 1x1 shortcut when the width changes) -> LeakyReLU -> conv3x3 (-> tanh
in the paper; linear here by default, see "Two departures" below).
A DFBlock is Affine -> LeakyReLU(0.2) -> Affine -> LeakyReLU(0.2); each Affine scales and shifts
every channel by MLPs (cond -> C -> C) of the condition, initialised to the identity (scale 1,
shift 0). The condition is concat(z, sentence vector), as in the current reference code.

D: conv3x3, residual DownBlocks to 8nf x 4 x 4, then the one-way output: the sentence vector
tiled 4x4 and concatenated, conv3x3 -> LeakyReLU -> conv4x4 -> one logit. Hinge loss with
mismatched pairs, and MA-GP: k * mean(||grad_(x, e) D(x, e)||^p) on real matched pairs (k 2, p 6).
Adam G 1e-4 / D 4e-4, betas (0, 0.9). Samples for evaluation use truncated noise.

Two departures from the reference code, each curing a failure it shows on data unlike CUB's
(on the built-in captioned digits it made only black squares from 2 kimg on):
- The output is linear, clamped to [-1, 1] only when images are written (`tanh=True` restores the
  paper's tanh). Where many real pixels sit exactly at -1 or +1 (black or white backgrounds:
  digits, line art, emoji on white), D's first lesson is "real is darker"; Adam with beta1 = 0
  moves every weight a full step in that direction at each step, so G's pre-activations ran to
  -15..-25 within 60 steps. tanh there is -1 in float32 and its gradient 0: G never comes back.
  A linear output that overshoots -1 is pushed back by D, because no real pixel is below -1.
- Sentence vectors are centred and scaled (one mean vector and one scalar over the run's distinct
  captions, kept with the model) so that each dimension has unit variance on average. A frozen
  sentence encoder gives unit-length vectors (per-dimension spread ~0.03 for MiniLM) whose
  captions differ by a fraction of that length, while z (100-d, N(0, 1)) has length ~10: the text
  had a tenth of z's length in G's condition and was as faint in D's tiled input, and G ignored it
  (its digits matched the prompt by chance).
  The DAMSM encoder of the paper has no unit-length output; its scale is set the same way here.

Captions: each image's captions are embedded once by the (frozen) text encoder when the run
starts (`prepare`); every step picks one caption per image at random, and a mismatched caption
from another image whose text differs from all of this image's captions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.conv import Conv2d, no_weight_gradients
from ganforge.errors import OptionError
from ganforge.models.base import TEXT, Condition, GanModel, PhaseLoss, StepContext, adam, check_resolution
from ganforge.models.text import PAD, UNK, BiLSTMEncoder, CaptionTable, MiniLMEncoder, build_vocab, train_matcher


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class Affine(nn.Module):
    """x * gamma(cond) + beta(cond), per channel; starts as the identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight)
        nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x * self.gamma(cond)[:, :, None, None] + self.beta(cond)[:, :, None, None]


class DFBlock(nn.Module):
    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.affine0, self.affine1 = Affine(cond_dim, channels), Affine(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return lrelu(self.affine1(lrelu(self.affine0(x, cond)), cond))


class UPBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.fuse0, self.conv0 = DFBlock(cond_dim, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.fuse1, self.conv1 = DFBlock(cond_dim, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(self.fuse1(self.conv0(self.fuse0(x, cond)), cond))
        return self.shortcut(x) + h


def widths(resolution: int, nf: int) -> list[int]:
    """Channel widths from 4x4 up: nf x (8, 8, ..., 4, 2, 1); 6 UPBlocks at 256."""
    return [nf * min(2 ** i, 8) for i in range(int(math.log2(resolution)) - 1)][::-1]


class Generator(nn.Module):
    def __init__(self, resolution: int, channels: int, z_dim: int, text_dim: int, nf: int, cond_noise: bool,
                 tanh: bool = False):
        super().__init__()
        self.cond_noise, self.tanh = cond_noise, tanh
        cond_dim = text_dim + (z_dim if cond_noise else 0)
        ch = widths(resolution, nf)
        self.fc = nn.Linear(z_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(UPBlock(a, b, cond_dim) for a, b in zip(ch[:-1], ch[1:]))
        self.to_rgb = nn.Conv2d(ch[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, sentence], dim=1) if self.cond_noise else sentence
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        x = self.to_rgb(lrelu(x))
        return torch.tanh(x) if self.tanh else x


class DownBlock(nn.Module):
    """Residual: conv4x4 stride 2 -> conv3x3, added with a learned weight (starting at 0) to the pooled shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = Conv2d(cin, cout, 4, 2, 1), Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = lrelu(self.conv1(lrelu(self.conv0(x))))
        return F.avg_pool2d(self.shortcut(x), 2) + self.gamma * res


class Discriminator(nn.Module):
    """Every convolution of D is a ganforge.conv.Conv2d (an nn.Conv2d whose derivatives of every order
    are convolutions): MA-GP differentiates D twice."""

    def __init__(self, resolution: int, channels: int, text_dim: int, nf: int):
        super().__init__()
        ch = widths(resolution, nf)[::-1]  # nf x (1, 2, 4, 8, 8, ...)
        self.conv_img = Conv2d(channels, ch[0], 3, 1, 1)
        self.blocks = nn.Sequential(*(DownBlock(a, b) for a, b in zip(ch[:-1], ch[1:])))
        self.joint = nn.Sequential(Conv2d(ch[-1] + text_dim, 2 * nf, 3, 1, 1), nn.LeakyReLU(0.2),
                                   Conv2d(2 * nf, 1, 4, 1, 0))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_img(images))

    def forward(self, images: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        e = sentence.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return self.joint(torch.cat([h, e], dim=1)).flatten()


def hinge_d_loss(real_match: torch.Tensor, fake: torch.Tensor, real_mismatch: torch.Tensor) -> torch.Tensor:
    """relu(1 - D(x, e)) + 1/2 [relu(1 + D(G(z, e), e)) + relu(1 + D(x, e_mismatched))], batch means."""
    return F.relu(1 - real_match).mean() + 0.5 * (F.relu(1 + fake).mean() + F.relu(1 + real_mismatch).mean())


def ma_gp(scores: torch.Tensor, images: torch.Tensor, sentences: torch.Tensor, k: float = 2.0, p: float = 6.0) -> torch.Tensor:
    """Matching-aware gradient penalty: k * mean(||(dD/dx, dD/de)||_2 ^ p) over real matched pairs.

    D's weights get their gradient from the backward of the penalty, not from this one (hence
    no_weight_gradients)."""
    with no_weight_gradients():
        gx, ge = torch.autograd.grad(scores.float().sum(), (images, sentences), create_graph=True)
    norms = torch.cat([gx.float().flatten(1), ge.float().flatten(1)], dim=1).norm(dim=1)
    return k * norms.pow(p).mean()


def truncated_noise(n: int, dim: int, bound: float, scale: float, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
    """N(0, 1) redrawn until |z| <= bound, times scale (the reference code's truncation for evaluation)."""
    z = torch.randn(n, dim, generator=generator, device=device)
    for _ in range(100):
        out = z.abs() > bound
        if not out.any():
            break
        z = torch.where(out, torch.randn(n, dim, generator=generator, device=device), z)
    return z.clamp(-bound, bound) * scale


class DFGAN(GanModel):
    name = "dfgan"
    conditioning = TEXT
    step_forwards = (4, 14)  # the gradient penalty differentiates D twice
    double_backward = ("D",)
    default_batch = 32
    defaults = dict(z_dim=100, nf=32, text_encoder="minilm", text_dim=None, cond_noise=True, lr_g=1e-4, lr_d=4e-4,
                    beta1=0.0, beta2=0.9, ma_k=2.0, ma_p=6.0, trunc_bound=2.0, trunc_scale=0.88, vocab=None,
                    encoder_epochs=10, tanh=False)
    architecture = ("z_dim", "nf", "text_encoder", "text_dim", "cond_noise", "tanh")

    def __init__(self, config: dict):
        config = {**self.defaults, **config, "num_classes": 0}
        r = config["resolution"]
        check_resolution("DF-GAN", r, note=" (64, 128 and 256 in the paper)")
        if config["text_encoder"] == "minilm":
            self._encoder = [MiniLMEncoder()]
            config["text_dim"] = MiniLMEncoder.dim
        elif config["text_encoder"] == "bilstm":
            config["text_dim"] = 256
        else:
            raise OptionError(f"--model-opt text_encoder={config['text_encoder']}: choose minilm or bilstm")
        super().__init__(config)
        if config["text_encoder"] == "bilstm":
            # The vocabulary is fixed when the encoder is trained (prepare) and kept in the config.
            self.text_encoder = BiLSTMEncoder(config["vocab"] or [PAD, UNK])
        c, t = config["channels"], config["text_dim"]
        self.G = Generator(r, c, config["z_dim"], t, config["nf"], config["cond_noise"], config["tanh"])
        self.D = Discriminator(r, c, t, config["nf"])
        self.make_ema()
        # Centring and scale of the sentence vectors, fitted on the run's captions (prepare), kept in snapshots.
        self.register_buffer("text_mean", torch.zeros(t))
        self.register_buffer("text_scale", torch.ones(()))
        self.captions: CaptionTable | None = None  # of the data prepared for (training or evaluation)

    # --- text ------------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Sentence vectors as G and D see them: the encoder's, centred and scaled (see the module docstring)."""
        return (self.raw_text_vectors(captions) - self.text_mean.cpu()) / self.text_scale.cpu()

    def raw_text_vectors(self, captions: list[str]) -> torch.Tensor:
        if self.config["text_encoder"] == "minilm":
            return self._encoder[0](captions)
        self.text_encoder.eval()
        with torch.no_grad():
            return self.text_encoder(captions).cpu()

    def fit_text_normalisation(self, raw: torch.Tensor) -> None:
        """One mean vector and one scale from the encoder's raw vectors of the run's distinct captions."""
        self.text_mean.copy_(raw.mean(0))
        spread = (raw - raw.mean(0)).pow(2).mean().sqrt().item() if len(raw) > 1 else 1.0
        self.text_scale.fill_(max(spread, 1e-6))

    def prepare(self, dataset, device, resumed: bool) -> None:
        """Embed every caption once (training the BiLSTM encoder first on a new run)."""
        if dataset.captions is None:
            raise OptionError(f"--model dfgan needs captions: --data {dataset.name} has no text/ folder "
                             "(use the captioned layout, or --data mnist-captions)")
        missing = [dataset.entries[i] for i, c in enumerate(dataset.captions) if not c]
        if missing:
            raise OptionError(f"{len(missing)} image(s) have no captions, e.g. {missing[0]} (its text/ file is "
                             "missing or empty)")
        flat = [c for caps in dataset.captions for c in caps]
        if self.config["text_encoder"] == "bilstm" and not resumed:
            count = torch.tensor([len(c) for c in dataset.captions])
            self.config["vocab"] = build_vocab(flat)
            self.text_encoder = BiLSTMEncoder(self.config["vocab"])
            train_matcher(dataset.images, torch.cumsum(count, 0) - count, count,
                          lambda ids: self.text_encoder([flat[i] for i in ids]), self.text_encoder.dim,
                          self.text_encoder.parameters(), epochs=self.config["encoder_epochs"], seed=0)
        self.text_encoder_frozen()

        def encode(distinct: list[str]) -> torch.Tensor:
            raw = self.raw_text_vectors(distinct)
            if not resumed:
                self.fit_text_normalisation(raw)
            return (raw - self.text_mean.cpu()) / self.text_scale.cpu()

        self.captions = CaptionTable.build(dataset.captions, encode, device)

    def prepare_synthetic(self, batch: int, device, generator: torch.Generator) -> None:
        self.captions = CaptionTable.random(batch, self.config["text_dim"], device, generator)

    def text_encoder_frozen(self) -> None:
        if hasattr(self, "text_encoder"):
            self.text_encoder.eval().requires_grad_(False)

    # --- training --------------------------------------------------------------------------------
    def optimizers(self, schedule=None) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = (c["beta1"], c["beta2"])
        return {"G": adam(self.G.parameters(), lr=c["lr_g"], betas=betas),
                "D": adam(self.D.parameters(), lr=c["lr_d"], betas=betas)}

    def training_condition(self, labels: torch.Tensor, ctx: StepContext) -> Condition:
        """One random caption of each real image: both phases of the step use the same."""
        if self.captions is None:
            raise RuntimeError("DFGAN.prepare(dataset) must run before training")
        return Condition(captions=self.captions.pick(ctx.indices, ctx.generator))

    def loss(self, phase: str, reals: torch.Tensor, condition: Condition, ctx: StepContext) -> PhaseLoss:
        c, table = self.config, self.captions
        if phase == "D":
            mismatch = table.mismatched(ctx.indices, ctx.generator)
            sent = table.embeddings[condition.captions].clone().requires_grad_(True)
            z = ctx.latents(reals.shape[0])
            with torch.no_grad():
                fakes = self.G(z, sent.detach())
            reals, fakes = ctx.augment(reals, fakes)
            reals = reals.detach().requires_grad_(True)  # MA-GP's gradient is taken at the image D sees
            real_scores = self.D(reals, sent)
            loss = hinge_d_loss(real_scores, self.D(fakes, sent.detach()), self.D(reals.detach(), table.embeddings[mismatch]))
            gp = ma_gp(real_scores, reals, sent, c["ma_k"], c["ma_p"])
            return PhaseLoss(loss + gp, {"loss/D_hinge": loss.detach(), "loss/D_magp": gp.detach()},
                             real_scores=real_scores.detach().flatten())
        if phase == "G":
            sent = table.embeddings[condition.captions]
            (fakes,) = ctx.augment(self.G(ctx.latents(reals.shape[0]), sent))
            loss = -self.D(fakes, sent).float().mean()
            return PhaseLoss(loss, {"loss/G": loss.detach()})
        raise ValueError(f"unknown phase {phase}")

    def discriminate(self, images: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.D(images, self.captions.embeddings[condition.captions])

    def d_blocks(self) -> list[nn.Module]:
        """The image's first conv, each residual down block, then the joint image-text output."""
        return [self.D.conv_img, *self.D.blocks, self.D.joint]

    def grid_conditions(self, rows: int, columns: int) -> Condition:
        """Grid rows are captions (the first of images spread over the dataset), columns noise."""
        images = torch.linspace(0, len(self.captions.count) - 1, rows).long().to(self.captions.start.device)
        return Condition(captions=self.captions.start[images].repeat_interleave(columns).cpu())

    # --- sampling --------------------------------------------------------------------------------
    def sampling_latents(self, n: int, generator: torch.Generator | None = None, truncate: bool = True) -> torch.Tensor:
        if not truncate:
            return self.sample_latents(n, generator=generator)
        c = self.config
        return truncated_noise(n, self.z_dim, c["trunc_bound"], c["trunc_scale"], generator)

    def sampling_truncation(self) -> str:
        c = self.config
        return f"truncated normal (bound {c['trunc_bound']:g}, scale {c['trunc_scale']:g})"

    def sample_conditions(self, n: int, generator: torch.Generator | None = None) -> Condition:
        """Random captions of the prepared data (DF-GAN is evaluated on the test split's captions)."""
        return Condition(captions=torch.randint(0, len(self.captions), (n,), generator=generator))

    def generate(self, z: torch.Tensor, condition: Condition | None = None, ema: bool = True) -> torch.Tensor:
        """From caption rows of the prepared CaptionTable."""
        sent = self.captions.embeddings[condition.captions.to(self.captions.embeddings.device)].to(z.device)
        return (self.G_ema if ema else self.G)(z, sent)

    @torch.no_grad()
    def generate_from_text(self, captions: list[str], z: torch.Tensor, ema: bool = True) -> torch.Tensor:
        return self.generate_from_vectors(self.encode_text(captions), z, ema)

    def generate_from_vectors(self, sentences: torch.Tensor, z: torch.Tensor, ema: bool = True) -> torch.Tensor:
        """From sentence vectors as encode_text gives them (or blends of them, for walks between prompts)."""
        return (self.G_ema if ema else self.G)(z, sentences.to(z.device))
