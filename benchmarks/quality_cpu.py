"""Does every model learn? Each model's CPU recipe (README, "Does it learn?"), judged independently.

    python benchmarks/quality_cpu.py                        # every recipe, about an hour on 2 cores
    python benchmarks/quality_cpu.py --models dfgan,began
    python benchmarks/quality_cpu.py --models pggan --emoji DIR       # PGGAN needs an RGB image folder
    python benchmarks/quality_cpu.py --judge dfgan=runs/00003-dfgan-mnist-captions   # judge a finished run

Each recipe is run with the `ganforge train` command a user would type, then judged by something
the GAN never saw, built here from the data at hand (nothing is downloaded):
- digits (cdcgan, dfgan, began): a CNN trained on the real digits (its held-out accuracy printed).
  cdcgan: it reads the requested class; dfgan: it reads the digit named in the prompt "a handwritten
  digit three" (a caption template the run trained on); began (unconditional): how many samples it
  recognises with confidence, whether all ten digits are present, and the samples' diversity;
  dcgan: the same judgement of the unconditional DCGAN (the cDCGAN's networks without labels), the
  reference for how clear an unconditional GAN's digits get in the same number of images;
- pggan: SWD (x1e3, at 32x32, samples of lower phases upscaled) after each stabilised phase, which
  must fall as the network grows.
One line per model with its figures and whether it met its target; `--grids DIR` also writes each
run's judged samples as a small PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from ganforge.data import DIGIT_NAMES, load_dataset, to_float, to_uint8
from ganforge.inference import generate, generate_from_prompts, load_model
from ganforge.metrics.evaluate import sample_real
from ganforge.metrics.conditional_accuracy import train_classifier
from ganforge.metrics.diversity import relative_diversity
from ganforge.metrics.swd import swd

SHARED_EMOJI = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji"

# How many of its samples the digit judge recognises with confidence in the unconditional DCGAN's
# recipe (networks of the cDCGAN, no labels, 50 kimg): 44.8% and 46.2% (without augmentation) on
# CPU-2, 56.5% at 100 kimg, 58.6% at 150 (benchmarks/RESULTS.md). BEGAN, also unconditional, is
# asked to be as clear in about as much time: 125 kimg, 2.5 times the DCGAN's images, fit in ~17
# minutes on 2 cores. The "dcgan" line measures the reference again.
DCGAN_RECOGNISED = 0.45

# The recipes, as README gives them (each about 15 minutes on a 2-core CPU).
RECIPES = {
    "cdcgan": ["--model", "cdcgan", "--kimg", "50"],
    "dfgan": ["--model", "dfgan", "--data", "mnist-captions", "--kimg", "50"],
    "dcgan": ["--model", "dcgan", "--data", "mnist", "--resolution", "32", "--kimg", "50"],
    "began": ["--model", "began", "--data", "mnist", "--resolution", "32", "--gamma", "1",
              "--model-opt", "lambda_k=0.01", "--model-opt", "eta=2", "--model-opt", "base_channels=32",
              "--model-opt", "pack=2", "--model-opt", "denoise=0.4", "--kimg", "125"],
    "pggan": ["--model", "pggan", "--data", "{emoji}", "--resolution", "32", "--model-opt", "preset=cpu",
              "--kimg", "70", "--snap", "10"],
}
TARGETS = {
    "cdcgan": "requested digit read back >= 90%",
    "dfgan": "prompted digit read back >= 70%, no blank sample",
    "dcgan": "all ten digits >= 3% each, diversity >= 0.6 (its recognised share is BEGAN's bar)",
    "began": f">= {DCGAN_RECOGNISED:.0%} recognised with confidence (the DCGAN's), all ten digits >= 3% each, diversity >= 0.6",
    "pggan": "reaches 32x32, SWD falls after every stabilised phase",
}


def train_recipe(name: str, outdir: Path, emoji: Path | None) -> Path:
    args = [a.replace("{emoji}", str(emoji)) for a in RECIPES[name]]
    command = [sys.executable, "-m", "ganforge", "train", *args, "--outdir", str(outdir), "--quiet"]
    print("$ ganforge train " + " ".join(args), flush=True)
    before = set(outdir.glob("*")) if outdir.exists() else set()
    subprocess.run(command, check=True)
    (run,) = set(outdir.glob("*")) - before
    return run


def digit_judge(resolution: int):
    """A digit CNN trained on the real digits only (not the GAN's classifier: its own seed and epochs)."""
    torch.manual_seed(2024)
    classifier, held_out = train_classifier(load_dataset("mnist", resolution, 1), epochs=6, seed=2024)
    return classifier, held_out


def within_class_diversity(images: torch.Tensor, wanted: torch.Tensor, resolution: int) -> float:
    """Mean over digits of the spread of the samples asked for that digit, relative to real ones of it."""
    real = load_dataset("mnist", resolution, 1)
    reals, labels = to_float(real.images), real.labels_tensor()
    ratios = [relative_diversity(images[wanted == d][:200], reals[labels == d][:200]) for d in range(10)]
    return sum(ratios) / len(ratios)


def judge_cdcgan(run: Path) -> tuple[dict, bool, torch.Tensor]:
    model = load_model(run)
    classifier, held_out = digit_judge(model.config["resolution"])
    images, labels, _ = generate(model, 1000, seed=7)
    with torch.no_grad():
        read = classifier(images).argmax(1)
    acc = (read == labels).float().mean().item()
    figures = {"requested_digit_read": round(acc, 3), "within_digit_diversity": round(
        within_class_diversity(images, labels, model.config["resolution"]), 3), "judge_held_out": round(held_out, 3)}
    return figures, acc >= 0.9, images[::10]


def judge_dfgan(run: Path) -> tuple[dict, bool, torch.Tensor]:
    model = load_model(run)
    classifier, held_out = digit_judge(model.config["resolution"])
    prompts = [f"a handwritten digit {DIGIT_NAMES[d]}" for d in range(10)]
    images = generate_from_prompts(model, prompts, per_prompt=100, seed=7).clamp(-1, 1)
    wanted = torch.arange(10).repeat_interleave(100)
    with torch.no_grad():
        read = classifier(images).argmax(1)
    acc = (read == wanted).float().mean().item()
    blank = (images.flatten(1).std(1) < 0.05).float().mean().item()
    per_digit = [round((read[wanted == d] == d).float().mean().item(), 2) for d in range(10)]
    untruncated = generate_from_prompts(model, prompts, per_prompt=100, seed=7, truncate=False).clamp(-1, 1)
    resolution = model.config["resolution"]
    figures = {"prompted_digit_read": round(acc, 3), "blank": round(blank, 3), "per_digit": per_digit,
               "within_digit_diversity": round(within_class_diversity(images, wanted, resolution), 3),
               "within_digit_diversity_untruncated": round(within_class_diversity(untruncated, wanted, resolution), 3),
               "judge_held_out": round(held_out, 3)}
    return figures, acc >= 0.7 and blank == 0, images.view(10, 100, *images.shape[1:])[:, :10].flatten(0, 1)


def judge_unconditional_digits(run: Path) -> tuple[dict, torch.Tensor]:
    """How many samples the digit judge recognises (confidence > 0.9), its digit shares, their spread."""
    model = load_model(run)
    resolution = model.config["resolution"]
    classifier, held_out = digit_judge(resolution)
    reals = to_float(sample_real(load_dataset("mnist", resolution, 1), 1000)[0])  # the set is sorted by digit
    images, _, _ = generate(model, 1000, seed=7)
    with torch.no_grad():
        fake_p, real_p = classifier(images).softmax(1), classifier(reals).softmax(1)
    confident = (fake_p.max(1).values > 0.9).float().mean().item()
    share = torch.bincount(fake_p.argmax(1), minlength=10).float() / len(images)
    diversity = relative_diversity(images, reals)
    figures = {"recognised": round(confident, 3), "recognised_real": round((real_p.max(1).values > 0.9).float().mean().item(), 3),
               "digit_shares": [round(s, 3) for s in share.tolist()], "diversity": round(diversity, 3),
               "judge_held_out": round(held_out, 3)}
    return figures, images[:100]


def varied_over_every_digit(figures: dict) -> bool:
    return min(figures["digit_shares"]) >= 0.03 and figures["diversity"] >= 0.6


def judge_dcgan(run: Path) -> tuple[dict, bool, torch.Tensor]:
    figures, images = judge_unconditional_digits(run)
    return figures, varied_over_every_digit(figures), images


def judge_began(run: Path) -> tuple[dict, bool, torch.Tensor]:
    figures, images = judge_unconditional_digits(run)
    return figures, figures["recognised"] >= DCGAN_RECOGNISED and varied_over_every_digit(figures), images


def judge_pggan(run: Path) -> tuple[dict, bool, torch.Tensor]:
    options = json.loads((run / "training_options.json").read_text())
    reals = load_dataset(options["data"], 32, 3).images
    pick = torch.randperm(len(reals), generator=torch.Generator().manual_seed(0))
    n = min(1000, len(reals) // 2)
    real_a, real_b = reals[pick[:n]], reals[pick[n:2 * n]]
    curve = []
    for snapshot in sorted(run.glob("snapshot-*.pt")):
        model = load_model(snapshot)
        grown, alpha = int(model.grown_resolution), float(model.grown_alpha)
        # A snapshot a step into a fade-in holds the stabilised previous phase (sampled at alpha = 1).
        size = grown // 2 if alpha < 0.05 else grown if alpha == 1.0 else None
        if size is None or (curve and curve[-1]["resolution"] > size):
            continue
        z = model.sample_latents(n, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            images = torch.cat([model.generate(z[i:i + 100], resolution=size) for i in range(0, n, 100)]).float()
        if size < 32:
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        point = {"kimg": int(snapshot.stem.split("-")[1]), "resolution": size,
                 "swd": round(swd(real_a, to_uint8(images))["swd_avg_x1e3"], 1)}
        if curve and curve[-1]["resolution"] == size:
            curve[-1] = point  # the latest snapshot of a phase stands for it
        else:
            curve.append(point)
    floor = swd(real_a, real_b)["swd_avg_x1e3"]
    swds = [c["swd"] for c in curve]
    falling = len(swds) >= 2 and all(b < a for a, b in zip(swds, swds[1:]))
    last = load_model(run)
    figures = {"swd_after_each_phase": curve, "real_floor": round(floor, 1), "reached": int(last.grown_resolution)}
    return figures, falling and figures["reached"] == 32, generate(last, 64, seed=7)[0]


JUDGES = {"cdcgan": judge_cdcgan, "dfgan": judge_dfgan, "dcgan": judge_dcgan, "began": judge_began,
          "pggan": judge_pggan}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cdcgan,dfgan,dcgan,began,pggan")
    parser.add_argument("--outdir", default="runs/quality")
    parser.add_argument("--emoji", type=Path, default=SHARED_EMOJI if SHARED_EMOJI.exists() else None,
                        help="RGB image folder for the PGGAN recipe (the Noto emoji set)")
    parser.add_argument("--judge", action="append", default=[], metavar="MODEL=RUN", help="judge a finished run")
    parser.add_argument("--grids", type=Path, default=None, help="write each judged sample grid here")
    args = parser.parse_args()

    jobs = [tuple(j.split("=", 1)) for j in args.judge] or [(m, None) for m in args.models.split(",")]
    failed = 0
    for name, run in jobs:
        if name not in JUDGES:
            parser.error(f"unknown model {name} (choose from {', '.join(JUDGES)})")
        start = time.time()
        if run is None:
            if name == "pggan" and args.emoji is None:
                print("pggan: skipped (give --emoji DIR, an RGB image folder)")
                continue
            run = train_recipe(name, Path(args.outdir), args.emoji)
        minutes = (time.time() - start) / 60
        figures, met, images = JUDGES[name](Path(run))
        failed += not met
        if args.grids:
            args.grids.mkdir(parents=True, exist_ok=True)
            save_image(images.float(), args.grids / f"quality-{name}.png", nrow=math.isqrt(len(images)),
                       normalize=True, value_range=(-1, 1), padding=1)
        trained = f", trained in {minutes:.1f} min" if minutes > 0.1 else ""
        print(f"{name}: {'target met' if met else 'TARGET NOT MET'} ({TARGETS[name]}){trained}; {run}; "
              f"{json.dumps(figures)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
