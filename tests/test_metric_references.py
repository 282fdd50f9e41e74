"""Feature-space metrics pinned to independent reference implementations.

The literal numbers below were computed once, outside this repository, with reference packages
installed into a throwaway folder (`pip install --target /tmp/refpkgs --no-deps prdc==0.2
torch-fidelity`, giving prdc 0.2 and torch-fidelity 0.4.0, run with numpy 2.4.6, scikit-learn 1.9.1
and torch 2.14.1). Neither package is a dependency of ganforge and neither is imported here: the
test regenerates the same feature sets and compares ganforge against the recorded numbers.
"""

import numpy as np
import pytest
import torch

from ganforge.metrics import feature_metrics as fm


def _pair_a():
    """200 real and 200 fake 16-d features (the same arrays fed to prdc and torch-fidelity)."""
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (200, 16))
    fake = rng.normal(0.3, 1.2, (200, 16))
    return torch.from_numpy(real), torch.from_numpy(fake)


def _pair_b():
    """150 real and 120 fake 8-d features: unequal set sizes and a different dimension."""
    rng = np.random.default_rng(1)
    real = rng.normal(0, 1, (150, 8))
    fake = rng.normal(0.5, 0.8, (120, 8))
    return torch.from_numpy(real), torch.from_numpy(fake)


def test_features_are_float64_and_deterministic():
    real, fake = _pair_a()
    assert real.dtype == fake.dtype == torch.float64
    # guards against a silent change of numpy's default_rng stream, which would invalidate the literals below
    assert real[0, 0].item() == pytest.approx(0.1257302210933933, rel=1e-15)


# torch-fidelity 0.4.0, torch_fidelity.metric_kid.kid_features_to_metric(real, fake, kid_subsets=1,
# kid_subset_size=200, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None (-> 1/d),
# kid_kernel_poly_coef0=1, ...)["kernel_inception_distance_mean"]: one subset holding all 200 samples of each
# set, i.e. its unbiased MMD^2 (mmd_est="unbiased": diagonals dropped from K_XX and K_YY, K_XY averaged over
# all m*m pairs) with k(a, b) = (a.b / d + 1)^3 - the same kernel and estimator as ganforge's mmd2_unbiased.
TF_MMD2_PAIR_A = 0.5256246310953907
# torch-fidelity's mmd2 needs equally sized sets, so pair B (150 vs 120) was checked against an explicit
# double loop in plain numpy, written in the throwaway script:
#   sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1)) - 2 sum_{i, j} k(x_i, y_j) / (m n)
# (the same loop gave 0.5256246310953765 for pair A, agreeing with torch-fidelity to 3e-14 relative).
LOOP_MMD2_PAIR_B = 1.3840243260387077


def test_mmd2_unbiased_matches_torch_fidelity():
    assert fm.mmd2_unbiased(*_pair_a()) == pytest.approx(TF_MMD2_PAIR_A, rel=1e-12)


def test_mmd2_unbiased_matches_explicit_pair_loop_with_unequal_sizes():
    assert fm.mmd2_unbiased(*_pair_b()) == pytest.approx(LOOP_MMD2_PAIR_B, rel=1e-12)


# torch-fidelity 0.4.0, torch_fidelity.metric_kid.kernel_mmd(real[i1], fake[i2], kid_kernel="poly", degree 3,
# gamma None, coef0 1) on the three subset pairs that ganforge.kid(subsets=3, subset_size=100, seed=0) draws
# (torch.Generator().manual_seed(0); per subset i1 = randperm(200)[:100] then i2 = randperm(200)[:100]), then
# np.mean / np.std over the three values as torch-fidelity's kid_features_to_metric does. The subsets follow
# ganforge's own sampling scheme (torch-fidelity draws with np.random.RandomState), so this pins the per-subset
# MMD^2 and the mean/std aggregation, not the choice of subsets.
TF_KID_SUBSETS_PAIR_A = [0.5834461734661223, 0.7759610003575346, 0.5528991463733544]
TF_KID_MEAN_PAIR_A = 0.6374354400656704
TF_KID_STD_PAIR_A = 0.0987430279620887


def test_kid_matches_torch_fidelity_on_the_same_subsets():
    r = fm.kid(*_pair_a(), subsets=3, subset_size=100, seed=0)
    assert r["subset_size"] == 100
    assert r["kid"] == pytest.approx(TF_KID_MEAN_PAIR_A, rel=1e-12)
    assert r["kid_std"] == pytest.approx(TF_KID_STD_PAIR_A, rel=1e-10)
    one = fm.kid(*_pair_a(), subsets=1, subset_size=100, seed=0)
    assert one["kid"] == pytest.approx(TF_KID_SUBSETS_PAIR_A[0], rel=1e-12)


def test_kid_caps_subsets_at_half_the_smaller_set():
    """Not a reference value: ganforge's documented deviation from torch-fidelity.

    torch-fidelity uses kid_subset_size as given (one subset of all 200 samples gives TF_MMD2_PAIR_A);
    ganforge.kid caps the subset at half the smaller set, so asking for 200 draws subsets of 100 and a
    full-set KID through kid() is not available - compare mmd2_unbiased for the exact full-set value."""
    r = fm.kid(*_pair_a(), subsets=1, subset_size=200, seed=0)
    assert r["subset_size"] == 100
    assert r["kid"] == pytest.approx(TF_KID_SUBSETS_PAIR_A[0], rel=1e-12)
    assert r["kid"] != pytest.approx(TF_MMD2_PAIR_A, rel=1e-3)


# prdc 0.2, prdc.compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=5) on float64
# arrays. prdc's radii are the (k+1)-th smallest distance of each point to its own set (the point itself,
# at distance 0, is the first), as in ganforge, and prdc tests membership with a strict `<` where ganforge
# uses `<=`; on these sets no fake-to-real distance lies within 1e-4 of a radius, so the two agree exactly.
PRDC_PAIR_A = {"precision": 0.56, "recall": 0.955, "density": 0.319, "coverage": 0.63}
PRDC_PAIR_B = {"precision": 0.9166666666666666, "recall": 0.6733333333333333,
               "density": 1.0783333333333334, "coverage": 0.8}


@pytest.mark.parametrize("pair, expected", [(_pair_a, PRDC_PAIR_A), (_pair_b, PRDC_PAIR_B)], ids=["a", "b"])
def test_precision_recall_density_coverage_match_prdc(pair, expected):
    r = fm.precision_recall(*pair(), k=5)
    assert r["k"] == 5 and r["density_coverage_k"] == 5
    for name, value in expected.items():
        assert r[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    dc = fm.density_coverage(*pair(), k=5)
    assert dc["density"] == pytest.approx(expected["density"], rel=1e-12)
    assert dc["coverage"] == pytest.approx(expected["coverage"], rel=1e-12)
