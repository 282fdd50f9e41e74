"""The metrics ganforge ships: one `@metric` block each, its maths in the module it imports.

Each block declares the metric's contract (ganforge.metrics.Metric): what it keeps of each block of
images, whether it measures the reals too, what it prepares once, and how it makes its figures from
the tallies of both sides. The maths is imported inside the functions, so that listing the metrics
(`ganforge evaluate --help`) imports no torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ganforge.metrics import metric

if TYPE_CHECKING:
    from ganforge.metrics.evaluate import Block, Evaluator, Tally

# GanModel.conditioning's values (ganforge.models.base, which imports torch): what a metric's samples need.
CLASS, TEXT = "class", "text"

SWD_PER_IMAGE = 128  # neighbourhoods drawn per image and pyramid level (Karras et al. 2018, appendix D)
MSSSIM_PAIRS = 10_000  # pairs per side, as PGGAN measured it (each image in at most 4 when there are fewer)

# Each block's random draws come from its own stream, numbered here, so that metrics never share one.
SWD_STREAM, MSSSIM_STREAM, RPREC_STREAM = 0, 1, 2


# --- SWD: Laplacian-pyramid patches of each generated block beside the real block of its number ----
def swd_descriptors(ev: Evaluator, block: Block) -> dict:
    """Both blocks' neighbourhoods drawn alike (the same stream): identical sets give exactly 0."""
    from ganforge.metrics.swd import raw_descriptors

    k = min(len(block.images), len(block.paired_real))
    generated, real = (raw_descriptors(x[:k], SWD_PER_IMAGE, block.random(SWD_STREAM), ev.device)
                       for x in (block.images, block.paired_real))
    return {"generated": generated, "real": real}


def swd_resolution(ev: Evaluator) -> None:
    from ganforge.metrics.swd import check_swd_size

    check_swd_size(ev.real.resolution)


def swd_of_real_halves(ev: Evaluator) -> dict:
    """SWD between two disjoint halves of the real sample: the value a perfect generator would
    approach. Each half holds n / 2 images, and SWD falls as n grows, so the figures say so."""
    from ganforge.metrics.evaluate import sample_real
    from ganforge.metrics.swd import swd

    images = sample_real(ev.real, ev.n, ev.seed)[0]
    half = len(images) // 2
    figures = swd(images[:half], images[half:2 * half], seed=ev.seed, device=ev.device)  # its "n": half, a side
    figures["measured_on"] = (f"two disjoint halves of the {len(images)} real images, {half} a side (real images "
                              f"cannot be compared with themselves); SWD falls as n grows, so this floor at n={half} "
                              "sits above one measured at the generated side's n")
    return figures


def pyramid_levels(per_block: list[list]) -> list:
    """Descriptors of each pyramid level over all blocks, in block order."""
    import torch

    return [torch.cat(level) for level in zip(*per_block)]


@metric("swd", "swd_avg_x1e3", lower_is_better=True, summary=swd_descriptors, paired_reals=True,
        check=swd_resolution, floor=swd_of_real_halves, default=True)
