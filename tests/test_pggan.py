import math

import pytest
import torch
import torch.nn.functional as F

from ganforge.losses import gradient_penalty
from ganforge.models import build_model, parameter_count
from ganforge.models.pggan import (EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm, crossfade_reals,
                                   nf)
from ganforge.training import TrainingError, TrainOptions, train
from ganforge.snapshots import load_snapshot

SMALL = dict(fmap_base=4096, fmap_max=16)  # narrow networks for fast CPU tests; layer structure unchanged


def small(resolution, **kw):
    return build_model("pggan", dict(resolution=resolution, channels=3, **SMALL, **kw))


def test_pixel_norm_hand_computed():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # mean of squares 12.5
    expected = torch.tensor([3.0, 4.0]) / math.sqrt(12.5 + 1e-8)
    assert torch.allclose(PixelNorm()(x).flatten(), expected)


def test_minibatch_stddev_hand_computed():
    x = torch.tensor([0.0, 0.0, 2.0, 4.0]).view(4, 1, 1, 1)
    # groups of 2 take samples i and i + 2: {0, 2} -> std 1, {0, 4} -> std 2, each repeated for its members
    out = MinibatchStdDev(group_size=2)(x)
    assert out.shape == (4, 2, 1, 1)
    assert torch.allclose(out[:, 1].flatten(), torch.tensor([1.0, 2.0, 1.0, 2.0]), atol=1e-4)
    # one group of 4: population std of (0, 0, 2, 4) = sqrt(2.75)
    assert torch.allclose(MinibatchStdDev(4)(x)[:, 1].flatten(), torch.full((4,), math.sqrt(2.75)), atol=1e-4)
    # a batch the group does not divide (14, groups of 4) uses the largest divisor (groups of 2) and still works
    assert MinibatchStdDev(4)(torch.randn(14, 3, 4, 4)).shape == (14, 4, 4, 4)
    assert MinibatchStdDev(16)(torch.randn(3, 3, 4, 4)).shape == (3, 4, 4, 4)


