"""Differentiable augmentation of D's inputs (ganforge.augment) and its use by every model and the loop."""

import json

import pytest
import torch

from ganforge.augment import ADA_INTERVAL, Augmenter, _transform, augment, ops_mask
from ganforge.data import load_dataset
from ganforge.models import Schedule, StepContext, build_model
from ganforge.snapshots import load_snapshot
from ganforge.training import TrainingError, TrainOptions, train
from ganforge.training.options import check_resume, resolve_augment

TRANSFORMS = ["brightness", "saturation", "contrast", "translation", "cutout"]


def images(n=8, channels=3, size=16, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def only(name: str, x: torch.Tensor) -> torch.Tensor:
    """x with one transform applied to every image, the random draws fixed by a seed."""
    n, size = x.shape[0], x.shape[-1]
    apply = torch.zeros(n, 5, dtype=torch.bool)
    apply[:, TRANSFORMS.index(name)] = True
    g = torch.Generator().manual_seed(1)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    corners = torch.randint(0, size // 2 + 1, (n, 2), generator=g)
    return _transform(x, apply, torch.rand(n, 3, generator=g), shifts, corners, size // 2)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_differentiable_keeps_shape_and_range_and_changes_images(name):
    fakes = images().mul(0.9).requires_grad_(True)  # as G's tanh output: inside the range
    out = only(name, fakes)
    assert out.shape == fakes.shape and out.dtype == fakes.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, fakes)
    (out * torch.randn_like(out)).sum().backward()
    assert fakes.grad is not None and fakes.grad.abs().sum() > 0


def test_translation_moves_pixels_and_fills_with_zero():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 5, 7] = 1.0
    apply = torch.tensor([[False, False, False, True, False]])
    out = _transform(x, apply, torch.zeros(1, 3), torch.tensor([[2, -1]]), torch.zeros(1, 2, dtype=torch.long), 8)
    assert out[0, 0, 4, 9] == 1.0 and out.sum() == 1.0  # dy = -1, dx = +2
    edge = _transform(torch.ones(1, 1, 16, 16), apply, torch.zeros(1, 3), torch.tensor([[2, 0]]),
                      torch.zeros(1, 2, dtype=torch.long), 8)
    assert (edge[0, 0, :, :2] == 0).all() and (edge[0, 0, :, 2:] == 1).all()


def test_cutout_zeroes_a_square_half_the_side():
    apply = torch.tensor([[False, False, False, False, True]])
    out = _transform(torch.ones(1, 3, 16, 16), apply, torch.zeros(1, 3), torch.zeros(1, 2, dtype=torch.long),
                     torch.tensor([[4, 2]]), 8)
    assert (out[:, :, 2:10, 4:12] == 0).all() and out.sum() == 3 * (256 - 64)


def test_p_zero_is_the_identity_and_p_one_changes_every_image():
    x = images()
    (same,) = augment((x,), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    (changed,) = augment((x,), 1.0, torch.Generator().manual_seed(0))
    assert all(not torch.equal(a, b) for a, b in zip(changed, x))


def test_chosen_augmentations_apply_alone():
    x = images(channels=1).mul(0.9)
    (cut,) = augment((x,), 1.0, torch.Generator().manual_seed(0), ops_mask(("cutout",)))
    zeroed = cut == 0
    assert torch.equal(torch.where(zeroed, x, cut), x)  # every pixel kept or cut out
    assert (zeroed.flatten(1).sum(1) == 8 * 8).all()  # an 8x8 square in each 16x16 image, nothing else
    (coloured,) = augment((x,), 1.0, torch.Generator().manual_seed(0), ops_mask(("color",)))
    assert all(not torch.equal(a, b) for a, b in zip(coloured, x))
    for before, after in zip(x.flatten(1), coloured.flatten(1)):  # brightness and contrast: nothing moves
        assert (after[before.argsort()].diff() >= 0).all()


def test_images_no_transform_touches_come_back_as_they_were_even_out_of_range():
    """A linear-output G's fakes may leave [-1, 1]: untouched, D must see them as they are (they were
    clamped once, and BEGAN's G drifted out of range unseen)."""
    fakes = images() * 3  # far outside the data's range
    (same,) = augment((fakes,), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, fakes)
    (some,) = augment((fakes,), 0.1, torch.Generator().manual_seed(1))
    touched = [not torch.equal(a, b) for a, b in zip(some, fakes)]
    assert any(touched) and not all(touched)
    assert all(some[i].abs().max() <= 1 for i, t in enumerate(touched) if t)  # augmented: back in range


def test_one_draw_for_batches_a_penalty_mixes():
    """Row i of reals and of fakes gets the same transforms, so their mix is the augmented mix."""
    reals, fakes = images(seed=1) * 0.1, images(seed=2) * 0.1  # far inside the range: no clamping
    mix = torch.rand(8, 1, 1, 1)
    aug_reals, aug_fakes = augment((reals, fakes), 1.0, torch.Generator().manual_seed(4))
    (aug_mix,) = augment((torch.lerp(reals, fakes, mix),), 1.0, torch.Generator().manual_seed(4))
    assert torch.allclose(torch.lerp(aug_reals, aug_fakes, mix), aug_mix, atol=1e-6)


def test_the_draws_come_from_the_given_generator_only():
    x = images()
    torch.manual_seed(0)
    a = augment((x,), 0.5, torch.Generator().manual_seed(9))
    torch.manual_seed(1)  # the global RNG does not matter
    b = augment((x,), 0.5, torch.Generator().manual_seed(9))
    c = augment((x,), 0.5, torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def scripted(augmenter: Augmenter, sign: float, steps: int, batch: int = 64) -> list[float]:
    """p after each step when D scores every real with this sign (fraction of reals judged real: 1 or 0)."""
    ps = []
    for _ in range(steps):
        augmenter.observe(torch.full((batch,), sign), batch)
        ps.append(augmenter.p.item())
    return ps


def test_ada_raises_p_when_d_is_sure_of_the_reals_and_lowers_it_when_not():
    ada = Augmenter("ada", torch.device("cpu"), seed=0, ada_kimg=1.0)
    up = scripted(ada, 1.0, 8)
    # Every ADA_INTERVAL steps, p moves by batch * interval / (ada_kimg * 1000) = 0.256.
    assert up[ADA_INTERVAL - 2] == 0.0 and up[ADA_INTERVAL - 1] == pytest.approx(0.256)
    assert up[-1] == pytest.approx(0.512)
    down = scripted(ada, -1.0, 4)
    assert down[-1] == pytest.approx(0.256)
    assert scripted(ada, -1.0, 40)[-1] == 0.0  # never below 0
    assert scripted(ada, 1.0, 80)[-1] == 1.0  # nor above 1
    mixed = Augmenter("ada", torch.device("cpu"), seed=0, ada_kimg=1.0)
    for _ in range(ADA_INTERVAL):  # 50% of reals judged real, under the 0.6 target
        mixed.observe(torch.tensor([1.0, -1.0] * 32), 64)
    assert mixed.p.item() == 0.0


def test_fixed_p_and_diffaug_do_not_adapt():
    for augmenter, p in [(Augmenter("diffaug", torch.device("cpu"), 0), 1.0),
                         (Augmenter("ada", torch.device("cpu"), 0, p=0.3), 0.3)]:
        assert scripted(augmenter, 1.0, 12)[-1] == pytest.approx(p)
    assert Augmenter("none", torch.device("cpu"), 0).observe(torch.ones(4), 4) == {}


CONFIGS = {"cdcgan": dict(num_classes=10, base_channels=4), "began": dict(base_channels=4),
           "pggan": dict(preset="cpu", fmap_max=8), "dfgan": dict(nf=4)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_model_shows_d_only_augmented_images_and_reports_its_verdict_on_reals(name):
    """An augmentation that returns NaN images poisons every phase's loss: D saw nothing else."""
    model = build_model(name, dict(resolution=16, channels=1, **CONFIGS[name]))
    if name == "dfgan":
        model.prepare(load_dataset("mnist-captions", 16), "cpu", resumed=False)
    calls = []

    def poison(*batches):
        calls.append(len(batches))
        return tuple(torch.full_like(b, float("nan")) for b in batches)

    sched = Schedule(16, 4, alpha=0.5, stage="16")
    ctx = StepContext(latents=lambda n: model.sample_latents(n), schedule=sched, indices=torch.arange(4),
                      generator=torch.Generator().manual_seed(0), augment=poison)
    condition = model.training_condition(torch.arange(4) % 10, ctx)
    outs = {phase.name: model.loss(phase.name, torch.rand(4, 1, 16, 16) * 2 - 1, condition, ctx)
            for phase in model.phases()}
    assert all(torch.isnan(out.loss) for out in outs.values()), outs
    assert calls == [2, 1]  # reals and fakes in one draw, then G's fakes
    assert outs["D"].real_scores is not None and outs["D"].real_scores.shape == (4,)


TINY = dict(data="mnist", resolution=16, batch=16, model_opts={"base_channels": 4}, tick=0.064, sample_every=0.128,
            snap=0.064)


def test_auto_means_ada_below_30000_images_and_is_recorded(tmp_path):
    assert resolve_augment(TrainOptions(), 29_999).augment == "ada"
    assert resolve_augment(TrainOptions(), 30_000).augment == "none"
    assert resolve_augment(TrainOptions(augment="none"), 10).augment == "none"
    assert resolve_augment(TrainOptions(augment_p=0.2), 10**6).augment == "diffaug"
    run = train(TrainOptions(**TINY, kimg=0.032, outdir=str(tmp_path)), progress=False)
    assert json.loads((run / "training_options.json").read_text())["augment"] == "ada"  # MNIST: 5,000 images
    assert "augmentation: ada (color, translation, cutout), p from 0" in (run / "log.txt").read_text()


def test_runs_from_before_augmentation_resume_without_it():
    saved = TrainOptions(**TINY).to_json()
    del saved["augment"]
    assert check_resume(TrainOptions(), saved, set(), "run").augment == "none"


@pytest.mark.parametrize("mode", ["ada", "diffaug"])
def test_resume_with_augmentation_is_bit_for_bit_and_p_is_logged_and_saved(tmp_path, mode):
    opts = {**TINY, "augment": mode, "ada_kimg": 0.5}
    straight = train(TrainOptions(**opts, kimg=0.256, outdir=str(tmp_path / "a")), progress=False)
    first = train(TrainOptions(**opts, kimg=0.128, outdir=str(tmp_path / "b")), progress=False)
    resumed = train(TrainOptions(**opts, kimg=0.256), resume=str(first), explicit={"kimg"}, progress=False)
    a, b = load_snapshot(straight), load_snapshot(resumed)
    for key in ("state", "augment", "rng"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert (torch.equal(a[key][k], b[key][k]) if isinstance(a[key][k], torch.Tensor) else a[key][k] == b[key][k]), k
    rows = [json.loads(line) for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert all("augment/p" in r for r in rows)
    if mode == "ada":  # D is sure of MNIST's reals from the start: p rises, step by step
        assert 0 < a["augment"]["p"] <= 1 and rows[-1]["augment/p"] > rows[0]["augment/p"]
    else:
        assert a["augment"]["p"] == 1.0


def test_augment_p_must_be_a_probability_with_augmentation_on(tmp_path):
    with pytest.raises(TrainingError, match="--augment-p 1.5"):
        train(TrainOptions(**TINY, kimg=0.016, augment_p=1.5, outdir=str(tmp_path)), progress=False)
    with pytest.raises(TrainingError, match="--augment-p 0.5"):
        train(TrainOptions(**TINY, kimg=0.016, augment="none", augment_p=0.5, outdir=str(tmp_path)), progress=False)


def test_augment_ops_are_checked_by_name(tmp_path):
    with pytest.raises(TrainingError, match="--augment-ops color,blur: a comma list of color, translation, cutout"):
        train(TrainOptions(**TINY, kimg=0.016, augment_ops=["color", "blur"], outdir=str(tmp_path)), progress=False)
