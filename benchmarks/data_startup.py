"""Start-up and steady decoding speed of the lazy data path, on a synthetic folder of small JPEGs.

    python benchmarks/data_startup.py --dir /tmp/jpegs --n 200000 [--resolution 64] [--workers 0,2]

Makes the folder once (random-colour 64x64 JPEGs in 100 class folders; not kept in the repository),
then times:
- start-up: opening the folder as a run does (listing and sorting the files), and the pass over
  every file's header that the lazy path made before this change (still made where a model must
  refuse small images);
- steady state: img/s of RealStream batches of 64 decoded by `--workers` processes (0: in the
  training process), after one warm-up batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ganforge.data import RealStream, _read_headers, load_dataset


def make_folder(folder: Path, n: int) -> None:
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) >= n:
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i % 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(sub / f"{i:07d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    start = time.time()
    make_folder(args.dir, args.n)
    print(f"folder of {args.n:,} JPEGs ready in {time.time() - start:.1f} s")

    start = time.time()
    ds = load_dataset(str(args.dir), args.resolution, 3, preload=False)
    opened = time.time() - start
    start = time.time()
    _read_headers(ds)
    headers = time.time() - start
    print(f"start-up: open {opened:.1f} s (now); + every header {headers:.1f} s (before: {opened + headers:.1f} s)")

    for workers in (int(w) for w in args.workers.split(",")):
        stream = RealStream(ds, seed=0, workers=workers)
        stream.next_batch(64)
        start = time.time()
        for _ in range(args.batches):
            stream.next_batch(64)
        print(f"steady: {args.batches * 64 / (time.time() - start):.0f} img/s with --workers {workers}")
        stream.close()


if __name__ == "__main__":
    main()
