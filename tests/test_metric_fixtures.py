"""SWD and MS-SSIM against the official PGGAN code (tkarras/progressive_growing_of_gans,
metrics/sliced_wasserstein.py and metrics/ms_ssim.py, numpy 2.4.6, scipy 1.17.1).

The reference numbers were computed once by running that code on the inputs below and are kept
here as literals; the official code is not part of ganforge. Inputs are made deterministically
with numpy (PCG64 for content, the legacy RandomState for the projection directions, as the
official code draws them), so nothing is stored but this file.
"""

import numpy as np
import pytest
import torch

from ganforge.metrics.msssim import ms_ssim
from ganforge.metrics.swd import laplacian_pyramid, normalize_descriptors, sliced_wasserstein


def fixture_images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Structured uint8 images [N, C, H, W]: a random sinusoid per channel plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size))
    for i in range(n):
        for c in range(channels):
            fx, fy = rng.uniform(0.5, 4.0, 2)
            phase = rng.uniform(0, 2 * np.pi)
            out[i, c] = 127.5 + 90 * np.sin(2 * np.pi * (fx * x + fy * y) + phase) + rng.normal(0, 25, (size, size))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def degraded_pairs(size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Six pairs from identical to heavily noised (noise sigma 0..90), the fourth also shifted a pixel."""
    a = fixture_images(6, size, channels, seed)
    rng = np.random.default_rng(seed + 100)
    noise = np.array([0, 5, 15, 30, 60, 90])[:, None, None, None]
    b = np.clip(np.round(a + rng.normal(0, 1, a.shape) * noise), 0, 255).astype(np.uint8)
    b[3] = np.roll(b[3], 1, axis=-1)
    return a, b


# msssim(a[i:i+1], b[i:i+1]) of the official code (NHWC), pair by pair.
OFFICIAL_MS_SSIM = {
    (32, 3): [1.0, 0.9993024498850948, 0.9896928984411222, 0.8207081641438067, 0.8687782138466656, 0.8128613364672754],
    (64, 1): [1.0, 0.9992153365932663, 0.9903156234737723, 0.8838058465700344, 0.862893199478705, 0.8491175679479079],
}


@pytest.mark.parametrize("size,channels", list(OFFICIAL_MS_SSIM))
def test_ms_ssim_equals_the_official_code_pair_by_pair(size, channels):
    a, b = degraded_pairs(size, channels, seed=1)
    ours = ms_ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    torch.testing.assert_close(ours.double(), torch.tensor(OFFICIAL_MS_SSIM[(size, channels)], dtype=torch.float64),
                               rtol=0, atol=1e-5)  # the official code convolves in float32 (FFT)


# generate_laplacian_pyramid(fixture_images(4, 64, 3, seed=3) as float32, 3): per level the mean
# absolute value, the standard deviation, and the value at [1, 2, 5, 7].
OFFICIAL_PYRAMID = [(19.703153610229492, 24.476966857910156, -12.404296875),
                    (18.811643600463867, 22.943761825561523, 26.157180786132812),
                    (127.76678466796875, 50.158321380615234, 151.90065002441406)]


def test_laplacian_pyramid_equals_the_official_code():
    levels = laplacian_pyramid(torch.from_numpy(fixture_images(4, 64, 3, seed=3)).float())
    assert [tuple(level.shape[-2:]) for level in levels] == [(64, 64), (32, 32), (16, 16)]
    for level, (mean_abs, std, value) in zip(levels, OFFICIAL_PYRAMID):
        assert level.abs().mean().item() == pytest.approx(mean_abs, rel=1e-5)
        assert level.std(unbiased=False).item() == pytest.approx(std, rel=1e-5)
        assert level[1, 2, 5, 7].item() == pytest.approx(value, abs=1e-4)


def test_descriptor_normalisation_and_sliced_wasserstein_equal_the_official_code():
    """finalize_descriptors on two descriptor sets, then sliced_wasserstein(A, B, 4, 128) after
    np.random.seed(1234): the directions are drawn here the same way and handed over."""
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, (512, 3, 7, 7)).astype(np.float32) * np.float32([1, 2, 3])[None, :, None, None] + 5
    b = rng.normal(0.2, 1.3, (512, 3, 7, 7)).astype(np.float32)
    a, b = normalize_descriptors(torch.from_numpy(a)), normalize_descriptors(torch.from_numpy(b))
    assert a[3, 17].item() == pytest.approx(0.8787288069725037, rel=1e-5)
    assert b[100, 146].item() == pytest.approx(-0.10743886977434158, rel=1e-5)
    np.random.seed(1234)
    directions = [torch.from_numpy(np.random.randn(147, 128)) for _ in range(4)]
    assert sliced_wasserstein(a, b, projections=directions) == pytest.approx(0.07810911536216736, rel=1e-5)
