"""Conditional accuracy: does a conditional generator draw the class it is asked for?

A small CNN is trained on the real labelled images; the score is the fraction of generated
samples it assigns to the label they were generated for (chance = 1 / classes).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.data import ImageDataset, to_float
from ganforge.progress import bar_over


class Classifier(nn.Module):
    """Two conv blocks and a linear head: enough for digits and small labelled sets."""

    def __init__(self, channels: int, resolution: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 16, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


TIMED_BATCHES = 5  # the batches after the first (which warms up), timed to say how long the whole training takes


def train_classifier(dataset: ImageDataset, epochs: int = 4, batch: int = 64, seed: int = 0,
                     holdout: float = 0.1, report: Callable[[str], None] | None = None) -> tuple[Classifier, float]:
    """Train on the (preloaded) real images; returns the classifier and its accuracy on a held-out tenth.
    `report` gets one line, once the first batches are timed: what trains and about how long it takes."""
    if dataset.images is None:
        dataset.preload()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = to_float(dataset.images), dataset.labels_tensor()
    order = torch.randperm(len(labels), generator=g)
    n_test = int(len(labels) * holdout)
    test, train = order[:n_test], order[n_test:]
    net = Classifier(images.shape[1], images.shape[2], dataset.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    batches = epochs * math.ceil(len(train) / batch)
    started, done = time.perf_counter(), 0  # timed from the second batch on
    for epoch in range(epochs):
        for idx in bar_over(train[torch.randperm(len(train), generator=g)].split(batch),
                            f"classifier for acc, epoch {epoch + 1}/{epochs}"):
            if done == 1:
                started = time.perf_counter()
            if done == 1 + TIMED_BATCHES and report is not None:
                per_batch = (time.perf_counter() - started) / TIMED_BATCHES
                report(f"acc: training its classifier on {len(train):,} of the {len(labels):,} labelled real images "
                       f"of {dataset.name} ({epochs} epochs, {batches} batches of {batch}), before any image is "
                       f"measured: about {per_batch * (batches - done):.0f} s more on this machine, at the speed of "
                       f"its batches 2 to {done}")
            done += 1
            x = images[idx]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # small translations: robust to GAN jitter
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net, accuracy(net, images[test], labels[test])


def accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """Fraction of images (in [-1, 1]) classified as their label."""
    return correct(classifier, images, labels, batch) / len(labels)


@torch.no_grad()
def correct(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> int:
    """How many images (in [-1, 1]) are classified as their label."""
    classifier.eval()
    return sum((classifier(x).argmax(1) == y).sum().item() for x, y in zip(images.split(batch), labels.split(batch)))
