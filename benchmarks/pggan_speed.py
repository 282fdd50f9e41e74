"""PGGAN training speed per resolution: the training loop's body (next batch, D step with its
gradient penalty, G step, EMA) of the fully grown networks, beside pytorch_GAN_zoo on an H200.

    python benchmarks/pggan_speed.py                       # paper batches, tf32 and bf16+cl, 32 ... 1024
    python benchmarks/pggan_speed.py --batch-scale 1 4     # and at 4x the paper's batch
    python benchmarks/pggan_speed.py --res 32 64 --steps 3 --settings fp32 --device cpu   # a quick CPU check

Works from a checkout without installing (it puts the repository on sys.path). Prints one JSON
line per (resolution, batch, setting): img/s, seconds per step, TFLOP/s, peak GPU memory, host syncs
per step, and the ratio to the zoo's figure at its own batch (fp32, H200: 295 / 196 / 110 / 49 / 10.9
/ 3.8 img/s at batch 16 / 16 / 16 / 14 / 6 / 3). A setting is a precision, "+cl" for channels-last.
Batches are fixed (the paper's times each --batch-scale): there is no search, so the time it takes
is known in advance (about 20 steps per line).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ganforge.training.bench import bench_training_step  # noqa: E402

PAPER_BATCH = {32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3}
ZOO_H200_IMG_PER_SEC = {32: 295, 64: 196, 128: 110, 256: 49, 512: 10.9, 1024: 3.8}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, nargs="+", default=list(PAPER_BATCH), choices=list(PAPER_BATCH))
    p.add_argument("--settings", nargs="+", default=["tf32", "bf16+cl"], help="fp32, tf32, bf16 or fp16, +cl for NHWC")
    p.add_argument("--batch-scale", type=int, nargs="+", default=[1], help="multiples of the paper's batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    for res in args.res:
        for scale in args.batch_scale:
            for setting in args.settings:
                precision, channels_last = setting.removesuffix("+cl"), setting.endswith("+cl")
                try:
                    r = bench_training_step("pggan", res, PAPER_BATCH[res] * scale, precision, args.steps, args.warmup,
                                            args.device, channels_last=channels_last, count_flops=True)
                except torch.OutOfMemoryError:
                    print(json.dumps({"resolution": res, "batch": PAPER_BATCH[res] * scale, "setting": setting,
                                      "result": "out of memory"}), flush=True)
                    torch.cuda.empty_cache()
                    continue
                r["setting"] = setting
                if r["device"].startswith("cuda"):
                    r["vs_gan_zoo_h200"] = r["img_per_sec"] / ZOO_H200_IMG_PER_SEC[res]
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # the lines printed so far are the results
