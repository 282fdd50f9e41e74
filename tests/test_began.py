
import pytest
import torch

from ganforge.errors import OptionError
from ganforge.models import Schedule, StepContext, build_model
from ganforge.models.began import k_t_update, m_global, mode_seeking_loss, reconstruction_loss


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_k_t_update_hand_computed():
    # 0.5 + 0.001 * (0.5 * 0.2 - 0.05) = 0.50005
    assert k_t_update(t(0.5), t(0.2), t(0.05), gamma=0.5, lambda_k=0.001).item() == pytest.approx(0.50005, abs=1e-7)
    # fakes reconstructed worse than gamma L(x): k falls; 0.3 + 0.01 * (0.7 * 0.4 - 0.5) = 0.2978
    assert k_t_update(t(0.3), t(0.4), t(0.5), gamma=0.7, lambda_k=0.01).item() == pytest.approx(0.2978, abs=1e-7)


def test_k_t_is_clipped_at_both_bounds():
    assert k_t_update(t(0.9995), t(1.0), t(0.0), gamma=1.0, lambda_k=0.001).item() == 1.0   # 1.0005 -> 1
    assert k_t_update(t(0.0), t(0.1), t(0.9), gamma=0.5, lambda_k=0.001).item() == 0.0      # -0.00085 -> 0


def test_m_global_and_reconstruction_loss_hand_computed():
    assert m_global(t(0.2), t(0.3), gamma=0.5).item() == pytest.approx(0.2 + 0.2)     # 0.2 + |0.1 - 0.3|
    assert m_global(t(0.2), t(0.05), gamma=0.5).item() == pytest.approx(0.2 + 0.05)   # 0.2 + |0.1 - 0.05|
    v = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    r = torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]])
    assert reconstruction_loss(v, r).item() == pytest.approx((0.5 + 0 + 0.5 + 1.0) / 4)
    assert reconstruction_loss(v, r, eta=2).item() == pytest.approx((0.25 + 0 + 0.25 + 1.0) / 4)  # the L2 target norm


def test_mode_seeking_loss_hand_computed():
    # One pair: mean |G(z1) - G(z2)| = (|1 - 0| + |0 - 0.5|) / 2 = 0.75 and mean |z1 - z2| = (0.5 + 1) / 2 = 0.75,
    # so the ratio is 1 and the loss 1 / (1 + 1e-5).
    images = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.5]]]])
    z = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    assert mode_seeking_loss(images, z).item() == pytest.approx(1 / (1 + 1e-5), rel=1e-7)
    assert mode_seeking_loss(images * 2, z).item() == pytest.approx(1 / (2 + 1e-5), rel=1e-7)  # more diverse: lower
    assert mode_seeking_loss(images[:1], z[:1]).item() == 0.0  # no pair in a batch of one


def test_mode_seeking_weight_adds_the_term_to_g_loss():
    torch.manual_seed(0)
    model = build_model("began", dict(resolution=8, channels=1, base_channels=4, mode_seeking=0.5))
    z = model.sample_latents(4)
    ctx = StepContext(latents=lambda n: z, schedule=Schedule(8, 4))
    fakes = model.G(z)
    expected = reconstruction_loss(fakes, model.D(fakes)) + 0.5 * mode_seeking_loss(fakes, z)
    out = model.loss("G", torch.zeros(4, 1, 8, 8), None, ctx)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.stats["began/mode_seeking"].item() == pytest.approx(mode_seeking_loss(fakes, z).item(), rel=1e-6)
    with pytest.raises(OptionError, match="mode_seeking=-1"):
        build_model("began", dict(resolution=8, channels=1, mode_seeking=-1))


@pytest.mark.parametrize("resolution", [8, 32, 64, 128])
@pytest.mark.parametrize("skip", [False, True])
def test_shapes(resolution, skip):
    model = build_model("began", dict(resolution=resolution, channels=3, base_channels=4, skip=skip))
    z = model.sample_latents(3)
    assert z.shape == (3, 64) and z.min() >= -1 and z.max() <= 1
    images = model.G(z)
    assert images.shape == (3, 3, resolution, resolution)
    assert model.D(images).shape == images.shape
    assert model.D.encoder(images).shape == (3, 64)


