"""Reference points for `--metrics rprec` on a captioned dataset: what real images score.

    python benchmarks/rprecision_reference.py                              # the built-in captioned digits
    python benchmarks/rprecision_reference.py --data DIR --resolution 64   # a captioned folder (images/ text/)

ganforge's R-precision uses its own image-text matcher, trained on the real data (it is not DF-GAN's
DAMSM, so its numbers are not the papers'). A generator's figures mean something beside these two:
real images with their own captions (the ceiling a perfect generator would approach) and real
images with a caption of another image whose text differs (chance: 1 in 100 for R-precision).
Captions are embedded as a DF-GAN run embeds them (MiniLM, centred and scaled on the data).
"""

from __future__ import annotations

import argparse
import json

import torch

from ganforge.data import load_dataset
from ganforge.metrics.evaluate import Evaluator, Fakes, sample_real
from ganforge.models import build_model
from ganforge.models.base import Condition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="mnist-captions")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()

    real = load_dataset(args.data, args.resolution, split=args.split)
    model = build_model("dfgan", dict(resolution=args.resolution, channels=real.channels))
    model.prepare(real, "cpu", resumed=False)  # the caption table a DF-GAN run on this data would use
    evaluator = Evaluator(["rprec"], real, n=args.n, seed=0)
    evaluator.use_captions_of(model)
    g = torch.Generator().manual_seed(1)
    index = torch.randperm(len(real), generator=g)[:args.n]
    images, _ = sample_real(real, len(real)) if real.images is None else (real.images, None)
    own = Condition(captions=model.captions.pick(index, g))
    other = Condition(captions=model.captions.mismatched(index, g))
    for name, condition in (("real images, own captions", own), ("real images, mismatched captions", other)):
        result = evaluator(Fakes(images[index], condition))["rprec"]
        print(json.dumps({"data": args.data, "case": name, **{k: round(v, 4) if isinstance(v, float) else v
                                                              for k, v in result.items()}}))


if __name__ == "__main__":
    main()
