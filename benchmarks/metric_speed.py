"""SWD and MS-SSIM: ganforge's time against PGGAN's official numpy code, on the same images.

    python benchmarks/metric_speed.py --n 1000 --official /path/to/progressive_growing_of_gans
    python benchmarks/metric_speed.py --n 10000 --skip-official       # ganforge alone

The official code is read from a checkout of tkarras/progressive_growing_of_gans (its metrics/
folder; it needs numpy and scipy), never copied here. Images: n structured 32x32 RGB images a side
(tests/test_metric_fixtures.py makes them). SWD as the official API computes it (reals, then fakes,
each fed in minibatches of 256); MS-SSIM on n / 2 pairs of consecutive images, as the official API
pairs them. CPU seconds and wall seconds are printed with each value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_metric_fixtures import fixture_images  # noqa: E402

from ganforge.metrics.msssim import ms_ssim  # noqa: E402
from ganforge.metrics.swd import swd  # noqa: E402


def timed(label: str, work) -> None:
    cpu, wall = time.process_time(), time.time()
    value = work()
    print(json.dumps({"what": label, "value": round(float(value), 5), "cpu_s": round(time.process_time() - cpu, 2),
                      "wall_s": round(time.time() - wall, 2)}), flush=True)


def official_swd(sw, real: np.ndarray, fake: np.ndarray) -> float:
    api = sw.API(len(real), real.shape[1:], np.uint8, 256)
    for mode, images in (("reals", real), ("fakes", fake)):
        api.begin(mode)
        for i in range(0, len(images), 256):
            api.feed(mode, images[i:i + 256])
        result = api.end(mode)
    return result[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images a side")
    parser.add_argument("--official", type=Path, default=None, help="a checkout of progressive_growing_of_gans")
    parser.add_argument("--skip-official", action="store_true")
    args = parser.parse_args()
    real, fake = fixture_images(args.n, 32, 3, seed=1), fixture_images(args.n, 32, 3, seed=2)
    print(f"{args.n} images a side, 32x32 RGB, torch threads {torch.get_num_threads()}", flush=True)
    timed("ganforge swd_avg_x1e3", lambda: swd(torch.from_numpy(real), torch.from_numpy(fake))["swd_avg_x1e3"])
    images = torch.from_numpy(real).float()
    timed(f"ganforge ms_ssim ({args.n // 2} pairs)", lambda: ms_ssim(images[0::2], images[1::2]).mean())
    if args.skip_official:
        return
    if args.official is None:
        parser.error("--official DIR (a checkout of progressive_growing_of_gans) or --skip-official")
    sys.path.insert(0, str(args.official / "metrics"))
    import ms_ssim as official_ms_ssim
    import sliced_wasserstein as official_sw

    timed("official swd_avg_x1e3", lambda: official_swd(official_sw, real, fake))
    nhwc = real.transpose(0, 2, 3, 1)
    timed(f"official ms_ssim ({args.n // 2} pairs)", lambda: official_ms_ssim.msssim(nhwc[0::2], nhwc[1::2]))


if __name__ == "__main__":
    main()
