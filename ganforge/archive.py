"""`ganforge dataset`: convert any data ganforge reads into a resolution-fixed copy, once.

Like stylegan2-ada's dataset_tool: every image is decoded, cropped and resized a single time (bad
files reported and skipped here, not at every start of every run), and written as PNG at the
training resolution with its label (class folders) or its captions (the captioned layout, both
splits kept). Training reads the result like any dataset, without resizing anything, and a zip is
one file to copy to a cluster. A `dataset.json` beside the images records what was converted.
With `lods`, every lower level of detail is stored too (as the official PGGAN kept one set per
level), so a progressive model's early phases decode 4x4 to 64x64 files, not full-size ones.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ganforge.data import LOD_FOLDER, DatasetError, ImageDataset, inside_root, load_dataset, read_utf8
from ganforge.errors import require


def convert(source: str, dest: str | Path, resolution: int, channels: int | None = None,
            center_crop: bool = True, workers: int | None = None, lods: bool = False, shard_size: int | None = None) -> dict:
    """Write `source` at `resolution` to `dest` (a .zip, or a new folder); returns what dataset.json
    says: counts, classes, the files skipped as unreadable. `lods`: also each image box-filtered to
    every lower power-of-two size down to 4x4, under .lod/<size>/ with the image's own path.
    `shard_size`: write WebDataset tar shards of that many images into the folder `dest` instead."""
    dest = Path(dest)
    if dest.exists() and (dest.is_file() or any(dest.iterdir())):
        raise DatasetError(f"{dest}: already exists; give a new .zip or an empty folder")
    refuse_inside_source(source, dest)
    try:
        parts = [(split, load_dataset(source, resolution, channels, center_crop, split=split, preload=False))
                 for split in splits_of(source)]
    except OSError as e:  # a folder or file of the source that cannot be read (permissions, a failing disk)
        raise DatasetError(f"{source}: cannot read {e.filename or source} ({e.strerror or e})") from e
    first = parts[0][1]
    if (first.captions is not None or shard_size) and dest.suffix.lower() == ".zip":
        what = "--shards writes tar shards into a folder" if shard_size else "captioned data converts to a folder"
        raise DatasetError(f"{dest}: {what}, not a .zip")
    if shard_size and lods:
        raise DatasetError("--lods: not with --shards (levels of detail are stored in a .zip or folder)")
    try:
        writer = (ShardsWriter(dest, shard_size) if shard_size else ZipWriter(dest) if dest.suffix.lower() == ".zip"
                  else FolderWriter(dest))
    except OSError as e:  # a read-only or missing place, a full disk
        raise DatasetError(f"{dest}: cannot write there ({e.strerror or e})") from e
    levels = lower_levels(resolution) if lods else []
    skipped, rows, count = [], [], 0
    try:
        for split, ds in parts:
            skipped += ds.bad_files  # found unreadable from their headers while opening
            desc = f"converting {ds.name}" + (f" ({split})" if len(parts) > 1 else "")
            for index, pixels in ds.decoded(workers, desc):
                if isinstance(pixels, Exception):
                    skipped.append(ds.entries[index])
                    continue
                if shard_size:
                    writer.add(f"{count:08d}", png_bytes(pixels), ds.labels[index] if first.class_names else None,
                               ds.captions[index] if ds.captions is not None else None,
                               split if len(parts) > 1 else None)
                    count += 1
                    continue
                name = member_name(ds, index, count)
                writer.write(name, png_bytes(pixels))
                for level in levels:
                    writer.write(f"{LOD_FOLDER}/{level}/{name}", png_bytes(box_down(pixels, level)))
                if ds.captions is not None:
                    writer.write(f"text/{Path(name).relative_to('images').with_suffix('.txt').as_posix()}",
                                 "\n".join(ds.captions[index]).encode("utf-8") + b"\n")
                    rows.append((name, ds.labels[index], split))
                count += 1
        if count == 0:
            raise DatasetError(f"{source}: no readable image to convert")
        summary = {"source": str(source), "resolution": resolution, "channels": first.channels, "images": count,
                   "classes": first.class_names, "captioned": first.captions is not None, "lods": levels, "skipped": skipped}
        if shard_size:
            summary["shards"] = writer.finish()
        elif first.captions is not None:
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([("image", "label", "split"), *rows])
            writer.write("split.csv", text.getvalue().encode("utf-8"))
            writer.write("classes.txt", ("\n".join(first.class_names) + "\n").encode("utf-8"))
        writer.write("dataset.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        writer.close()
    except BaseException as e:
        writer.abandon()
        if isinstance(e, OSError):  # reads failing are skipped files above: this is the writing side
            raise DatasetError(f"{dest}: cannot write there ({e.strerror or e}); the partial conversion "
                               "was removed") from e
        raise
    return summary


def refuse_inside_source(source: str, dest: Path) -> None:
    """A destination inside the source folder would become part of the source: its images one more
    class (or more images) the next time the folder is read."""
    folder = Path(source).expanduser()
    if folder.is_dir() and dest.resolve().is_relative_to(folder.resolve()):
        raise DatasetError(f"{dest}: inside the source folder {source}; the converted images would be read as "
                           "part of it; write it elsewhere")


def lower_levels(resolution: int) -> list[int]:
    """Every power-of-two size below `resolution` down to 4 (PGGAN's first), largest first."""
    levels = []
    while resolution % 2 == 0 and resolution // 2 >= 4:
        resolution //= 2
        levels.append(resolution)
    return levels


def box_down(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [C, R, R] averaged over R/size x R/size blocks: the box filter PGGAN's training applies
    to full-size reals (F.adaptive_avg_pool2d), rounded to uint8."""
    return F.avg_pool2d(pixels.float()[None], pixels.shape[-1] // size)[0].round().to(torch.uint8)


def splits_of(source: str) -> list[str]:
    """Both splits of a captioned layout (and any other rows under 'all'); one pass for anything else."""
    split_csv = Path(source).expanduser() / "split.csv"
    if not split_csv.is_file():
        return ["all"]
    rows = csv.DictReader(io.StringIO(read_utf8(split_csv), newline=""))
    found = list(dict.fromkeys(row.get("split", "") for row in rows))
    return found or ["all"]


def member_name(ds: ImageDataset, index: int, count: int) -> str:
    """images/<n>.png (captioned), <class>/<n>.png (labelled) or <n>.png: the layouts ganforge reads."""
    if ds.captions is not None:
        return f"images/{count:08d}.png"
    if ds.class_names:
        return f"{ds.class_names[ds.labels[index]]}/{count:08d}.png"
    return f"{count:08d}.png"


def png_bytes(pixels) -> bytes:
    array = pixels.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def unique_temporary(dest: Path, folder: bool) -> Path:
    """A new file or folder beside `dest` (so the final rename stays on one file system) with a name
    no one else has: a fixed name could be a user's own file, truncated or deleted when abandoned."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        path = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(handle)
        path = Path(name)
    umask = os.umask(0)  # tempfile makes it private; the result gets the permissions a new one would
    os.umask(umask)
    path.chmod((0o777 if folder else 0o666) & ~umask)
    return path


class ZipWriter:
    """Members stored as they are (PNG is compressed already), into a temporary file renamed at the end."""

    def __init__(self, dest: Path):
        self.dest, self.temporary = dest, unique_temporary(dest, folder=False)
        self.zip = zipfile.ZipFile(self.temporary, "w", compression=zipfile.ZIP_STORED)

    def write(self, name: str, data: bytes) -> None:
        # Names hold class names read from the source: a '../' or '/' member would be extracted outside.
        self.zip.writestr(inside_root(name, str(self.dest)), data)

    def close(self) -> None:
        self.zip.close()
        os.replace(self.temporary, self.dest)

    def abandon(self) -> None:
        try:
            self.zip.close()
        except OSError:  # closing writes the directory, which a full disk refuses: the file goes anyway
            pass
        finally:
            self.temporary.unlink(missing_ok=True)


class FolderWriter:
    """Files into a temporary folder renamed at the end: an interrupted conversion leaves nothing half-made."""

    def __init__(self, dest: Path):
        self.dest, self.temporary = dest, unique_temporary(dest, folder=True)

    def write(self, name: str, data: bytes) -> None:
        path = self.temporary / inside_root(name, str(self.dest))  # names hold class names read from the source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def close(self) -> None:
        if self.dest.exists():  # an empty folder given as the destination
            self.dest.rmdir()
        os.replace(self.temporary, self.dest)

    def abandon(self) -> None:
        shutil.rmtree(self.temporary, ignore_errors=True)


class ShardsWriter(FolderWriter):
    """WebDataset tar shards (webdataset's ShardWriter: <key>.png, <key>.cls, <key>.txt, <key>.json)
    of `size` samples each, in a temporary folder renamed at the end, as FolderWriter does."""

    def __init__(self, dest: Path, size: int):
        require("webdataset", "shards", "--shards")
        super().__init__(dest)
        import webdataset

        self.shards = webdataset.ShardWriter(str(self.temporary / "%06d.tar"), maxcount=size, verbose=0)

    def add(self, key: str, png: bytes, label: int | None, captions: list[str] | None, split: str | None) -> None:
        sample = {"__key__": key, "png": png}
        if label is not None:
            sample["cls"] = str(label).encode()
        if captions is not None:
            sample["txt"] = ("\n".join(captions) + "\n").encode("utf-8")
        if split is not None:
            sample["json"] = json.dumps({"split": split}).encode()
        self.shards.write(sample)

    def finish(self) -> list[str]:
        """Close the last shard; the shards' file names."""
        self.shards.close()
        return sorted(p.name for p in self.temporary.glob("*.tar"))

    def abandon(self) -> None:
        try:
            self.shards.close()
        except OSError:  # closing flushes the last shard, which a full disk refuses: the folder goes anyway
            pass
        finally:
            super().abandon()
