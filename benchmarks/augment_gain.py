"""What --augment gains on a small dataset: the same run with none, diffaug and ada, judged by FID.

    python benchmarks/augment_gain.py --workdir /tmp/augment                  # MNIST-500, seeds 0 1 2
    python benchmarks/augment_gain.py --workdir /tmp/augment --emoji DIR      # and a 1,000-emoji subset

- MNIST-500: the conditional DCGAN on 500 of the embedded digits (the first 50 of each class,
  written as class folders, as a user's own data would be), 100 kimg, each mode and seed. FID of
  1,000 samples against all 5,000 digits, and conditional accuracy (ganforge's digit classifier,
  trained on the 5,000).
- emoji (with --emoji): the unconditional DCGAN on 1,000 images picked with a fixed seed from
  the folder, 32x32, FID of 1,000 samples against the whole folder.
Results go to WORKDIR/results.jsonl as each run ends (a rerun skips what is there), then a table;
--picture writes the seed-0 runs' last sample grids side by side.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from ganforge.data import load_dataset
from ganforge.inference import load_model
from ganforge.metrics.evaluate import Evaluator, fake_images

MODES = ("none", "diffaug", "ada")


def mnist_subset(folder: Path, per_class: int = 50) -> Path:
    if not folder.exists():
        digits = load_dataset("mnist", 32, 1)
        labels = digits.labels_tensor()
        for digit in range(10):
            (folder / str(digit)).mkdir(parents=True)
            for i, index in enumerate((labels == digit).nonzero().flatten()[:per_class].tolist()):
                Image.fromarray(digits.images[index, 0].numpy(), mode="L").save(folder / str(digit) / f"{i:03d}.png")
    return folder


def emoji_subset(source: Path, folder: Path, n: int = 1000) -> Path:
    if not folder.exists():
        images = sorted(p for p in (source / "images" if (source / "images").is_dir() else source).iterdir()
                        if p.suffix.lower() == ".png")
        folder.mkdir(parents=True)
        for path in random.Random(0).sample(images, n):
            shutil.copy(path, folder / path.name)
    return folder


def train(data: Path, model: str, mode: str, seed: int, kimg: float, outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    args = ["--model", model, "--data", str(data), "--resolution", "32", "--kimg", str(kimg), "--augment", mode,
            "--seed", str(seed), "--snap", str(kimg), "--sample-every", str(kimg / 4)]
    print("$ ganforge train " + " ".join(args), flush=True)
    before = set(outdir.iterdir())
    subprocess.run([sys.executable, "-m", "ganforge", "train", *args, "--outdir", str(outdir), "--quiet"], check=True)
    (run,) = set(outdir.iterdir()) - before
    return run


def judge(run: Path, evaluator: Evaluator, metrics: list[str]) -> dict:
    results = evaluator(fake_images(load_model(run), 1000, seed=1))
    figures = {"fid": round(results["fid"]["fid"], 2)}
    if "acc" in metrics:
        figures["acc"] = round(results["acc"]["conditional_accuracy"], 3)
    final_p = [json.loads(line).get("augment/p") for line in (run / "stats.jsonl").read_text().splitlines()][-1]
    return {**figures, "final_p": None if final_p is None else round(final_p, 3)}


def side_by_side(rows: list[dict], setting: str, out: Path) -> None:
    """The seed-0 runs' last training grids (fixed noise), labelled by mode."""
    grids = []
    for mode in MODES:
        row = next((r for r in rows if r["setting"] == setting and r["seed"] == 0 and r["mode"] == mode), None)
        if row is None:
            return
        last = sorted(Path(row["run"]).glob("fakes*.png"))[-1]
        grids.append((mode, Image.open(last).convert("RGB")))
    width, height = sum(g.width for _, g in grids) + 8 * (len(grids) - 1), grids[0][1].height + 16
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for mode, grid in grids:
        canvas.paste(grid, (x, 16))
        ImageDraw.Draw(canvas).text((x + 2, 2), f"--augment {mode}", fill="black")
        x += grid.width + 8
    canvas.save(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kimg", type=float, default=100)
    parser.add_argument("--emoji", type=Path, help="an emoji folder (images/ inside or the images themselves)")
    parser.add_argument("--emoji-kimg", type=float, default=100)
    parser.add_argument("--picture", type=Path, help="folder for the side-by-side grids")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results_file = args.workdir / "results.jsonl"
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []

    settings = [("mnist500", "cdcgan", mnist_subset(args.workdir / "mnist500"), "mnist", ["fid", "acc"], args.kimg)]
    if args.emoji:
        settings.append(("emoji1000", "dcgan", emoji_subset(args.emoji, args.workdir / "emoji1000"), str(args.emoji),
                         ["fid"], args.emoji_kimg))
    for setting, model, data, real, metrics, kimg in settings:
        real_data = load_dataset(real, 32, 1 if model == "cdcgan" else 3)
        evaluator = Evaluator(metrics, real_data, n=len(real_data), cache_dir=args.workdir / "cache")
        for seed in seeds if setting == "mnist500" else seeds[:1]:
            for mode in MODES:
                if any(r["setting"] == setting and r["seed"] == seed and r["mode"] == mode for r in rows):
                    continue
                run = train(data, model, mode, seed, kimg, args.workdir / f"runs-{setting}")
                row = {"setting": setting, "mode": mode, "seed": seed, "kimg": kimg, "run": str(run),
                       **judge(run, evaluator, metrics)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                with results_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        if args.picture:
            args.picture.mkdir(parents=True, exist_ok=True)
            side_by_side(rows, setting, args.picture / f"augment-{setting}.png")

    print(f"\n{'setting':10} {'mode':8} {'seeds':6} {'FID (mean, each)':28} {'acc':16}")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for mode in MODES:
            mine = [r for r in rows if r["setting"] == setting and r["mode"] == mode]
            if not mine:
                continue
            fids = [r["fid"] for r in mine]
            accs = [r["acc"] for r in mine if "acc" in r]
            acc = f"{sum(accs) / len(accs):.3f}" if accs else "-"
            print(f"{setting:10} {mode:8} {len(mine):<6} {sum(fids) / len(fids):6.2f} ({', '.join(f'{f:.1f}' for f in fids)})"
                  f"{'':4} {acc}")


if __name__ == "__main__":
    main()