def sliced_wasserstein(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    from ganforge.metrics.swd import swd_of_descriptors

    pairs = fakes.summaries("swd")
    generated = pyramid_levels([p["generated"] for p in pairs])
    result = swd_of_descriptors(pyramid_levels([p["real"] for p in pairs]), generated, ev.real.resolution, seed=ev.seed)
    return {**result, "n": len(generated[0]) // SWD_PER_IMAGE}


# --- MS-SSIM: random pairs within each block, of both sides -----------------------------------------
def msssim_pairs(ev: Evaluator, block: Block):
    if len(block.images) < 2:  # a block of one image has no pair
        return None
    from ganforge.metrics.msssim import random_pairs_ms_ssim

    pairs_per_image = min(4, math.ceil(MSSSIM_PAIRS / block.side_size))
    return random_pairs_ms_ssim(block.images, pairs_per_image * len(block.images), block.random(MSSSIM_STREAM),
                                device=ev.device)


@metric("msssim", "ms_ssim", lower_is_better=True, summary=msssim_pairs, real_side=True, default=True)
def ms_ssim(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    """Diversity: compare ms_ssim with ms_ssim_real, the reals' own."""
    values = fakes.cat("msssim")
    return {"ms_ssim": values.mean().item(), "pairs": len(values), "ms_ssim_real": real.cat("msssim").mean().item()}


# --- Inception features: FID from their moments, KID and PR from each image's, IS from logits --------
@metric("fid", "fid", lower_is_better=True, keeps=("moments",), real_side=True, default=True)
def frechet_inception_distance(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    from ganforge.metrics.feature_metrics import frechet_distance

    return {"fid": frechet_distance(*real.moments.gaussian(), *fakes.moments.gaussian())}


@metric("kid", "kid", lower_is_better=True, keeps=("features",), real_side=True, default=True)
def kernel_inception_distance(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    from ganforge.metrics.feature_metrics import kid

    return kid(real.per_image("features"), fakes.per_image("features"), seed=ev.seed)


@metric("is", "is", lower_is_better=False, keeps=("logits",))
def inception_score(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    from ganforge.errors import OptionError
    from ganforge.metrics.feature_metrics import inception_score as score

    if not fakes.summaries("logits"):
        raise OptionError("--metrics is: the Inception weights in use return pool features only (the "
                          "bundled FID weights end there); pass --inception-weights FILE with logits")
    return score(fakes.per_image("logits"))


@metric("pr", "precision", lower_is_better=False, keeps=("features",), real_side=True, default=True,
        min_images=6)  # a 5th neighbour (density)
def precision_recall(ev: Evaluator, fakes: Tally, real: Tally) -> dict:
    from ganforge.metrics.feature_metrics import precision_recall as pr

    return pr(real.per_image("features"), fakes.per_image("features"))


# --- conditional accuracy: a classifier trained on the labelled reals --------------------------------
def classifier(ev: Evaluator):
    from ganforge.metrics.conditional_accuracy import Classifier, train_classifier

    net = Classifier(ev.real.channels, ev.real.resolution, ev.real.num_classes)
    net.load_state_dict(ev.cached("classifier", (ev.real.num_classes,),  # trained once: kept in the cache folder
                                  lambda _: train_classifier(ev.real, seed=ev.seed, report=ev.report)[0].state_dict()))
    return net.eval()


def classifier_hits(ev: Evaluator, block: Block):
    if block.condition.classes is None:
        return None
    import torch

    from ganforge.data import to_float
    from ganforge.metrics.conditional_accuracy import correct

    return torch.tensor([correct(ev.prepared(classifier), to_float(block.images), block.condition.classes)])


@metric("acc", "conditional_accuracy", lower_is_better=False, needs=CLASS, prepare=classifier,
        summary=classifier_hits)
def conditional_accuracy(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    return {"conditional_accuracy": fakes.cat("acc").sum().item() / fakes.count}


# --- R-precision: an image-text matcher trained on the captioned reals -------------------------------
def matcher(ev: Evaluator):
    from ganforge.metrics.evaluate import sample_real
    from ganforge.metrics.rprecision import fit_matcher
    from ganforge.models.text import Matcher

    captions = ev.captions

    def build(_):
        images = ev.real.images if ev.real.images is not None else sample_real(ev.real, len(ev.real))[0]
        return fit_matcher(images, captions.embeddings, captions.start, captions.count, seed=ev.seed).state_dict()

    net = Matcher(ev.real.channels, captions.embeddings.shape[1])
    net.load_state_dict(ev.cached("matcher", (tuple(captions.embeddings.shape), float(captions.embeddings.sum())),
                                  build))
    return net.eval()


def matcher_hits(ev: Evaluator, block: Block):
    if block.condition.captions is None or ev.captions is None:
        return None
    import torch

    from ganforge.data import to_float
    from ganforge.metrics.rprecision import r_precision_counts

    hits, cosine = r_precision_counts(ev.prepared(matcher), to_float(block.images), block.condition.captions,
                                      ev.captions.embeddings, ev.captions.text_id, block.random(RPREC_STREAM))
    return torch.tensor([hits, cosine], dtype=torch.float64)


@metric("rprec", "r_precision", lower_is_better=False, needs=TEXT, prepare=matcher, summary=matcher_hits)
def text_r_precision(ev: Evaluator, fakes: Tally, real: Tally | None) -> dict:
    hits, cosine = fakes.cat("rprec").view(-1, 2).sum(dim=0).tolist()
    return {"r_precision": hits / fakes.count, "match_score": 100 * cosine / fakes.count, "candidates": 100}
