"""What fine-tuning gains on a few hundred images: --init-from (and --freeze-d) against training from scratch.

    python benchmarks/finetune_gain.py DATA --workdir /tmp/finetune            # the full measurement
    python benchmarks/finetune_gain.py DATA --workdir /tmp/ft-check --pretrain-kimg 0.064 --kimg 0.032 \\
        --samples 64 --finetune-n 32                                          # end to end in a few minutes

DATA is any labelled image folder ganforge reads (class sub-folders, or images/ + split.csv such as
an emoji set): its categories are what is held out and pretrained on.
- The held-out category (--held-out NAME, default: the largest): --finetune-n (300) of its images,
  picked with a fixed seed, are the small set; its other images are the reference of FID and KID.
- Pretraining: the unconditional DCGAN at 32x32 on every other category (--pretrain-kimg), once.
- Three arms on the small set, each at --kimg with --augment ada and each --seeds: from scratch;
  --init-from the pretrained run; --init-from with --freeze-d N (--freeze-d).
- Judged by FID and KID of --samples samples of each arm's EMA generator against the held-out
  category's other images.
The folders written are flat copies of the images, as a user's own folders would be. Results go
to WORKDIR/results.jsonl as each run ends (a rerun skips what is there), then a table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from ganforge.data import load_dataset
from ganforge.inference import load_model
from ganforge.metrics.evaluate import Evaluator, fake_images

ARMS = ("scratch", "init-from", "init-from+freeze-d")


def split_categories(data: Path, workdir: Path, held_out: str | None, finetune_n: int) -> tuple[Path, Path, Path, str]:
    """Flat folders of the pretraining images (every other category), the small set and the
    held-out category's other images; and the held-out category's name."""
    dataset = load_dataset(str(data), 32, 3, split="all")
    if dataset.num_classes < 2:
        sys.exit(f"{data}: needs categories (class sub-folders or a split.csv with labels)")
    sizes = {c: dataset.labels.count(c) for c in range(dataset.num_classes)}
    name = held_out or dataset.class_names[max(sizes, key=sizes.get)]
    if name not in dataset.class_names:
        sys.exit(f"--held-out {name}: not a category of {data} ({', '.join(dataset.class_names)})")
    label = dataset.class_names.index(name)
    if sizes[label] <= finetune_n:
        sys.exit(f"--held-out {name}: {sizes[label]} images, not more than --finetune-n {finetune_n}")
    held = [e for e, lab in zip(dataset.entries, dataset.labels) if lab == label]
    small = set(random.Random(0).sample(held, finetune_n))
    folders = {"pretrain": [e for e, lab in zip(dataset.entries, dataset.labels) if lab != label],
               "small": sorted(small), "reference": [e for e in held if e not in small]}
    for folder, entries in folders.items():
        path = workdir / folder
        if not path.exists():
            path.mkdir(parents=True)
            for i, entry in enumerate(entries):
                shutil.copy(entry, path / f"{i:05d}{Path(entry).suffix}")
    return workdir / "pretrain", workdir / "small", workdir / "reference", name


def train(args: list[str], outdir: Path) -> Path:
    """`ganforge train` as a user types it; returns the new run's directory."""
    outdir.mkdir(parents=True, exist_ok=True)
    print("$ ganforge train " + " ".join(args), flush=True)
    before = set(outdir.iterdir())
    subprocess.run([sys.executable, "-m", "ganforge", "train", *args, "--outdir", str(outdir), "--quiet"], check=True)
    (run,) = set(outdir.iterdir()) - before
    return run


def common(data: Path, kimg: float, seed: int) -> list[str]:
    return ["--model", "dcgan", "--data", str(data), "--resolution", "32", "--channels", "3", "--augment", "ada",
            "--kimg", f"{kimg:g}", "--seed", str(seed), "--snap", f"{kimg:g}", "--sample-every", f"{kimg / 4:g}",
            "--tick", f"{min(1.0, kimg / 4):g}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a labelled image folder (class sub-folders, or images/ + split.csv)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--held-out", help="the category held out [default: the largest]")
    parser.add_argument("--finetune-n", type=int, default=300)
    parser.add_argument("--pretrain-kimg", type=float, default=500)
    parser.add_argument("--kimg", type=float, default=100, help="kimg of each arm on the small set")
    parser.add_argument("--freeze-d", type=int, default=2, help="D's blocks frozen in the third arm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--samples", type=int, default=1000, help="samples per FID/KID")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pretrain, small, reference, held_out = split_categories(args.data, args.workdir, args.held_out, args.finetune_n)
    results_file = args.workdir / "results.jsonl"
    rows = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []

    done_pretraining = sorted((args.workdir / "runs-pretrain").glob("*/latest.pt"))
    source = (done_pretraining[-1].parent if done_pretraining else
              train(common(pretrain, args.pretrain_kimg, 0), args.workdir / "runs-pretrain"))
    real = load_dataset(str(reference), 32, 3)
    evaluator = Evaluator(["fid", "kid"], real, n=len(real), cache_dir=args.workdir / "cache")
    arm_args = {"scratch": [], "init-from": ["--init-from", str(source)],
                "init-from+freeze-d": ["--init-from", str(source), "--freeze-d", str(args.freeze_d)]}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in ARMS:
            if any(r["arm"] == arm and r["seed"] == seed and r["kimg"] == args.kimg for r in rows):
                continue
            run = train(common(small, args.kimg, seed) + arm_args[arm], args.workdir / "runs-small")
            results = evaluator(fake_images(load_model(run), args.samples, seed=1))
            row = {"arm": arm, "seed": seed, "kimg": args.kimg, "pretrain_kimg": args.pretrain_kimg,
                   "held_out": held_out, "fid": round(results["fid"]["fid"], 2), "kid": round(results["kid"]["kid"], 5),
                   "run": str(run)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            with results_file.open("a") as f:
                f.write(json.dumps(row) + "\n")

    print(f"\nheld out: {held_out}; {args.finetune_n} images, FID/KID of {args.samples} samples against its "
          f"{len(real)} others; pretrained {args.pretrain_kimg:g} kimg on the other categories")
    print(f"{'arm':20} {'kimg':>6} {'seeds':>5}  {'FID mean (each)':26} {'KID mean (each)'}")
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm and r["kimg"] == args.kimg]
        if not mine:
            continue
        fids, kids = [r["fid"] for r in mine], [r["kid"] for r in mine]
        print(f"{arm:20} {args.kimg:6g} {len(mine):5}  {sum(fids) / len(fids):7.2f} ({', '.join(f'{f:.1f}' for f in fids)})"
              f"{'':4} {sum(kids) / len(kids):.4f} ({', '.join(f'{k:.4f}' for k in kids)})")


if __name__ == "__main__":
    main()
