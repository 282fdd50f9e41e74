"""Real images: where they come from, how they are decoded, and the order they are shown in.

Every dataset item is (image, label): a uint8 tensor [C, R, R] and an int label (-1 when the data
has none). The training loop converts to [-1, 1] on the device, so decoding stays cheap.

Sources accepted by `load_dataset`:
  - `mnist`: 5,000 real MNIST digits (500 a class) kept inside the package (assets/mnist-5k.npz).
  - a folder of images, searched recursively; if every image sits in a first-level sub-folder and
    there are at least two of them, the sub-folder names are the class labels.
  - a .zip of images, with the same rule for its top-level folders.
  - the captioned layout (images/, text/, split.csv, classes.txt): labels from split.csv, captions
    (one a line) from text/<same path>.txt, `split` picks train/test/all.
  - WebDataset tar shards: 'shards/{000000..000099}.tar', one .tar, or a folder of them with its
    dataset.json (`ganforge dataset --shards`); a sample is <key>.<image ext> with its label in
    <key>.cls and captions in <key>.txt where there are.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFile, UnidentifiedImageError

from ganforge.errors import GanforgeError, GanforgeWarning, check_memory, require
from ganforge.progress import bar

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
BUILTIN_DATASETS = ("mnist", "mnist-captions")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LOD_FOLDER = ".lod"  # converted datasets keep their lower levels of detail here (hidden: not images to list)
PRELOAD_LIMIT_BYTES = 2 << 30  # decode everything up front when it fits: faster and reports bad files at once

_size_lock = threading.Lock()
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error we report, not a grey image
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # refuse decompression bombs (1.2 GB as RGB), allow large photos
MAX_CLASSES = 100_000  # class ids from a label file size the model's class embedding


class DatasetError(GanforgeError, ValueError):
    """A dataset that cannot be used: the message names the file or option at fault."""


def inside_root(name: str, where: str) -> str:
    """`name`, a path read from inside a user's file (a zip or tar member, a split.csv row, a shard
    list, a class name), as a relative POSIX path that stays inside its root; any other name is
    refused naming it, since joining it to a folder would read or write outside that folder."""
    path = PurePosixPath(name.replace("\\", "/"))  # a Windows separator would hide a '..' on POSIX
    if not path.parts or path.is_absolute() or ".." in path.parts or PureWindowsPath(name).drive:
        raise DatasetError(f"{where}: entry {name!r} leads outside its folder (an absolute path, a drive or '..'); "
                           "give names relative to the data's own folder")
    return path.as_posix()


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Images (lazily decoded from `read_bytes`, or preloaded) with labels and optional captions."""

    name: str
    entries: list[str]                       # file paths or zip member names
    labels: list[int]
    resolution: int
    channels: int
    center_crop: bool = True
    class_names: list[str] = field(default_factory=list)
    captions: list[list[str]] | None = None  # per image, for text-to-image models
    zip_path: str | None = None
    root: str | None = None
    images: torch.Tensor | None = None       # uint8 [N, C, R, R] once preloaded
    bad_files: list[str] = field(default_factory=list)
    smallest_side: int | None = None         # of the source images seen so far (before resizing)
    levels: list[int] = field(default_factory=list)  # lower resolutions stored beside it (`ganforge dataset --lods`)
    spans: list[tuple[str, int, int]] | None = None  # tar shards: each image's (tar file, offset, size)
    split: str | None = None                 # the split these images are (train, test, all) where the data has splits
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def read_bytes(self, i: int) -> bytes:
        if self.spans is not None:
            return read_span(*self.spans[i])
        if self.zip_path is not None:
            if self._zip is None:  # one handle per worker process
                self._zip = zipfile.ZipFile(self.zip_path)
            return self._zip.read(self.entries[i])
        with open(self.entries[i], "rb") as f:
            return f.read()

    def decode(self, i: int) -> torch.Tensor:
        """Decode entry i to uint8 [C, R, R]; raises on a corrupt file, and on one whose header declares
        more pixels than ganforge decodes (before decoding it)."""
        with open_image(io.BytesIO(self.read_bytes(i))) as img:
            img.load()
            self._note_size(img.size)
            pixels = to_tensor(img, self.channels)
        return fit_square(pixels, self.resolution, self.center_crop)

    def _note_size(self, size: tuple[int, int]) -> None:
        with _size_lock:
            self.smallest_side = min(size) if self.smallest_side is None else min(self.smallest_side, *size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[i], self.labels[i]
        # Lazy path: a file that turned out unreadable is reported once and replaced by the next one,
        # so a long run never dies on one bad image.
        for j in range(len(self)):
            k = (i + j) % len(self)
            try:
                return self.decode(k), self.labels[k]
            except Exception as e:  # noqa: BLE001 - any decode failure means a bad file
                if self.entries[k] not in self.bad_files:
                    self.bad_files.append(self.entries[k])
                    warnings.warn(f"skipping unreadable image {self.entries[k]}: {e}", GanforgeWarning, stacklevel=2)
        raise DatasetError(f"no readable image in dataset {self.name}")

    def decoded(self, threads: int | None = None, desc: str | None = None):
        """(index, uint8 [C, R, R] or the exception that made the file unreadable), in order, decoded
        by a pool of threads behind a progress bar (PIL releases the GIL while it decodes)."""
        def one(i):
            try:
                return self.decode(i)
            except Exception as e:  # noqa: BLE001 - any decode failure means a bad file
                return e

        pool = ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))
        try:
            with bar(len(self), desc or f"decoding {self.name}") as progress:
                for i, result in enumerate(pool.map(one, range(len(self)))):
                    progress.update(1)
                    yield i, result
        finally:  # on Ctrl-C, drop the queued decodes instead of waiting for them all
            pool.shutdown(wait=False, cancel_futures=True)

    def preload(self, threads: int | None = None) -> None:
        """Decode every image now; drop (and warn about) the ones that fail."""
        results = [result for _, result in self.decoded(threads)]
        keep = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
        self.bad_files += [self.entries[i] for i, r in enumerate(results) if not isinstance(r, torch.Tensor)]
        self._select(keep)
        self.images = torch.stack([results[i] for i in keep]) if keep else None
        self._check_not_empty()

    def _select(self, keep: list[int]) -> None:
        self.entries = [self.entries[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        if self.spans is not None:
            self.spans = [self.spans[i] for i in keep]
        if self.captions is not None:
            self.captions = [self.captions[i] for i in keep]

    def _check_not_empty(self) -> None:
        if self.bad_files:
            shown = ", ".join(self.bad_files[:5]) + (" ..." if len(self.bad_files) > 5 else "")
            warnings.warn(f"{self.name}: skipped {len(self.bad_files)} unreadable image(s): {shown}", GanforgeWarning,
                          stacklevel=3)
        if len(self) == 0:
            raise DatasetError(f"dataset {self.name} has no readable images")

    def labels_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.long)

    def at_level(self, resolution: int) -> "ImageDataset":
        """The same images, labels and order read from the stored level of detail at `resolution`
        (LOD_FOLDER/<resolution>/<the image's own path>), which holds each image box-filtered down."""
        if resolution not in self.levels:
            raise DatasetError(f"{self.name}: no stored {resolution}x{resolution} level (has {self.levels})")
        if self.zip_path is not None:
            entries = [f"{LOD_FOLDER}/{resolution}/{e}" for e in self.entries]
        else:
            root = Path(self.root)
            entries = [str(root / LOD_FOLDER / str(resolution) / Path(e).relative_to(root)) for e in self.entries]
        return dataclasses.replace(self, entries=entries, resolution=resolution, images=None, levels=[], _zip=None,
                                   bad_files=[])


def data_identity(ds: ImageDataset) -> dict:
    """What a run was trained on, cheaply: the image count, the class names and a fingerprint of each
    image's name within the data, size in bytes and label (no pixels read; None for a built-in set,
    which its name fixes). A resumed run compares it to its snapshot's: other data, a renamed class
    folder or replaced files would otherwise train on silently with shifted labels."""
    fingerprint = None
    if ds.name not in BUILTIN_DATASETS:
        digest = hashlib.sha256()
        sizes = _entry_sizes(ds)
        for i, entry in enumerate(ds.entries):
            name = os.path.relpath(entry, ds.root) if ds.root else entry  # a zip member or a tar sample as it is
            if ds.spans is not None:
                name = f"{Path(ds.spans[i][0]).name}:{entry[len(ds.spans[i][0]) + 1:]}"  # <tar>:<key>
            digest.update(f"{name}\0{sizes[i]}\0{ds.labels[i]}\n".encode("utf-8", "surrogateescape"))
        fingerprint = digest.hexdigest()[:16]
    return {"images": len(ds), "classes": list(ds.class_names), "fingerprint": fingerprint}


def resize_convention(ds: ImageDataset) -> str:
    """How the images were brought to the resolution (fit_square): figures measured at one
    convention differ from those at another."""
    return ("centre crop" if ds.center_crop else "squash") + ", torchvision antialiased bilinear resize"


def _entry_sizes(ds: ImageDataset) -> list[int]:
    """Each entry's size in bytes, from the file system, the zip's directory or the tar's headers."""
    if ds.spans is not None:
        return [size for _, _, size in ds.spans]
    if ds.zip_path is not None:
        with zipfile.ZipFile(ds.zip_path) as z:
            return [z.getinfo(name).file_size for name in ds.entries]
    sizes = []
    for entry in ds.entries:
        try:
            sizes.append(os.stat(entry).st_size)
        except OSError:
            sizes.append(-1)
    return sizes


def open_image(source) -> Image.Image:
    """Image.open (the header only), refusing an image whose header declares more than
    Image.MAX_IMAGE_PIXELS: PIL itself only warns up to twice that, and decoding it would take
    gigabytes (a small crafted PNG can declare 50,000 x 50,000) before the file is found useless."""
    img = Image.open(source)
    width, height = img.size
    if width * height > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise Image.DecompressionBombError(f"its header declares {width}x{height} pixels, more than the "
                                           f"{Image.MAX_IMAGE_PIXELS:,} ganforge decodes")
    return img


def check_labels(labels: list[int], where: list[str], class_names: list[str]) -> None:
    """Class ids read from a file (split.csv, a shard's .cls) must fit the data: the largest sizes the
    model's class embedding, so one id of 999999 would build a million-class model. An id must be at
    least 0 (-1: none), under the listed classes where there is a list, and otherwise not far beyond
    the number of images (ten times, at least 1,000, at most MAX_CLASSES)."""
    limit = len(class_names) if class_names else min(MAX_CLASSES, max(1_000, 10 * len(labels)))
    for label, place in zip(labels, where):
        if label < -1 or label >= limit:
            bound = (f"{len(class_names)} classes are listed" if class_names else
                     f"{len(labels)} images take ids below {limit:,}")
            raise DatasetError(f"{place}: label {label} out of range ({bound}); fix the label")


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """PIL image of any mode -> uint8 [channels, H, W]; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    img = img.convert("RGB" if channels == 3 else "L")
    return TF.pil_to_tensor(img)


def fit_square(pixels: torch.Tensor, resolution: int, center_crop: bool) -> torch.Tensor:
    """Centre-crop to a square (or squash when center_crop is off), then resize with antialiasing."""
    h, w = pixels.shape[-2:]
    if center_crop and h != w:
        pixels = TF.center_crop(pixels, [min(h, w)])
    if pixels.shape[-2:] != (resolution, resolution):
        pixels = TF.resize(pixels, [resolution, resolution], antialias=True)
    return pixels


def _labels_from_folders(paths: list[str]) -> tuple[list[int], list[str]]:
    """Class sub-folder layout: every image one folder deep and at least two folders."""
    tops = [p.split("/")[0] if "/" in p else None for p in paths]
    if None in tops or len(set(tops)) < 2:
        return [-1] * len(paths), []
    class_names = sorted(set(tops))
    index = {c: i for i, c in enumerate(class_names)}
    return [index[t] for t in tops], class_names


def _image_folder(root: Path, listed_once: Callable, **kw) -> ImageDataset:
    rel = listed_once(lambda: sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ))
    if not rel:
        raise DatasetError(f"--data {root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    labels, class_names = _labels_from_folders(rel)
    if class_names:
        empty = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                       and d.name not in class_names)
        if empty:
            raise DatasetError(f"--data {root}: class folder(s) {', '.join(empty)} hold no images; add images or "
                               "remove the folder (class ids follow the folder names)")
    return ImageDataset(name=str(root), entries=[str(root / r) for r in rel], labels=labels,
                        class_names=class_names, root=str(root), levels=stored_levels(_summary(root), kw["resolution"]), **kw)


def hidden_member(name: str) -> bool:
    """A zip member under a hidden folder or hidden itself (stored levels under .lod/, macOS's ._ files)."""
    return any(part.startswith(".") and part not in (".", "..") for part in Path(name).parts)


def _image_zip(path: Path, **kw) -> ImageDataset:
    try:
        with zipfile.ZipFile(path) as z:
            # Hidden members (stored levels of detail under .lod/, macOS's ._ files) are not images to
            # train on, as in a folder.
            names = sorted(n for n in z.namelist() if not n.endswith("/") and Path(n).suffix.lower() in IMAGE_EXTENSIONS
                           and not hidden_member(n))
            for name in names:  # its folders become class names, and `ganforge dataset` writes under them
                inside_root(name, f"--data {path}")
            summary = json.loads(z.read("dataset.json")) if "dataset.json" in z.namelist() else {}
    except zipfile.BadZipFile as e:
        raise DatasetError(f"--data {path}: not a readable zip file ({e})") from e
    if not names:
        raise DatasetError(f"--data {path}: the zip holds no image files")
    labels, class_names = _labels_from_folders(names)
    return ImageDataset(name=str(path), entries=names, labels=labels, class_names=class_names,
                        zip_path=str(path), levels=stored_levels(summary, kw["resolution"]), **kw)


def stored_levels(summary: dict, resolution: int) -> list[int]:
    """The lower levels of detail a converted dataset holds (its dataset.json), when it was converted
    at the resolution asked for."""
    try:
        return sorted(int(r) for r in summary.get("lods", [])) if summary.get("resolution") == resolution else []
    except (TypeError, ValueError, AttributeError):
        return []


def _summary(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _captioned(root: Path, split: str, **kw) -> ImageDataset:
    split_csv, classes_txt = root / "split.csv", root / "classes.txt"
    class_names = read_utf8(classes_txt).splitlines() if classes_txt.exists() else []
    entries, labels, captions, places = [], [], [], []
    reader = csv.DictReader(io.StringIO(read_utf8(split_csv), newline=""))
    missing = {"image", "label", "split"} - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{split_csv}: missing column(s) {', '.join(sorted(missing))} (expected image,label,split)")
    for line, row in enumerate(reader, start=2):
        if split != "all" and row["split"] != split:
            continue
        try:
            label = int(row["label"])
        except ValueError as e:
            raise DatasetError(f"{split_csv}:{line}: label {row['label']!r} is not an integer") from e
        if class_names and not 0 <= label < len(class_names):
            raise DatasetError(f"{split_csv}:{line}: label {label} out of range: {classes_txt} lists "
                               f"{len(class_names)} classes")
        image = inside_root(row["image"], f"{split_csv}:{line}")
        sub = image[len("images/"):] if image.startswith("images/") else image
        entries.append(str(root / image))
        labels.append(label)
        places.append(f"{split_csv}:{line}")
        captions.append(read_captions(root / "text" / Path(sub).with_suffix(".txt")))
    if not entries:
        raise DatasetError(f"{split_csv}: no images in split {split!r}")
    if not class_names and labels:
        check_labels(labels, places, [])  # without classes.txt the largest id gives the number of classes
        class_names = [str(i) for i in range(max(labels) + 1)]
    return ImageDataset(name=str(root), entries=entries, labels=labels, class_names=class_names, captions=captions,
                        root=str(root), levels=stored_levels(_summary(root), kw["resolution"]), split=split, **kw)


def read_utf8(path: Path) -> str:
    """A text file of the data's own (split.csv, classes.txt), which must be UTF-8: refused naming it otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as "
                           "UTF-8") from None


def read_captions(path: Path, max_chars: int = 2000, max_lines: int = 1000) -> list[str]:
    """Captions one a line, any script; a missing or empty file gives none.

    At most `max_lines` captions of `max_chars` each are kept, so a runaway file cannot fill memory.
    """
    limit = max_chars * max_lines * 4
    try:
        with open(path, "rb") as f:
            raw = f.read(limit)
    except FileNotFoundError:
        return []
    return [line[:max_chars] for line in decode_captions(raw, str(path), cut=len(raw) == limit)][:max_lines]


# Byte-order marks, longest first (UTF-32's little-endian mark begins with UTF-16's).
TEXT_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xef\xbb\xbf", "utf-8"),
             (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_captions(raw: bytes, where: str, cut: bool = False) -> list[str]:
    """The non-empty lines of a caption file: UTF-8, or UTF-16/32 with a byte-order mark. Any other
    encoding (Latin-1, UTF-16 without a mark) is refused naming the file: guessed or replaced
    characters would train the text encoder on captions nobody wrote."""
    bom, encoding = next(((bom, name) for bom, name in TEXT_BOMS if raw.startswith(bom)), (b"", "utf-8"))
    raw = raw[len(bom):]
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        if not (cut and e.start >= len(raw) - 4):  # `cut`: read up to a limit, which may split the last character
            raise DatasetError(f"{where}: not {encoding.upper()} text (byte {raw[e.start]:#04x} at offset "
                               f"{e.start + len(bom)}); save the captions as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        text = raw[:e.start].decode(encoding)  # that character alone is dropped
    if "\x00" in text:
        raise DatasetError(f"{where}: holds NUL characters (UTF-16 without a byte-order mark?); save the captions as "
                           "UTF-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


BUILTIN_DIGITS = Path(__file__).parent / "assets" / "mnist-5k.npz"  # written by tools/make_builtin_digits.py


def _mnist(**kw) -> ImageDataset:
    with np.load(BUILTIN_DIGITS, allow_pickle=False) as arrays:
        x, y = arrays["images"], arrays["labels"].astype(np.int64)
    digits = torch.from_numpy(x).unsqueeze(1)
    resolution, channels = kw["resolution"], kw["channels"]
    check_memory(len(digits) * channels * resolution**2 * 2, f"the built-in digits at {resolution}x{resolution}",
                 "--resolution")
    if channels == 3:
        digits = digits.expand(-1, 3, -1, -1)
    images = TF.resize(digits, [resolution, resolution], antialias=True) if resolution != 28 else digits.clone()
    names = [str(i) for i in range(10)]
    return ImageDataset(name="mnist", entries=[f"mnist[{i}]" for i in range(len(y))], labels=y.tolist(),
                        class_names=names, images=images.contiguous(), smallest_side=28, **kw)


def _mnist_captions(**kw) -> ImageDataset:
    """The built-in digits with templated captions, for text-to-image tests and demos."""
    ds = _mnist(**kw)
    ds.name = "mnist-captions"
    ds.captions = [[f"a handwritten digit {DIGIT_NAMES[y]}", f"the number {y} written by hand",
                    f"a {DIGIT_NAMES[y]} drawn in white on black"] for y in ds.labels]
    return ds


def shard_files(data: str) -> list[Path] | None:
    """The tar shards `data` names ('dir/{000000..000099}.tar', one .tar, or a folder whose
    dataset.json lists shards), or None when it names something else."""
    if ".tar" not in data and not (Path(data).expanduser() / "dataset.json").is_file():
        return None
    if "{" in data:
        require("braceexpand", "shards", "--data with a {first..last} shard pattern")
        from braceexpand import braceexpand  # WebDataset's own pattern syntax (its dependency)

        return [Path(p).expanduser() for p in braceexpand(data)]
    path = Path(data).expanduser()
    if path.is_file() and path.suffix == ".tar":
        return [path]
    shards = _summary(path).get("shards") if path.is_dir() else None
    if not shards:
        return None
    return [path / inside_root(str(name), f"--data {path / 'dataset.json'}") for name in shards]


def _shards(tars: list[Path], split: str, listed_once: Callable, **kw) -> ImageDataset:
    """Tar shards read in place: their headers listed once (by rank 0 under torchrun), each image
    then read by offset, never extracted."""
    missing = [str(t) for t in tars if not t.is_file()]
    if missing:
        raise DatasetError(f"--data: shard {missing[0]} not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    samples = listed_once(lambda: [sample for tar in tars for sample in tar_samples(tar)])
    has_splits = any(s["split"] for s in samples)
    if split != "all" and has_splits:
        samples = [s for s in samples if s["split"] in (split, None)]
    if not samples:
        raise DatasetError(f"--data {tars[0].parent}: the shards hold no images" + (f" in split {split!r}" if split != "all" else ""))
    summary = _summary(tars[0].parent)
    labels = [s["label"] for s in samples]
    if max(labels) >= 0 and min(labels) < 0:  # a label missing would be read as the last class
        unlabelled = next(s["name"] for s in samples if s["label"] < 0)
        raise DatasetError(f"--data: sample {unlabelled} has no .cls label while others have one; label every "
                           "sample or none")
    check_labels(labels, [f"{s['name']}.cls" for s in samples], summary.get("classes") or [])
    class_names = summary.get("classes") or ([str(i) for i in range(max(labels) + 1)] if max(labels) >= 0 else [])
    captioned = any(s["captions"] is not None for s in samples)
    return ImageDataset(name=str(tars[0].parent if len(tars) > 1 else tars[0]), entries=[s["name"] for s in samples],
                        labels=labels, class_names=class_names, spans=[s["span"] for s in samples],
                        captions=[s["captions"] or [] for s in samples] if captioned else None,
                        split=split if has_splits else None, **kw)


def tar_samples(tar: Path) -> list[dict]:
    """The samples of one shard in its order: name, (tar, offset, size) of the image, label (.cls),
    captions (.txt) and split (.json's "split"), from its headers and small members."""
    import tarfile

    samples: dict[str, dict] = {}
    try:
        with tarfile.open(tar) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = inside_root(member.name, f"--data {tar}").rpartition("/")
                stem, _, ext = base.partition(".")  # WebDataset: the key ends at the first dot
                key = f"{folder}/{stem}" if folder else stem
                sample = samples.setdefault(key, {"name": f"{tar}:{key}", "span": None, "label": -1, "captions": None,
                                                  "split": None})
                if f".{ext.lower()}" in IMAGE_EXTENSIONS:
                    sample["span"] = (str(tar), member.offset_data, member.size)
                elif ext in ("cls", "txt", "json"):
                    raw = archive.extractfile(member).read(1 << 20)
                    where = f"--data {tar}: member {member.name}"
                    if ext == "txt":
                        sample["captions"] = decode_captions(raw, where)
                    elif ext == "cls":
                        sample["label"] = shard_label(raw, where)
                    else:
                        sample["split"] = shard_split(raw, where)
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, ValueError) as e:
        raise DatasetError(f"--data: {tar} is not a readable tar shard ({e})") from e
    return [s for s in samples.values() if s["span"] is not None]


def shard_label(raw: bytes, where: str) -> int:
    """A .cls member: a class id, a whole number >= 0 (WebDataset's convention)."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return -1  # no label
    if not re.fullmatch(r"[0-9]+", text):
        raise DatasetError(f"{where}: {text[:40]!r} is not a class number (a whole number >= 0)")
    return int(text)


def shard_split(raw: bytes, where: str) -> str | None:
    """A .json member's "split" (train, test, ...), if it names one."""
    try:
        meta = json.loads(raw)
    except ValueError:
        raise DatasetError(f"{where}: not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("split", ""), str):
        raise DatasetError(f"{where}: expected a JSON object whose \"split\" is text, e.g. {{\"split\": \"train\"}}")
    return meta.get("split")


def read_span(path: str, offset: int, size: int) -> bytes:
    """Bytes of a tar member by position: os.pread shares no file offset, so worker processes forked
    from one another never move each other's reads."""
    fd = _open_files.get(path)
    if fd is None:
        fd = _open_files[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, size, offset)


_open_files: dict[str, int] = {}  # descriptors of the shards read so far, kept open for the process


def load_dataset(data: str, resolution: int, channels: int | None = None, center_crop: bool = True,
                 split: str = "train", preload: bool | None = None, min_side: int | None = None,
                 listed_once: Callable | None = None) -> ImageDataset:
    """Open `data` (see the module docstring). `channels=None`: see `detect_channels`.

    `min_side`: refuse the data, from the image headers alone and before decoding anything, when an
    image is smaller than this (for models that must not learn from upscaled images).
    `listed_once`: make -> make()'s result, computed by one process and shared with the others (a
    folder of millions of files on a network file system is walked once, not once per rank).
    A folder or list that cannot be read (permissions, a failing disk) is refused naming it; an
    image that cannot be read is skipped and reported, as a corrupt one is."""
    try:
        return _open_dataset(data, resolution, channels, center_crop, split, preload, min_side, listed_once)
    except OSError as e:
        raise DatasetError(f"--data {data}: cannot read {e.filename or data} ({e.strerror or e})") from e


def _open_dataset(data: str, resolution: int, channels: int | None, center_crop: bool, split: str,
                  preload: bool | None, min_side: int | None, listed_once: Callable | None) -> ImageDataset:
    if resolution < 1:
        raise DatasetError(f"--resolution {resolution}: must be positive")
    if channels is None:
        channels = detect_channels(data)
    if channels not in (1, 3):
        raise DatasetError(f"--channels {channels}: must be 1 or 3")
    kw = dict(resolution=resolution, channels=channels, center_crop=center_crop)
    if data == "mnist":
        return _mnist(**kw)
    if data == "mnist-captions":
        return _mnist_captions(**kw)
    tars = shard_files(data)
    path = Path(data).expanduser()
    if tars is None and not path.exists():
        raise DatasetError(f"--data {data}: no such file or folder (built-in datasets: {', '.join(BUILTIN_DATASETS)})")
    if tars is not None:
        ds = _shards(tars, split, listed_once or (lambda make: make()), **kw)
    elif path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"--data {data}: a file must be a .zip of images or a .tar shard")
        ds = _image_zip(path, **kw)
    elif (path / "split.csv").exists() and (path / "images").is_dir():
        ds = _captioned(path, split, **kw)
    else:
        ds = _image_folder(path, listed_once or (lambda make: make()), **kw)
    if preload is None:
        preload = len(ds) * channels * resolution * resolution <= PRELOAD_LIMIT_BYTES
    # Headers are read up front only where a model must refuse small images: on a set too large to
    # hold, reading every file before the first step would take hours; the decoding workers skip
    # and report a bad file when they meet it.
    unreadable = _read_headers(ds, min_side) if min_side is not None else []
    if preload:
        ds.preload()
    else:
        ds.bad_files += unreadable
        keep = [i for i, e in enumerate(ds.entries) if e not in set(ds.bad_files)]
        ds._select(keep)
        ds._check_not_empty()
    return ds


GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def detect_channels(data: str, probe: int = 64) -> int:
    """1 when the data is grey (the built-in digits; a folder or zip whose first `probe` images all
    have grey pixel modes, read from their headers only), otherwise 3."""
    if data in BUILTIN_DATASETS:
        return 1
    try:
        return _probe_channels(data, probe)
    except OSError:
        return 3  # load_dataset reports what cannot be read


def _probe_channels(data: str, probe: int) -> int:
    tars = shard_files(data)
    if tars is not None:
        first = tars[0] if tars[0].is_file() else None  # load_dataset reports a missing shard
        spans = [s["span"] for s in tar_samples(first)[:probe]] if first else []
        return _channels_of_modes(io.BytesIO(read_span(*span)) for span in spans)
    path = Path(data).expanduser()
    if not path.exists():
        return 3  # load_dataset reports the missing path
    if path.is_file():
        if not zipfile.is_zipfile(path):
            return 3
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS
                           and not hidden_member(n))[:probe]
            return _channels_of_modes(io.BytesIO(z.read(n)) for n in names)
    root = path / "images" if (path / "split.csv").exists() and (path / "images").is_dir() else path
    return _channels_of_modes(itertools.islice(_first_images(root), probe))


def _first_images(root: Path):
    """A folder's images, one directory at a time in sorted order, hidden ones skipped: a probe of the
    first few lists only the directories it reaches, not the whole tree (millions of files)."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield Path(folder) / name


def _channels_of_modes(sources) -> int:
    modes = set()
    for source in sources:
        try:
            with Image.open(source) as img:
                modes.add(img.mode)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
            continue  # unreadable files are reported when the data is loaded
    return 1 if modes and modes <= GREY_MODES else 3


class ImagesTooSmall(DatasetError):
    """An image is smaller than the resolution a model must not upscale to."""


def _read_headers(ds: ImageDataset, min_side: int | None = None) -> list[str]:
    """One pass over the image headers (not the pixels): the files PIL cannot even identify (empty,
    not images), and with `min_side` a stop at the first image smaller than that."""
    bad = []
    with bar(len(ds), "reading image headers") as progress:
        for i, entry in enumerate(ds.entries):
            try:
                with open_image(io.BytesIO(ds.read_bytes(i))) as img:
                    size = img.size
            except (OSError, UnidentifiedImageError, zipfile.BadZipFile, Image.DecompressionBombError, ValueError):
                bad.append(entry)
                continue
            ds._note_size(size)
            if min_side is not None and min(size) < min_side:
                raise ImagesTooSmall(f"--resolution {min_side}: {entry} in --data {ds.name} is smaller "
                                     f"({size[0]}x{size[1]} px)")
            progress.update(1)
    return bad


class RealStream:
    """Batches of real images in a deterministic order, so a resumed run sees exactly what it would have.

    The order is a fresh permutation per epoch, seeded by (seed, epoch); `position` counts images
    shown and is all a checkpoint needs. Horizontal flips, when on, are decided the same way.
    """

    def __init__(self, dataset: ImageDataset, seed: int, xflip: bool = False, device: str | torch.device = "cpu",
                 workers: int = 0, rank: int = 0, world_size: int = 1):
        self.dataset, self.seed, self.xflip, self.device = dataset, seed, xflip, torch.device(device)
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.position = 0
        self._epoch_cache: tuple | None = None
        self.labels = to_device(dataset.labels_tensor(), self.device)
        self.images = dataset.images.to(self.device) if dataset.images is not None else None
        self.last_indices: torch.Tensor | None = None
        self._batches, self._expected = None, None  # the lazy path's loader and the next call it serves
        self._shards = shard_groups(dataset.spans) if dataset.spans is not None and dataset.images is None else None

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The epoch's order and flips, on the host and (copied once an epoch) on the device."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            n = len(self.dataset)
            order = shard_major_order(self._shards, g) if self._shards else torch.randperm(n, generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            self._epoch_cache = (epoch, order, flips, to_device(order, self.device), to_device(flips, self.device))
        return self._epoch_cache[1:]

    def indices(self, start: int, count: int, on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset indices and flip flags for stream positions [start, start + count), on the host or
        (`on_device`) on the stream's device, cut from the epoch's copy there: no copy per batch."""
        n = len(self.dataset)
        idx, flip = [], []
        pos = start
        while pos < start + count:
            perm, flips, perm_there, flips_there = self._epoch(pos // n)
            if on_device:
                perm, flips = perm_there, flips_there
            lo = pos % n
            take = min(start + count - pos, n - lo)
            idx.append(perm[lo:lo + take])
            flip.append(flips[lo:lo + take])
            pos += take
        return torch.cat(idx), torch.cat(flip)

    def next_batch(self, batch: int, resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `batch` images (this rank's share when distributed) as uint8 on the device, and labels.
        `resolution`: what the model trains at now; images not held in memory are then read from the
        dataset's stored level of that size where it has one (else at full size, for the model to
        scale down), so early progressive phases decode small files. Indices, flips and labels are
        cut from tensors already on the device, and decoded images come from pinned memory without
        blocking: the host never waits for the device here."""
        idx, flip = self.indices(self.position, batch, on_device=True)
        self.position += batch
        idx, flip = self.rank_share(idx, batch), self.rank_share(flip, batch)
        self.last_indices = idx
        if self.images is not None:
            images = self.images[idx]
        else:
            level = resolution if resolution in self.dataset.levels else self.dataset.resolution
            images = self._decoded(self.position - batch, batch, level).to(self.device, non_blocking=True)
        if self.xflip:
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images, self.labels[idx]

    # --- the lazy path: images decoded by DataLoader worker processes, ahead of the step -------------
    def _decoded(self, start: int, batch: int, level: int) -> torch.Tensor:
        """This rank's images of the batch at stream position `start`, decoded by `workers` processes
        that prefetch the batches after it in the same deterministic order (so a resumed run reads
        exactly what it would have). A jump in position, a new batch size or a new level of detail
        starts them afresh."""
        if self._expected != (start, batch, level):
            self.close()
            source = self.dataset if level == self.dataset.resolution else self.dataset.at_level(level)
            loader = torch.utils.data.DataLoader(
                _Images(source), batch_sampler=_StreamBatches(self, start, batch), num_workers=self.workers,
                collate_fn=torch.stack, pin_memory=self.device.type == "cuda",
                prefetch_factor=4 if self.workers else None)
            self._batches = iter(loader)
        self._expected = (start + batch, batch, level)
        return next(self._batches)

    def close(self) -> None:
        """Stop the decoding workers (they also stop with the process)."""
        self._batches, self._expected = None, None

    def rank_share(self, idx: torch.Tensor, batch: int) -> torch.Tensor:
        if self.world_size == 1:
            return idx
        share = batch // self.world_size
        return idx[self.rank * share:(self.rank + 1) * share]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, copied from pinned memory without blocking where that is a GPU."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def shard_groups(spans: list[tuple[str, int, int]]) -> list[torch.Tensor]:
    """Dataset indices of each shard's images, shard by shard."""
    groups: dict[str, list[int]] = {}
    for i, (tar, _, _) in enumerate(spans):
        groups.setdefault(tar, []).append(i)
    return [torch.tensor(g) for g in groups.values()]


def shard_major_order(groups: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """An epoch's order for shards read from disk: the shards in a random order, each one's images
    in a random order of their own, so reads move through one shard at a time (sequential on a
    disk or a network file system) yet every epoch is shuffled; it depends on the seed and epoch
    only, so a resumed run and any number of processes see the same order."""
    return torch.cat([groups[k][torch.randperm(len(groups[k]), generator=g)]
                      for k in torch.randperm(len(groups), generator=g).tolist()])


class _Images(torch.utils.data.Dataset):
    """A dataset's images alone (a file that turns out unreadable is replaced by the next readable one)."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[i][0]


class _StreamBatches(torch.utils.data.Sampler):
    """Dataset indices of this rank's share of each batch from stream position `start` on: the
    stream's own order, batch after batch, for as long as the loader is asked."""

    def __init__(self, stream: RealStream, start: int, batch: int):
        self.stream, self.start, self.batch = stream, start, batch

    def __iter__(self):
        position = self.start
        while True:
            idx, _ = self.stream.indices(position, self.batch)
            yield self.stream.rank_share(idx, self.batch).tolist()
            position += self.batch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return (images.float().clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)
