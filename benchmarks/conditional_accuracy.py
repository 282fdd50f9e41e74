"""Conditional accuracy of a run's EMA generator on its own labelled data.

    python benchmarks/conditional_accuracy.py runs/00000-cdcgan-mnist [--n 1000]

Trains the small classifier of ganforge.metrics.conditional_accuracy on the run's real images
(holding out a tenth to report its own accuracy), then classifies n generated samples, an equal
number per class, and prints overall and per-class accuracy.
"""

import argparse
import json

import torch

from ganforge.data import load_dataset
from ganforge.inference import generate, load_model
from ganforge.metrics.conditional_accuracy import accuracy, train_classifier
from ganforge.snapshots import load_snapshot


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    opts = load_snapshot(args.run)["options"]
    model = load_model(args.run)
    dataset = load_dataset(opts["data"], opts["resolution"], opts["channels"], opts["center_crop"], opts["split"])
    classifier, real_acc = train_classifier(dataset)
    images, labels, _ = generate(model, args.n, seed=args.seed)
    per_class = {c: accuracy(classifier, images[labels == c], labels[labels == c]) for c in range(model.num_classes)}
    result = {"run": args.run, "n": args.n, "conditional_accuracy": accuracy(classifier, images, labels),
              "classifier_real_holdout_accuracy": real_acc, "chance": 1 / model.num_classes,
              "per_class": {dataset.class_names[c]: round(a, 3) for c, a in per_class.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
