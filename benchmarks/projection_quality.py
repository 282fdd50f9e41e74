"""How well `ganforge project` finds real images it never trained on, against the best of random samples.

    python benchmarks/projection_quality.py RUN [--images 20] [--steps 1000]

RUN: a class-conditional run trained on a subset of the built-in digits, such as the MNIST-500
runs of benchmarks/augment_gain.py (the first 50 digits of each class). The held-out images are
digits outside that subset (the 100th, 101st, ... of each class). For each, the projection (with
the digit's class) is compared with the best of 1,000 random samples of that class, picked by
PSNR: PSNR (dB, higher is closer) and MS-SSIM of both against the real image.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ganforge.data import load_dataset, to_float
from ganforge.explore import project, psnr
from ganforge.inference import load_model
from ganforge.metrics.msssim import ms_ssim
from ganforge.models.base import Condition


def similarity(images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target = target.expand(len(images), -1, -1, -1)
    return psnr(images, target), ms_ssim((images + 1) * 127.5, (target + 1) * 127.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=20, help="held-out digits, spread over the classes")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--random", type=int, default=1000, help="random samples per image for the baseline")
    args = parser.parse_args()
    model = load_model(args.run)
    digits = load_dataset("mnist", model.config["resolution"], 1)
    labels = digits.labels_tensor()
    rows = []
    for k in range(args.images):
        digit = k % 10
        index = (labels == digit).nonzero().flatten()[100 + k // 10].item()  # beyond the subset's first 50
        target = to_float(digits.images[index:index + 1])

        def condition(z: torch.Tensor) -> torch.Tensor:
            return model.generate(z, Condition(classes=torch.full((len(z),), digit)))

        start = time.time()
        found = project(model, target, condition, steps=args.steps, seed=k)
        seconds = time.time() - start
        with torch.no_grad():
            z = model.sampling_latents(args.random, generator=torch.Generator().manual_seed(10_000 + k))
            samples = torch.cat([condition(chunk) for chunk in z.split(250)]).clamp(-1, 1)
        p_rand, s_rand = similarity(samples, target)
        best = p_rand.argmax()
        p_proj, s_proj = similarity(found["image"], target)
        row = {"digit": digit, "index": index, "projected_psnr": round(p_proj.item(), 2),
               "projected_msssim": round(s_proj.item(), 4), "best_random_psnr": round(p_rand[best].item(), 2),
               "best_random_msssim": round(s_rand[best].item(), 4), "best_random_msssim_any": round(s_rand.max().item(), 4),
               "seconds": round(seconds, 1), "start": found["start"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    mean = {key: round(sum(r[key] for r in rows) / len(rows), 3) for key in rows[0] if key not in ("digit", "index", "start")}
    print(json.dumps({"images": len(rows), "steps": args.steps, "mean": mean}))


if __name__ == "__main__":
    main()
