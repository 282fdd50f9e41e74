"""Every model learns: a few hundred steps of a narrow network on the built-in digits must move its
samples toward the data, keep them varied and unsaturated, and keep the losses in a sane band.

A model that collapses (one image for every z), saturates (all black) or ignores the data fails
here in seconds; the long, independently judged runs are benchmarks/quality_cpu.py.
"""

import json

import pytest
import torch

from ganforge.data import load_dataset, to_float
from ganforge.inference import load_model
from ganforge.metrics.diversity import relative_diversity
from ganforge.models import build_model
from ganforge.training import TrainOptions, train
from ganforge.training.runlog import COLLAPSED

# Per model: options of a short run at 16x16; the band its logged losses must end in (BEGAN's
# reconstruction of reals must beat the pixel-wise median image, the L1 fixed point its autoencoder
# fell into when it ignored its input); how varied its samples must be (relative to
# reals, see ganforge.metrics.diversity); and how far the mean image must move toward the data's.
# BEGAN starts slowest (its diversity dips before it grows), so its bars are the lowest.
RUNS = {
    "cdcgan": (dict(data="mnist", batch=32, kimg=4, model_opts={"base_channels": 16}),
               {"loss/G": (0.1, 6.0), "loss/D_real": (0.01, 3.0)}, COLLAPSED, 0.7),
    "began": (dict(data="mnist", batch=16, kimg=6, model_opts={"base_channels": 16, "gamma": 1.0, "lambda_k": 0.01}),
              {"loss/L_real": (0.0, "median")}, 0.1, 0.8),
    "pggan": (dict(data="mnist", batch=32, kimg=3,
                   model_opts={"preset": "cpu", "fade_kimg": 0.5, "stab_kimg": 0.5, "fmap_max": 32}),
              {"loss/D_wdist": (-5.0, 20.0)}, COLLAPSED, 0.7),
    "dfgan": (dict(data="mnist-captions", batch=32, kimg=6, model_opts={"nf": 8}),
              {"loss/D_hinge": (0.2, 2.5), "loss/G": (-3.0, 4.0)}, COLLAPSED, 0.7),
}


def samples(model, n=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    z = model.sample_latents(n, generator=g)
    condition = model.grid_conditions(8, n // 8)
    with torch.no_grad():
        return model.generate(z, condition).float()


def distance_to_data(fakes, reals):
    """RMS difference between the mean generated and the mean real image (same size)."""
    if reals.shape[-1] != fakes.shape[-1]:
        reals = torch.nn.functional.adaptive_avg_pool2d(reals, fakes.shape[-2:])
    return (fakes.clamp(-1, 1).mean(0) - reals.mean(0)).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_run_learns(tmp_path, name):
    options, bands, min_diversity, max_distance_ratio = RUNS[name]
    run = train(TrainOptions(model=name, resolution=16, tick=0.5, sample_every=100, snap=100, seed=1,
                             outdir=str(tmp_path), **options), progress=False)
    trained = load_model(run)
    dataset = load_dataset(options["data"], 16)
    # The same model before training: its own initial G, everything else (PGGAN's grown size, DF-GAN's
    # text scaling) as trained, so only what G learned differs.
    untrained = build_model(name, trained.config).eval()
    untrained.load_state_dict({k: v for k, v in trained.state_dict().items() if k.split(".")[0] not in ("G", "G_ema")},
                              strict=False)
    if name == "dfgan":
        trained.prepare(dataset, "cpu", resumed=True)
        untrained.prepare(dataset, "cpu", resumed=True)
    reals = to_float(dataset.images[:512])

    fakes = samples(trained)
    before, after = distance_to_data(samples(untrained), reals), distance_to_data(fakes, reals)
    diversity = relative_diversity(fakes, reals)
    last = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    print(f"{name}: mean-image distance {before:.3f} -> {after:.3f}, diversity {diversity:.2f}, "
          + ", ".join(f"{k} {last[k]:.4g}" for k in bands))
    saturated = (fakes.abs() >= 0.999).float().mean().item()
    assert saturated < 0.9, f"{saturated:.0%} of pixels at the ends of the range"
    assert fakes.flatten(1).std(1).min() > 0.05, "a constant image"
    assert diversity > min_diversity, "samples nearly identical"
    assert after < max_distance_ratio * before, "samples did not move toward the data"
    median = (reals - reals.median(0).values).abs().mean().item()
    for key, (low, high) in bands.items():
        high = median if high == "median" else high
        assert low < last[key] < high, f"{key} {last[key]:.4g} outside ({low}, {high:.4g})"
    if name == "began":  # its convergence measure falls, and k_t moves and stays clipped to [0, 1]
        rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
        m, k = [r["began/m_global"] for r in rows], [r["began/k_t"] for r in rows]
        assert m[-1] < 0.6 * m[0], m
        assert all(0 <= v <= 1 for v in k) and max(k) > 0, k
        assert (run / "reconstructions000000.png").exists() and (run / "stats.png").exists()
