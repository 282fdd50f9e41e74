"""PGGAN training speed: one full step (D step with gradient penalty + G step) per resolution.

    python benchmarks/pggan_speed.py                      # paper batches, fp32 and bf16, 32 ... 1024
    python benchmarks/pggan_speed.py --res 32 64 --steps 3 --precision fp32   # a quick CPU check

Prints one JSON line per (resolution, precision): img/s, seconds per step, peak GPU memory. The
fully grown networks at each resolution (alpha = 1), random reals: this measures compute only.
Reference (pytorch_GAN_zoo, fp32, one H100, batch 16/16/16/14/6/3): 319 / 185 / 105 / 46 / 10.7 / 3.8.
With --best, also tries doubling batches until memory runs out and reports the fastest.
"""

import argparse
import json
import sys

import torch

from ganforge.training.bench import bench_training_step

PAPER_BATCH = {32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3}
ZOO_IMG_PER_SEC = {32: 319, 64: 185, 128: 105, 256: 46, 512: 10.7, 1024: 3.8}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--res", type=int, nargs="+", default=list(PAPER_BATCH))
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--best", action="store_true", help="also search the fastest batch that fits")
    args = p.parse_args()
    for res in args.res:
        for precision in args.precision:
            r = bench_training_step("pggan", res, PAPER_BATCH[res], precision, args.steps, args.warmup, args.device)
            r["vs_gan_zoo"] = r["img_per_sec"] / ZOO_IMG_PER_SEC[res]
            print(json.dumps(r), flush=True)
            if args.best and r["device"].startswith("cuda"):
                batch, best = PAPER_BATCH[res], r
                while True:
                    batch *= 2
                    try:
                        r2 = bench_training_step("pggan", res, batch, precision, args.steps, args.warmup, args.device)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        break
                    if r2["img_per_sec"] > best["img_per_sec"]:
                        best = r2
                print(json.dumps({"best_batch": best["batch"], **best}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # the lines printed so far are the results