def test_encoder_filters_grow_n_2n_3n():
    model = build_model("began", dict(resolution=32, channels=3, base_channels=8))
    widths = [m.out_channels for m in model.D.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    strides = [m.stride[0] for m in model.D.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    # 32 -> 16 -> 8: three scales of two convs, two stride-2 convs between them
    assert widths == [8, 8, 8, 16, 16, 16, 24, 24, 24]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1]


def test_losses_follow_the_equations():
    torch.manual_seed(0)
    model = build_model("began", dict(resolution=8, channels=1, base_channels=4))
    model.k_t.fill_(0.25)
    reals = torch.rand(4, 1, 8, 8) * 2 - 1
    z = model.sample_latents(4)
    ctx = StepContext(latents=lambda n: z, schedule=Schedule(8, 4))
    fakes = model.G(z)
    expected_d = reconstruction_loss(reals, model.D(reals)) - 0.25 * reconstruction_loss(fakes, model.D(fakes))
    assert model.loss("D", reals, None, ctx).loss.item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert model.loss("G", reals, None, ctx).loss.item() == pytest.approx(reconstruction_loss(fakes, model.D(fakes)).item(), rel=1e-6)


def test_learning_rate_halves_when_m_global_stalls_down_to_the_floor():
    model = build_model("began", dict(resolution=8, channels=1, base_channels=4, lr=1e-4, lr_floor=3e-5,
                                      lr_window_kimg=0.032))
    optimizers = model.optimizers()
    lrs = []
    for step, m_real in enumerate([0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]):  # windows of 2 steps of 16 images
        losses = {"loss/L_real": t(m_real), "loss/L_fake": t(m_real * 0.5)}  # M_global = L(x) at equilibrium
        model.after_step(losses, StepContext(latents=None, schedule=Schedule(8, 16), images_seen=16 * step), optimizers)
        lrs.append(optimizers["D"].param_groups[0]["lr"])
    # window 1 (M 0.5): best; window 2 (0.4): improves; window 3 (0.4): stalls -> 5e-5; window 4: -> floor 3e-5
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 3e-5])
    assert optimizers["G"].param_groups[0]["lr"] == pytest.approx(3e-5)


def test_unknown_model_option_is_named():
    with pytest.raises(ValueError, match="--model-opt gammma: not an option of began"):
        build_model("began", dict(resolution=32, channels=3, gammma=0.5))
    with pytest.raises(ValueError, match="--gamma 1.5"):
        build_model("began", dict(resolution=32, channels=3, gamma=1.5))


def test_the_autoencoder_carries_its_input_from_the_first_step():
    """With PyTorch's default init the nine-layer ELU encoder gave nearly the same h for every image
    (spread 0.1% of its size), so D learned one fixed reconstruction; the reference's Glorot init does not."""
    torch.manual_seed(0)
    model = build_model("began", dict(resolution=32, channels=1, base_channels=32))
    images = torch.rand(64, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        h = model.D.encoder(images)
    assert h.std(0).mean() > 0.3 * h.abs().mean()


def test_pack_makes_d_judge_consecutive_images_stacked_along_the_channels():
    torch.manual_seed(0)
    model = build_model("began", dict(resolution=8, channels=3, base_channels=4, pack=2))
    reals = torch.rand(4, 3, 8, 8) * 2 - 1
    packed = model.pack(reals)
    assert packed.shape == (2, 6, 8, 8)
    assert torch.equal(packed[1, 3:], reals[3]) and torch.equal(packed[0, :3], reals[0])
    model.k_t.fill_(0.25)
    z = model.sample_latents(4)
    ctx = StepContext(latents=lambda n: z, schedule=Schedule(8, 4))
    fakes = model.pack(model.G(z))
    expected_d = reconstruction_loss(packed, model.D(packed)) - 0.25 * reconstruction_loss(fakes, model.D(fakes))
    assert model.loss("D", reals, None, ctx).loss.item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert model.visuals(reals)["reconstructions"].shape == (8, 3, 8, 8)  # (real, reconstruction) pairs
    assert model.encode(reals) is None  # D's code is of a pack, not of one image
    with pytest.raises(OptionError, match="pack=2: the batch per process \\(3\\)"):
        model.loss("D", reals[:3], None, ctx)
    with pytest.raises(OptionError, match="pack=0"):
        build_model("began", dict(resolution=8, channels=1, pack=0))


def test_denoise_gives_d_noisy_images_to_reconstruct_as_they_were():
    torch.manual_seed(0)
    model = build_model("began", dict(resolution=8, channels=1, base_channels=4, denoise=0.5))
    model.k_t.fill_(0.25)
    reals = torch.rand(4, 1, 8, 8) * 2 - 1
    z = model.sample_latents(4)
    ctx = StepContext(latents=lambda n: z, schedule=Schedule(8, 4), generator=torch.Generator().manual_seed(3))
    loss_d = model.loss("D", reals, None, ctx).loss.item()
    noise = torch.Generator().manual_seed(3)  # the run's generator draws the reals' noise, then the fakes'
    fakes = model.G(z)
    noisy_reals = reals + 0.5 * torch.randn(reals.shape, generator=noise)
    noisy_fakes = fakes + 0.5 * torch.randn(fakes.shape, generator=noise)
    expected = reconstruction_loss(reals, model.D(noisy_reals)) - 0.25 * reconstruction_loss(fakes, model.D(noisy_fakes))
    assert loss_d == pytest.approx(expected.item(), rel=1e-6)
    clean = reconstruction_loss(reals, model.D(reals)) - 0.25 * reconstruction_loss(fakes, model.D(fakes))
    assert abs(loss_d - clean.item()) > 1e-3
    with pytest.raises(OptionError, match="denoise=-0.1"):
        build_model("began", dict(resolution=8, channels=1, denoise=-0.1))
