"""Metrics on feature vectors: FID, KID, Inception score, improved precision and recall.

Each takes features (or logits) as tensors, so each is checked on hand-made cases without any network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganforge.errors import require


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.double().cpu().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


@dataclass
class Moments:
    """Count, mean and summed outer products of deviations of feature vectors, merged batch by batch
    (Chan et al.'s pairwise update, which stays exact where sums of squares would cancel): FID's
    Gaussian statistics in memory independent of the number of images."""

    count: int = 0
    mean: torch.Tensor | None = None  # [d] float64
    m2: torch.Tensor | None = None    # [d, d] float64

    @staticmethod
    def of(features: torch.Tensor) -> "Moments":
        f = features.double().cpu()
        mean = f.mean(dim=0)
        centred = f - mean
        return Moments(len(f), mean, centred.T @ centred)

    def merge(self, other: "Moments") -> "Moments":
        if other.count == 0 or self.count == 0:
            return other if self.count == 0 else self
        n = self.count + other.count
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.count / n),
                       self.m2 + other.m2 + torch.outer(delta, delta) * (self.count * other.count / n))

    def gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance, as gaussian_stats gives them for the whole set at once."""
        return self.mean.numpy(), (self.m2 / (self.count - 1)).numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two Gaussians."""
    require("scipy", "metrics", "FID (a matrix square root)")
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference FID code does
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (the KID kernel)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel inception distance: mean (and std) of unbiased MMD^2 over random subsets.

    Subsets hold `subset_size` features (the reference's 1,000), or half the smaller set when that
    is fewer, so that the subsets differ and their spread (kid_std) means something."""
    size = min(subset_size, max(2, min(len(real), len(fake)) // 2))
    g = torch.Generator().manual_seed(seed)
    values = [mmd2_unbiased(real[torch.randperm(len(real), generator=g)[:size]].double(),
                            fake[torch.randperm(len(fake), generator=g)[:size]].double()) for _ in range(subsets)]
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)), "subset_size": size}


def inception_score(logits: torch.Tensor, splits: int = 10) -> dict:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over splits."""
    p = torch.softmax(logits.double(), dim=1)
    scores = []
    for part in p.chunk(splits):
        py = part.mean(dim=0, keepdim=True)
        kl = (part * (torch.log(part + 1e-12) - torch.log(py + 1e-12))).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores))}


def _kth_neighbour_radii(x: torch.Tensor, k: int, batch: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for chunk in x.split(batch):
        d = torch.cdist(chunk, x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """For each point: inside at least one ball (centre, radius)?"""
    return torch.cat([(torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1) for chunk in points.split(batch)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each set's points."""
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _kth_neighbour_radii(real, k)).double().mean().item()
    recall = _covered(real, fake, _kth_neighbour_radii(fake, k)).double().mean().item()
    return {"precision": precision, "recall": recall, "k": k, **density_coverage(real, fake)}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5, batch: int = 1000) -> dict:
    """Density and coverage (Naeem et al. 2020), with the paper's k = 5 balls around the reals only.

    density = how many real balls hold each fake, on average, divided by k (about 1 when fakes are
    distributed like reals; above 1 where they crowd); coverage = fraction of real balls holding a fake."""
    real, fake = real.double(), fake.double()
    radii = _kth_neighbour_radii(real, k)
    inside = torch.cat([torch.cdist(chunk, real) <= radii[None, :] for chunk in fake.split(batch)])  # [fake, real]
    return {"density": inside.sum().item() / (k * len(fake)), "coverage": inside.any(dim=0).double().mean().item(),
            "density_coverage_k": k}