def test_equalized_learning_rate_scales_at_run_time():
    torch.manual_seed(0)
    conv = EqualizedConv2d(64, 32, 3)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.05) and conv.bias.abs().sum() == 0
    x = torch.randn(2, 64, 5, 5)
    expected = F.conv2d(x, conv.weight * math.sqrt(2) / math.sqrt(64 * 9), conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    dense = EqualizedLinear(512, 8192, gain=math.sqrt(2) / 4)
    assert dense.scale == pytest.approx(math.sqrt(2) / 4 / math.sqrt(512))
    assert EqualizedConv2d(16, 3, 1, gain=1.0).scale == pytest.approx(1 / 4)  # toRGB


def test_fused_resampling_is_the_same_function():
    torch.manual_seed(0)
    up, down = EqualizedConv2d(5, 7, 3, resample="up"), EqualizedConv2d(5, 7, 3, resample="down")
    for fused, ref_of in ((up, lambda c, x: c(F.interpolate(x, scale_factor=2.0, mode="nearest"))),
                          (down, lambda c, x: F.avg_pool2d(c(x), 2))):
        plain = EqualizedConv2d(5, 7, 3)
        plain.weight, plain.bias = fused.weight, torch.nn.Parameter(torch.randn(7))
        fused.bias = plain.bias
        x = torch.randn(2, 5, 8, 8)
        torch.testing.assert_close(fused(x), ref_of(plain, x), atol=1e-5, rtol=1e-5)


def test_feature_maps_and_parameter_counts_at_1024():
    assert [nf(s) for s in range(1, 10)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    model = build_model("pggan", dict(resolution=1024, channels=3))
    ch = {4 * 2 ** i: nf(i + 1) for i in range(9)}
    g = (512 * 8192 + 8192) + (512 * 512 * 9 + 512) + sum(c * 3 + 3 for c in ch.values())
    g += sum(ch[r // 2] * ch[r] * 9 + ch[r] + ch[r] * ch[r] * 9 + ch[r] for r in list(ch)[1:])
    d = sum(3 * c + c for c in ch.values()) + (513 * 512 * 9 + 512) + (512 * 16 * 512 + 512) + (512 + 1)
    d += sum(ch[r] * ch[r] * 9 + ch[r] + ch[r] * ch[r // 2] * 9 + ch[r // 2] for r in list(ch)[1:])
    assert parameter_count(model.G) == g == 23_086_795
    assert parameter_count(model.D) == d == 23_087_249


@pytest.mark.parametrize("resolution", [8, 32, 128])
def test_shapes_at_every_grown_resolution(resolution):
    model = small(resolution)
    z = torch.randn(4, 512)
    res = 4
    while res <= resolution:
        for alpha in (0.3, 1.0):
            images = model.G(z, None, res, alpha)
            assert images.shape == (4, 3, res, res)
            assert model.D(images, alpha).shape == (4, 1)
        res *= 2


def test_fade_in_starts_as_the_previous_resolution():
    torch.manual_seed(0)
    model = small(16)
    z = torch.randn(3, 512)
    low = model.G(z, None, 8, 1.0)
    assert torch.allclose(model.G(z, None, 16, 0.0), F.interpolate(low, scale_factor=2.0, mode="nearest"), atol=1e-6)
    images = torch.randn(3, 3, 16, 16)
    assert torch.allclose(model.D(images, 0.0), model.D(F.avg_pool2d(images, 2), 1.0), atol=1e-5)
    assert not torch.allclose(model.D(images, 0.5), model.D(images, 1.0))


def test_reals_are_crossfaded_like_the_networks():
    x = torch.randn(2, 3, 32, 32)
    at16 = F.avg_pool2d(x, 2)
    assert torch.allclose(crossfade_reals(x, 16, 1.0), at16, atol=1e-6)
    low = F.interpolate(F.avg_pool2d(at16, 2), scale_factor=2.0, mode="nearest")
    assert torch.allclose(crossfade_reals(x, 16, 0.0), low, atol=1e-6)
    assert torch.allclose(crossfade_reals(x, 16, 0.25), 0.75 * low + 0.25 * at16, atol=1e-6)


def test_gradient_penalty_hand_computed():
    w = torch.tensor([2.0, 0.0, 2.0, 1.0])  # a linear critic: its gradient is w everywhere, norm 3
    penalty = gradient_penalty(lambda x: (x.flatten(1) * w).sum(1), torch.randn(5, 1, 2, 2))
    assert penalty.item() == pytest.approx((3.0 - 1.0) ** 2)


def test_schedules_of_the_presets():
    v1 = build_model("pggan", dict(resolution=256, channels=3, preset="v1", **SMALL))
    s = v1.schedule(0, None, 256)
    assert (s.resolution, s.alpha, s.batch) == (4, 1.0, 16)
    s = v1.schedule(800_000 + 400_000, None, 256)
    assert (s.resolution, s.alpha, s.period) == (8, 0.5, "0008-fade")
    s = v1.schedule(800_000 + 1_000_000, None, 256)
    assert (s.resolution, s.alpha, s.period) == (8, 1.0, "0008-stable")
    s = v1.schedule(800_000 + 5 * 1_600_000 + 200_000, None, 256)
    assert (s.resolution, s.alpha, s.batch) == (256, 0.25, 14)
    assert v1.schedule(19_000_000, None, 256).resolution == 256 and v1.schedule(19_000_000, None, 256).alpha == 1.0
    v2 = build_model("pggan", dict(resolution=1024, channels=3, **SMALL))
    assert [v2.schedule(600_000 + 1_200_000 * i, None, 1024).batch for i in range(8)] == [128, 128, 64, 32, 16, 8, 4, 4]
    full = v2.schedule(12_000_000, None, 1024)
    assert (full.resolution, full.alpha) == (1024, 1.0)
    assert v2.optimizers(full)["G"].param_groups[0]["lr"] == 0.0015
    assert v2.optimizers(v2.schedule(0, None, 1024))["D"].param_groups[0]["betas"] == (0.0, 0.99)
    assert v2.schedule(0, 32, 1024).batch == 32  # an explicit --batch holds at every resolution


TINY = dict(model="pggan", data="mnist", resolution=8, batch=8, tick=0.032, sample_every=0.064, snap=0.064,
            model_opts=dict(fade_kimg=0.064, stab_kimg=0.032, **SMALL))


def test_growth_run_resumes_mid_fade_bit_for_bit_and_resets_adam(tmp_path):
    # 4x4 for 32 images, then 8x8 fades in over 64: stopping at 64 images is the middle of the fade
    straight = train(TrainOptions(**TINY, kimg=0.16, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path / "b")), progress=False)
    snap = load_snapshot(first)
    assert snap["stage"] == "8" and 0 < snap["state"]["grown_alpha"] < 1
    # Adam was reset at the new resolution: 4 steps at 4x4, then 4 at 8x8
    assert all(s["step"].item() == 4 for s in snap["optimizers"]["G"]["state"].values())
    train(TrainOptions(**TINY, kimg=0.16), resume=str(first), explicit={"kimg"}, progress=False)
    a, b = load_snapshot(straight), load_snapshot(first)
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    names = {p.name for p in straight.iterdir()}
    assert {"period-0004-stable.png", "period-0008-fade.png", "period-0008-stable.png", "growth.png"} <= names


def test_sampling_at_reached_resolutions_only(tmp_path):
    from ganforge.inference import load_model

    run = train(TrainOptions(**TINY, kimg=0.064, outdir=str(tmp_path)), progress=False)
    model = load_model(run)
    z = torch.randn(2, 512)
    assert model.generate(z).shape == (2, 1, 8, 8)
    assert model.generate(z, resolution=4).shape == (2, 1, 4, 4)
    run2 = train(TrainOptions(**TINY, kimg=0.016, outdir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match="only grown to 4x4"):
        load_model(run2).generate(z, resolution=8)


def test_conditional_pggan_has_an_ac_gan_head():
    model = build_model("pggan", dict(resolution=8, channels=1, num_classes=10, conditional=True, **SMALL))
    images = model.G(torch.randn(3, 512), torch.tensor([1, 2, 3]), 8, 1.0)
    assert model.D(images).shape == (3, 11)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="--resolution 2048"):
        build_model("pggan", dict(resolution=2048, channels=3))
    with pytest.raises(TrainingError, match="smallest side 28"):
        train(TrainOptions(**{**TINY, "resolution": 32}, kimg=0.01, outdir=str(tmp_path)), progress=False)


def test_onnx_export_samples_the_grown_state(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from ganforge.inference import export

    model = small(16).eval()
    model.grown_resolution.fill_(8)
    model.grown_alpha.fill_(0.5)  # mid-fade: the export must keep the blend
    export(model, "onnx", tmp_path / "g.onnx")
    z = torch.randn(3, 512)
    (out,) = onnxruntime.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"z": z.numpy()})
    assert out.shape == (3, 3, 8, 8)
    torch.testing.assert_close(torch.from_numpy(out), model.generate(z), atol=1e-4, rtol=1e-4)


def test_small_images_are_refused_from_their_headers_before_any_decoding(tmp_path, monkeypatch):
    from PIL import Image

    from ganforge.data import ImageDataset
    from ganforge.training import TrainOptions, TrainingError, train

    for i in range(5):
        Image.new("RGB", (64, 64) if i != 3 else (40, 48), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")

    def no_decoding(self, i):
        raise AssertionError("decoded an image before checking sizes")

    monkeypatch.setattr(ImageDataset, "decode", no_decoding)
    opts = TrainOptions(model="pggan", data=str(tmp_path), resolution=64, kimg=0.01, outdir=str(tmp_path / "runs"))
    with pytest.raises(TrainingError, match=r"3\.png in --data .* is smaller \(40x48 px\); pggan would learn upscaling"):
        train(opts, progress=False)
    assert not (tmp_path / "runs").exists()
