"""R-precision for text-to-image: does each generated image match its own caption best among 100?

An image-text matcher (ganforge.models.text.Matcher: a small CNN and a projection of the sentence
vectors) is trained in the project on the real captioned images. Each generated image is scored
against its caption and 99 captions drawn from other texts; R-precision (top-1) is the fraction
of images whose own caption ranks first (chance: 1%). Beside it, a CLIP-style score: 100 x the mean
cosine similarity (negative counted as 0) between each image and its own caption in the matcher's
space, as CLIPScore (Hessel et al. 2021) does with CLIP's encoders.

The matcher is ganforge's own, trained on the run's real data with its text encoder (MiniLM or
the BiLSTM): the figures compare runs measured the same way, not with the papers' tables (those
use DF-GAN's DAMSM encoders on CUB and COCO). benchmarks/rprecision_reference.py gives the
reference points on real data: real images with their own captions, and with mismatched ones.
"""

from __future__ import annotations

import torch

from ganforge.models.text import Matcher, train_matcher


def fit_matcher(images_uint8: torch.Tensor, caption_emb: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                epochs: int = 10, seed: int = 0) -> Matcher:
    emb = caption_emb.cpu()
    return train_matcher(images_uint8, start.cpu(), count.cpu(), lambda ids: emb[ids], emb.shape[1], epochs=epochs,
                         seed=seed)


@torch.no_grad()
def r_precision(matcher: Matcher, images: torch.Tensor, caption_ids: torch.Tensor, caption_emb: torch.Tensor,
                text_ids: torch.Tensor, candidates: int = 100, seed: int = 0) -> dict:
    """Top-1 R-precision of images (float, [-1, 1]) generated from `caption_ids`."""
    hits, own_cosine = r_precision_counts(matcher, images, caption_ids, caption_emb, text_ids,
                                          torch.Generator().manual_seed(seed), candidates)
    return {"r_precision": hits / len(images), "match_score": 100 * own_cosine / len(images), "candidates": candidates}


@torch.no_grad()
def r_precision_counts(matcher: Matcher, images: torch.Tensor, caption_ids: torch.Tensor, caption_emb: torch.Tensor,
                       text_ids: torch.Tensor, generator: torch.Generator, candidates: int = 100) -> tuple[int, float]:
    """How many images rank their own caption first among `candidates`, and the sum of their own
    cosines (negative counted as 0): the sums from which a set's figures are made, a batch at a time."""
    emb, text_ids, caption_ids = caption_emb.cpu(), text_ids.cpu(), caption_ids.cpu()
    hits, own_cosine = 0, 0.0
    for i in range(len(images)):
        others = torch.randint(0, len(emb), (candidates * 3,), generator=generator)
        others = others[text_ids[others] != text_ids[caption_ids[i]]][: candidates - 1]  # never its own text
        pool = torch.cat([caption_ids[i:i + 1], others])
        sim = matcher.similarity(images[i:i + 1].float(), emb[pool])[0]
        hits += int(sim.argmax() == 0)
        own_cosine += max(sim[0].item(), 0.0)
    return hits, own_cosine
