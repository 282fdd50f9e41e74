"""Hostile input: ordinary mistakes and abuse, run against the command line, one table of outcomes.

    python benchmarks/hostile_inputs.py                 # every case
    python benchmarks/hostile_inputs.py --cases 1,5,9   # some

Each case runs `ganforge ...` in this process (click's test runner: the same code as the shell
command, without a torch import per case) against a small finished run and files it makes, or,
where the fault lives outside the process (an environment variable read once, a right dropped),
as a real subprocess; then it is judged:
- clear error: a non-zero exit with one line naming the option or file, no traceback;
- handled: exit 0 and the right result (the case's own check);
- traceback: an exception escaped (a fault);
- silent: exit 0 with a wrong result;
- skipped: the fault could not be made here (mounting a tmpfs needs root).
"Work lost" says whether files that existed before the case were changed or removed.
Faults are real where they are real: full disks and read-only disks are small tmpfs mounts, crafted
archives are written byte for byte, an unreadable source is read by a process without root's
right to read anything (setpriv). Signals (Ctrl-C, SIGTERM, SIGKILL) are exercised by tests/ and
benchmarks/kill_test.py instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from click.testing import CliRunner

from ganforge.cli import main

TINY = ["--resolution", "16", "--batch", "16", "--base-channels", "8", "--kimg", "0.032", "--tick", "0.032",
        "--sample-every", "0.032", "--snap", "0.032", "--quiet"]

DFGAN = ["--model", "dfgan", "--resolution", "16", "--batch", "4", "--kimg", "0.008", "--model-opt", "nf=4",
         "--model-opt", "text_encoder=bilstm", "--quiet"]


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]                     # work folder -> command line
    check: Callable[[Path, object], bool] = lambda work, result: True   # for exit 0: is the result right?
    guard: Callable[[Path], list[Path]] = lambda work: []               # files that must survive unchanged
    process: list[str] | None = None  # run as a subprocess, after this prefix (e.g. setpriv ...)
    env: dict | None = None           # for a subprocess


class Unavailable(Exception):
    """The fault cannot be made on this machine (no right to mount): the case is skipped."""


MOUNTS: list[Path] = []


def tmpfs(work: Path, name: str, size: str = "1m", read_only: bool = False) -> Path:
    """A real small file system at work/name (unmounted at the end)."""
    point = work / name
    point.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
        raise Unavailable("cannot mount a tmpfs here")
    MOUNTS.append(point)
    return point


def full_disk(work: Path, name: str = "full", leave: int = 8192) -> Path:
    """A 1 MiB tmpfs filled but for `leave` bytes."""
    disk = tmpfs(work, name)
    (disk / ".filler").write_bytes(bytes(shutil.disk_usage(disk).free - leave))
    return disk


def read_only(work: Path) -> Path:
    return tmpfs(work, "ro", read_only=True)


def noise_pngs(work: Path, name: str, n: int = 100, size: int = 64) -> Path:
    """Incompressible PNGs: n x 12 kB at 64x64, more than a 1 MiB disk holds."""
    import numpy as np
    from PIL import Image

    folder = work / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def png_bytes(size: int = 16) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def crafted_zip(work: Path, name: str, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(work / name, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    return work / name


def crafted_tar(work: Path, name: str, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(work / name, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return work / name


def captioned(work: Path, name: str, caption: bytes = b"a red square\n", split_csv: bytes | None = None,
              classes: bytes = b"red\n") -> Path:
    root = work / name
    (root / "images").mkdir(parents=True)
    (root / "text").mkdir()
    for i in range(4):
        (root / "images" / f"{i}.png").write_bytes(png_bytes())
        (root / "text" / f"{i}.txt").write_bytes(caption if i == 1 else b"a red square\n")
    (root / "split.csv").write_bytes(split_csv or b"image,label,split\n" + b"".join(
        f"images/{i}.png,0,train\n".encode() for i in range(4)))
    (root / "classes.txt").write_bytes(classes)
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def broken_ffmpeg(work: Path) -> str:
    path = work / "ffmpeg"
    path.write_text("#!/bin/sh\necho 'ffmpeg: broken' >&2\nexit 1\n")
    path.chmod(0o755)
    return str(path)


def unreadable(folder: Path) -> Path:
    folder.chmod(0)
    return folder


def torn(path: Path, keep: int = 100) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def symlinked_stats(work: Path) -> Path:
    run = copy_run(work, "linked")
    (work / "elsewhere.jsonl").write_text('{"kimg": 1, "loss/G": 1}\n{"kimg": 2, "loss/G": 2}\n')
    (run / "stats.jsonl").unlink()
    os.symlink(work / "elsewhere.jsonl", run / "stats.jsonl")
    return run


def wrong_shape_snapshot(work: Path) -> Path:
    import torch

    run = copy_run(work, "reshaped")
    snap = torch.load(run / "latest.pt", weights_only=True)
    name = next(k for k, v in snap["state"].items() if k.startswith("G.") and v.dim() > 1)
    snap["state"][name] = torch.zeros(3, 3)
    torch.save(snap, run / "latest.pt")
    return run


def port_taken(work: Path) -> int:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    HELD.append(holder)
    return holder.getsockname()[1]


HELD: list = []


def digits_folder(work: Path, name: str, n: int = 20, corrupt_first: bool = False) -> Path:
    from PIL import Image

    from ganforge.data import load_dataset

    folder = work / name
    folder.mkdir(exist_ok=True)
    for i, img in enumerate(load_dataset("mnist", 16).images[:n]):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    if corrupt_first:
        (folder / "000.png").write_bytes(b"not a png")
    return folder


def copy_run(work: Path, name: str) -> Path:
    shutil.copytree(work / "run", work / name)
    return work / name


def _foreign_snapshot_folder(work: Path) -> Path:
    folder = work / "thesis"
    folder.mkdir()
    shutil.copy(work / "run" / "latest.pt", folder / "model.pt")
    (folder / ".thesis.tmp").write_text("precious")
    return folder / "model.pt"


def _locked_run(work: Path) -> Path:
    run = copy_run(work, "locked")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (run / ".lock").write_text(str(holder.pid))
    return run


def _torn_metric_cache(work: Path) -> Path:
    run = copy_run(work, "torn-cache")
    (run / "metric-cache").mkdir()
    args = ["evaluate", str(run), "--metrics", "acc", "--n", "20"]
    CliRunner().invoke(main, args)
    for cached in (run / "metric-cache").glob("*.pt"):
        cached.write_bytes(cached.read_bytes()[:100])  # torn by a kill mid-write
    return run


def _other_model_copied_in(work: Path) -> Path:
    run = copy_run(work, "swapped")
    CliRunner().invoke(main, ["train", "--model", "began", *TINY, "--outdir", str(work / "began")])
    shutil.copy(next((work / "began").iterdir()) / "latest.pt", run / "latest.pt")
    return run


def _empty_class(work: Path) -> Path:
    for name in ("ant", "cat"):
        digits_folder(work / "classes", name, n=3) if (work / "classes").mkdir(exist_ok=True) is None else None
    (work / "classes" / "bee").mkdir()
    return work / "classes"


CASES = [
    Case("--outdir is a file", lambda w: ["train", *TINY, "--outdir", str(_file(w, "afile"))]),
    Case("generate --out names a file", lambda w: ["generate", str(w / "run"), "--out", str(_file(w, "out"))]),
    Case("export --out unwritable", lambda w: ["export", str(w / "run"), "--out", str(_file(w, "f2") / "g.onnx")]),
    Case("evaluate --out unwritable", lambda w: ["evaluate", str(w / "run"), "--metrics", "swd", "--n", "20",
                                                "--out", str(_file(w, "f3") / "r.json")]),
    Case("--device gpu0", lambda w: ["train", *TINY, "--device", "gpu0", "--outdir", str(w / "r")]),
    Case("generate --device cuda without a GPU", lambda w: ["generate", str(w / "run"), "--device", "cuda"]),
    Case("evaluate --fake with a corrupt first file", lambda w: [
        "evaluate", "--fake", str(digits_folder(w, "fake", corrupt_first=True)), "--real", str(digits_folder(w, "real")),
        "--metrics", "swd", "--n", "19", "--out", str(w / "r.json")],
        check=lambda w, r: json.loads((w / "r.json").read_text())["swd"]["n"] == 19),
    Case("--model-opt base_channels=abc", lambda w: ["train", *TINY, "--model-opt", "base_channels=abc", "--outdir", str(w / "r")]),
    Case("--model-opt resolution=64", lambda w: ["train", *TINY, "--model-opt", "resolution=64", "--outdir", str(w / "r")]),
    Case("--model-opt nonsense=1", lambda w: ["train", *TINY, "--model-opt", "nonsense=1", "--outdir", str(w / "r")]),
    Case("torn metric cache", lambda w: ["evaluate", str(_torn_metric_cache(w)), "--metrics", "acc", "--n", "20"],
         check=lambda w, r: '"conditional_accuracy"' in r.output),
    Case("--resolution 4096 on the built-in digits", lambda w: ["train", "--resolution", "4096", "--outdir", str(w / "r")]),
    Case("--batch 10**9", lambda w: ["train", "--batch", str(10**9), "--outdir", str(w / "r")]),
    Case("generate --n 10**7", lambda w: ["generate", str(w / "run"), "--n", str(10**7), "--out", str(w / "big")]),
    Case("--snap 0.016: kept snapshots never collide", lambda w: ["train", *TINY[:-7], "--kimg", "0.048", "--snap", "0.016",
                                                                 "--quiet", "--outdir", str(w / "snaps")],
         check=lambda w, r: len(list(next((w / "snaps").iterdir()).glob("snapshot-*.pt"))) == 3),
    Case("--kimg below one image", lambda w: ["train", "--kimg", "0.0001", "--outdir", str(w / "r")]),
    Case("an empty class folder", lambda w: ["train", *TINY, "--data", str(_empty_class(w)), "--outdir", str(w / "r")]),
    Case("generate --out x.gif", lambda w: ["generate", str(w / "run"), "--n", "4", "--out", str(w / "x.gif")],
         check=lambda w, r: (w / "x.gif").is_file()),
    Case("evaluate against one real image", lambda w: [
        "evaluate", "--fake", str(digits_folder(w, "fake1", n=4)), "--real", str(digits_folder(w, "real1", n=1)),
        "--metrics", "swd,msssim", "--n", "4"]),
    Case("plot a stats.jsonl torn by a kill", lambda w: ["plot", str(_torn_stats(w))],
         check=lambda w, r: (w / "torn-stats" / "stats.png").exists()),
    Case("resume a finished run", lambda w: ["train", "--resume", str(copy_run(w, "finished"))]),
    Case("resume a snapshot outside a run directory", lambda w: ["train", "--resume", str(_foreign_snapshot_folder(w)),
                                                                "--kimg", "0.096"],
         guard=lambda w: [w / "thesis" / ".thesis.tmp", w / "thesis" / "model.pt"]),
    Case("resume a run with another model's snapshot copied in", lambda w: [
        "train", "--resume", str(_other_model_copied_in(w)), "--kimg", "0.096"],
        guard=lambda w: [w / "swapped" / "stats.jsonl", w / "swapped" / "latest.pt"]),
    Case("resume a run another process is training", lambda w: ["train", "--resume", str(_locked_run(w)), "--kimg", "0.096"],
         guard=lambda w: [w / "locked" / "stats.jsonl", w / "locked" / "latest.pt"]),
    Case("--resume a garbage file", lambda w: ["train", "--resume", str(_garbage(w))]),
    Case("--model stylegan9", lambda w: ["train", "--model", "stylegan9"]),
    Case("--data that does not exist", lambda w: ["train", "--data", str(w / "nowhere"), "--outdir", str(w / "r")]),
    Case("generate --label out of range", lambda w: ["generate", str(w / "run"), "--label", "10"]),
    Case("--metrics fud", lambda w: ["train", *TINY, "--metrics", "fud", "--outdir", str(w / "r")]),
    Case("--gpus 8 without GPUs", lambda w: ["train", "--gpus", "8", "--outdir", str(w / "r")]),
    # --- dataset: crafted archives, unreadable sources, read-only and full disks ---------------------
    Case("dataset: zip members ../ and /abs", lambda w: ["dataset", str(crafted_zip(w, "evil.zip", {
        "../../x/a.png": png_bytes(), "/abs/b.png": png_bytes(), "ok.png": png_bytes()})), str(w / "out"),
        "--resolution", "16"]),
    Case("dataset: tar member ../", lambda w: ["dataset", str(crafted_tar(w, "evil.tar", {
        "../a.png": png_bytes(), "b.png": png_bytes()})), str(w / "out"), "--resolution", "16"]),
    Case("dataset: split.csv row ../../etc/passwd", lambda w: ["dataset", str(captioned(
        w, "cap", split_csv=b"image,label,split\n../../etc/passwd,0,train\n")), str(w / "out"), "--resolution", "16"]),
    Case("dataset: unreadable source folder (no root rights)", lambda w: [
        "dataset", str(unreadable(digits_folder(w, "locked"))), str(w / "out.zip"), "--resolution", "16"],
        process=["setpriv", "--bounding-set=-dac_override,-dac_read_search"]),
    Case("dataset: one unreadable image (no root rights)", lambda w: [
        "dataset", str(_one_unreadable(w)), str(w / "out.zip"), "--resolution", "16"],
        process=["setpriv", "--bounding-set=-dac_override,-dac_read_search"],
        check=lambda w, r: "skipped 1 unreadable" in r.output),
    Case("dataset: read-only destination (.zip)", lambda w: ["dataset", str(digits_folder(w, "src")),
                                                             str(read_only(w) / "o.zip"), "--resolution", "16"]),
    Case("dataset: read-only destination (folder)", lambda w: ["dataset", str(digits_folder(w, "src")),
                                                               str(read_only(w) / "o"), "--resolution", "16"]),
    Case("dataset: read-only destination (--shards)", lambda w: ["dataset", str(digits_folder(w, "src")),
                                                                 str(read_only(w) / "o"), "--resolution", "16", "--shards", "5"]),
    Case("dataset: disk full (.zip), temporary removed", lambda w: ["dataset", str(noise_pngs(w, "big")),
                                                                    str(tmpfs(w, "d") / "o.zip"), "--resolution", "64"],
         guard=lambda w: []),
    Case("dataset: disk full (folder)", lambda w: ["dataset", str(noise_pngs(w, "big")), str(tmpfs(w, "d") / "o"),
                                                   "--resolution", "64"]),
    Case("dataset: disk full (--shards)", lambda w: ["dataset", str(noise_pngs(w, "big")), str(tmpfs(w, "d") / "o"),
                                                     "--resolution", "64", "--shards", "30"]),
    Case("dataset: destination inside the source", lambda w: ["dataset", str(digits_folder(w, "src")),
                                                              str(w / "src" / "conv"), "--resolution", "16"]),
    Case("dataset: shard .json is a list", lambda w: ["dataset", str(crafted_tar(w, "s.tar", {
        "a.png": png_bytes(), "a.json": b"[1]", "b.png": png_bytes()})), str(w / "out"), "--resolution", "16"]),
    Case("dataset: shard .cls negative", lambda w: ["dataset", str(crafted_tar(w, "s.tar", {
        "a.png": png_bytes(), "a.cls": b"-5", "b.png": png_bytes(), "b.cls": b"1"})), str(w / "out"), "--resolution", "16"]),
    Case("dataset: shard .cls missing on some samples", lambda w: ["dataset", str(crafted_tar(w, "s.tar", {
        "a.png": png_bytes(), "b.png": png_bytes(), "b.cls": b"1"})), str(w / "out"), "--resolution", "16"]),
    Case("dataset: shard .cls not a number", lambda w: ["dataset", str(crafted_tar(w, "s.tar", {
        "a.png": png_bytes(), "a.cls": b"seven"})), str(w / "out"), "--resolution", "16"]),
    Case("dataset: shard truncated", lambda w: ["dataset", str(torn(crafted_tar(w, "s.tar", {
        "a.png": png_bytes(), "a.cls": b"1", "b.png": png_bytes()}), 700)), str(w / "out"), "--resolution", "16"]),
    Case("dataset: shard image member garbage", lambda w: ["dataset", str(crafted_tar(w, "s.tar", {
        "a.png": b"garbage", "b.png": png_bytes()})), str(w / "out"), "--resolution", "16"],
        check=lambda w, r: "skipped 1 unreadable" in r.output),
    Case("dataset: a torn zip", lambda w: ["dataset", str(torn(crafted_zip(w, "t.zip", {"a.png": png_bytes()}), 60)),
                                           str(w / "out.zip"), "--resolution", "16"]),
    Case("dataset: a PNG declaring 70000x70000 (bomb)", lambda w: ["dataset", str(_with_bomb(w)), str(w / "o.zip"),
                                                                   "--resolution", "16"],
         check=lambda w, r: "skipped 1 unreadable" in r.output),
    Case("dataset: captions in UTF-16 with a BOM", lambda w: ["dataset", str(captioned(
        w, "cap", "un oiseau d\xe9j\xe0 vu\n".encode("utf-16"))), str(w / "out"), "--resolution", "16"],
        check=lambda w, r: "un oiseau d\xe9j\xe0 vu" in (w / "out" / "text" / "00000001.txt").read_text("utf-8")),
    Case("dataset: captions in Latin-1", lambda w: ["dataset", str(captioned(
        w, "cap", "un oiseau d\xe9j\xe0 vu\n".encode("latin-1"))), str(w / "out"), "--resolution", "16"]),
    Case("dataset: captions UTF-16 without a BOM", lambda w: ["dataset", str(captioned(
        w, "cap", "a bird\n".encode("utf-16-le"))), str(w / "out"), "--resolution", "16"]),
    Case("dataset: split.csv in Latin-1", lambda w: ["dataset", str(captioned(
        w, "cap", split_csv="image,label,split\nimages/0.png,0,tr\xe4in\n".encode("latin-1"))), str(w / "out"),
        "--resolution", "16"]),
    Case("dataset: split.csv label out of range", lambda w: ["dataset", str(captioned(
        w, "cap", split_csv=b"image,label,split\nimages/0.png,7,train\n")), str(w / "out"), "--resolution", "16"]),
    Case("dataset: destination an existing file", lambda w: ["dataset", str(digits_folder(w, "src")),
                                                             str(_file(w, "exists.zip")), "--resolution", "16"],
         guard=lambda w: [w / "exists.zip"]),
    Case("dataset: --resolution 3", lambda w: ["dataset", str(digits_folder(w, "src")), str(w / "o.zip"), "--resolution", "3"]),
    Case("dataset: --shards 0", lambda w: ["dataset", str(digits_folder(w, "src")), str(w / "o"), "--resolution", "16",
                                           "--shards", "0"]),
    Case("dataset: --lods with --shards", lambda w: ["dataset", str(digits_folder(w, "src")), str(w / "o"),
                                                     "--resolution", "16", "--lods", "--shards", "5"]),
    Case("dataset: source an empty folder", lambda w: ["dataset", str(_mkdir(w, "empty")), str(w / "o.zip"),
                                                       "--resolution", "16"]),
    Case("dataset: source a text file", lambda w: ["dataset", str(_file(w, "notes.txt")), str(w / "o.zip"),
                                                   "--resolution", "16"]),
    Case("dataset: all images corrupt", lambda w: ["dataset", str(_corrupt_folder(w)), str(w / "o.zip"), "--resolution", "16"]),
    # --- train and resume ------------------------------------------------------------------------------
    Case("train: --data a zip with a ../ member", lambda w: ["train", *TINY, "--data", str(crafted_zip(w, "evil.zip", {
        "../a.png": png_bytes(), "b.png": png_bytes()})), "--model", "dcgan", "--outdir", str(w / "r")]),
    Case("train: --data an unreadable folder (no root rights)", lambda w: [
        "train", *TINY, "--data", str(unreadable(digits_folder(w, "locked"))), "--outdir", str(w / "r")],
        process=["setpriv", "--bounding-set=-dac_override,-dac_read_search"]),
    Case("train: --data a shard with a negative label", lambda w: ["train", *TINY, "--data", str(crafted_tar(
        w, "s.tar", {"a.png": png_bytes(), "a.cls": b"-3", "b.png": png_bytes(), "b.cls": b"0"})), "--outdir", str(w / "r")]),
    Case("train: --data captions in Latin-1 (dfgan)", lambda w: [
        "train", *DFGAN, "--data", str(captioned(w, "cap", "d\xe9j\xe0\n".encode("latin-1"))), "--outdir", str(w / "r")]),
    Case("train: --outdir on a read-only disk", lambda w: ["train", *TINY, "--outdir", str(read_only(w) / "runs")]),
    Case("train: --outdir on a full disk", lambda w: ["train", *TINY, "--outdir", str(full_disk(w) / "runs")]),
    Case("resume: the disk fills during a grid write", lambda w: ["train", "--resume", str(_run_on_full_disk(w)),
                                                                  "--kimg", "0.128", "--quiet"],
         guard=lambda w: [w / "disk" / "run" / "latest.pt"]),
    Case("resume: a torn latest.pt", lambda w: ["train", "--resume", str(_torn_latest(w)), "--kimg", "0.096"],
         guard=lambda w: [w / "torn" / "stats.jsonl"]),
    Case("resume: a snapshot with a wrong-shape tensor", lambda w: ["train", "--resume", str(wrong_shape_snapshot(w)),
                                                                    "--kimg", "0.096"],
         guard=lambda w: [w / "reshaped" / "stats.jsonl"]),
    Case("resume: --resume a folder that is not a run", lambda w: ["train", "--resume", str(_mkdir(w, "plain"))]),
    Case("resume: change --model on resume", lambda w: ["train", "--resume", str(copy_run(w, "m")), "--model", "began",
                                                        "--kimg", "0.096"], guard=lambda w: [w / "m" / "latest.pt"]),
    Case("resume: change --resolution on resume", lambda w: ["train", "--resume", str(copy_run(w, "m")),
                                                             "--resolution", "32", "--kimg", "0.096"],
         guard=lambda w: [w / "m" / "latest.pt"]),
    Case("train: --tick 0", lambda w: ["train", *TINY, "--tick", "0", "--outdir", str(w / "r")]),
    Case("train: --sample-every -1", lambda w: ["train", *TINY, "--sample-every", "-1", "--outdir", str(w / "r")]),
    Case("train: --augment-p 2", lambda w: ["train", *TINY, "--augment-p", "2", "--outdir", str(w / "r")]),
    Case("train: --metrics-n 1", lambda w: ["train", *TINY, "--metrics", "swd", "--metrics-n", "1", "--outdir", str(w / "r")]),
    Case("train: --metrics swd at 8x8", lambda w: ["train", *TINY[2:], "--resolution", "8", "--metrics", "swd",
                                                   "--metrics-n", "16", "--outdir", str(w / "r")]),
    Case("train: --model dfgan on images without captions", lambda w: ["train", *DFGAN, "--data",
                                                                       str(digits_folder(w, "plain")), "--outdir", str(w / "r")]),
    Case("train: --model cdcgan on unlabelled images", lambda w: ["train", *TINY, "--data", str(digits_folder(w, "plain")),
                                                                  "--outdir", str(w / "r")]),
    Case("train: --model pggan --resolution 2", lambda w: ["train", "--model", "pggan", "--resolution", "2",
                                                           "--outdir", str(w / "r")]),
    Case("train: --resolution 12", lambda w: ["train", "--resolution", "12", "--outdir", str(w / "r")]),
    Case("train: --seed -1", lambda w: ["train", *TINY, "--seed", "-1", "--outdir", str(w / "r")]),
    Case("train: --workers -1", lambda w: ["train", *TINY, "--workers", "-1", "--outdir", str(w / "r")]),
    Case("train: --model-opt lr=-1", lambda w: ["train", *TINY, "--model-opt", "lr=-1", "--outdir", str(w / "r")]),
    Case("train: --model-opt lr=nan", lambda w: ["train", *TINY, "--model-opt", "lr=NaN", "--outdir", str(w / "r")]),
    Case("train: --model-opt base_channels=0", lambda w: ["train", *TINY, "--model-opt", "base_channels=0",
                                                          "--outdir", str(w / "r")]),
    Case("train: --model-opt z_dim=-4", lambda w: ["train", *TINY, "--model-opt", "z_dim=-4", "--outdir", str(w / "r")]),
    Case("train: --model-opt 'noequals'", lambda w: ["train", *TINY, "--model-opt", "noequals", "--outdir", str(w / "r")]),
    Case("train: --kimg nan", lambda w: ["train", *TINY, "--kimg", "nan", "--outdir", str(w / "r")]),
    Case("train: --kimg -1", lambda w: ["train", *TINY, "--kimg", "-1", "--outdir", str(w / "r")]),
    Case("train: --best-metric not among --metrics", lambda w: ["train", *TINY, "--metrics", "swd", "--best-metric",
                                                                "fid", "--outdir", str(w / "r")]),
    Case("train: --data a folder of one image (dcgan)", lambda w: ["train", *TINY, "--model", "dcgan", "--data",
                                                                   str(digits_folder(w, "one", n=1)), "--outdir",
                                                                   str(w / "r")],
         check=lambda w, r: "run directory" in r.output),
    Case("train: --model began --gamma nan", lambda w: ["train", "--model", "began", "--gamma", "nan", *TINY,
                                                          "--outdir", str(w / "r")]),
    Case("train: a tick of one step states a true img/s", lambda w: ["train", *TINY[:6], "--kimg", "0.016", "--tick", "0.016",
                                                                     "--outdir", str(w / "one")],
         check=lambda w, r: float(re.search(r"from ([\d,.]+) img/s", next((w / "one").glob("*/log.txt")).read_text())[1]
                                  .replace(",", "")) < 20_000),
    # --- generate ------------------------------------------------------------------------------------
    Case("generate: --out on a read-only disk", lambda w: ["generate", str(w / "run"), "--out", str(read_only(w) / "g.png")]),
    Case("generate: --out on a full disk", lambda w: ["generate", str(w / "run"), "--n", "64",
                                                      "--out", str(full_disk(w, leave=4096) / "g.png")]),
    Case("generate: --out folder on a full disk", lambda w: ["generate", str(w / "run"), "--n", "64",
                                                             "--out", str(full_disk(w, leave=4096) / "many")]),
    Case("generate: --out onto the run's reals.png", lambda w: ["generate", str(w / "run"), "--n", "4", "--out",
                                                                  str(w / "run" / "reals.png")],
         guard=lambda w: [w / "run" / "reals.png"]),
    Case("generate: --psi nan", lambda w: ["generate", str(w / "run"), "--psi", "nan", "--out", str(w / "g.png")],
         check=lambda w, r: False),  # no grid drawn with a NaN truncation is right (it was all black)
    Case("generate: a torn latest.pt", lambda w: ["generate", str(_torn_latest(w)), "--out", str(w / "g.png")]),
    Case("generate: a wrong-shape tensor", lambda w: ["generate", str(wrong_shape_snapshot(w)), "--out", str(w / "g.png")]),
    Case("generate: a folder with no snapshot", lambda w: ["generate", str(_mkdir(w, "nosnap")), "--out", str(w / "g.png")]),
    Case("generate: --n 0", lambda w: ["generate", str(w / "run"), "--n", "0"]),
    Case("generate: --label -1", lambda w: ["generate", str(w / "run"), "--label", "-1", "--out", str(w / "g.png")]),
    Case("generate: --psi 5", lambda w: ["generate", str(w / "run"), "--psi", "5"]),
    Case("generate: --prompt on a class run", lambda w: ["generate", str(w / "run"), "--prompt", "a bird",
                                                         "--out", str(w / "g.png")]),
    Case("generate: --prompts a Latin-1 file on a class run", lambda w: [
        "generate", str(w / "run"), "--prompts", str(_latin1(w)), "--out", str(w / "g.png")]),
    Case("generate: --out x.jpg", lambda w: ["generate", str(w / "run"), "--n", "4", "--out", str(w / "x.jpg")],
         check=lambda w, r: (w / "x.jpg").is_file() or (w / "x.jpg").is_dir()),
    Case("generate: --device cuda:7", lambda w: ["generate", str(w / "run"), "--device", "cuda:7"]),
    # --- evaluate ------------------------------------------------------------------------------------
    Case("evaluate: --fake one image", lambda w: ["evaluate", "--fake", str(digits_folder(w, "f", n=1)), "--real",
                                                  str(digits_folder(w, "real")), "--metrics", "swd"]),
    Case("evaluate: --real one image (run)", lambda w: ["evaluate", str(w / "run"), "--real",
                                                        str(digits_folder(w, "one", n=1)), "--metrics", "swd", "--n", "8"]),
    Case("evaluate: --fake an empty folder", lambda w: ["evaluate", "--fake", str(_mkdir(w, "empty")), "--real",
                                                        str(digits_folder(w, "real")), "--metrics", "swd"]),
    Case("evaluate: --fake without --real", lambda w: ["evaluate", "--fake", str(digits_folder(w, "f"))]),
    Case("evaluate: a run and --fake", lambda w: ["evaluate", str(w / "run"), "--fake", str(digits_folder(w, "f"))]),
    Case("evaluate: --real a missing folder", lambda w: ["evaluate", str(w / "run"), "--real", str(w / "nowhere"),
                                                         "--metrics", "swd", "--n", "8"]),
    Case("evaluate: --metrics ''", lambda w: ["evaluate", str(w / "run"), "--metrics", "", "--n", "8"]),
    Case("evaluate: --metrics acc on unlabelled --real", lambda w: ["evaluate", str(w / "run"), "--real",
                                                                    str(digits_folder(w, "plain")), "--metrics", "acc",
                                                                    "--n", "8"]),
    Case("evaluate: --metrics rprec on a class run", lambda w: ["evaluate", str(w / "run"), "--metrics", "rprec", "--n", "8"]),
    Case("evaluate: --out on a read-only disk", lambda w: ["evaluate", str(w / "run"), "--metrics", "swd", "--n", "8",
                                                           "--out", str(read_only(w) / "r.json")]),
    Case("evaluate: --cache-dir is a file", lambda w: ["evaluate", str(w / "run"), "--metrics", "swd", "--n", "8",
                                                       "--cache-dir", str(_file(w, "cache"))]),
    Case("evaluate: --cache-dir on a read-only disk", lambda w: ["evaluate", str(w / "run"), "--metrics", "swd",
                                                                 "--n", "8", "--cache-dir", str(read_only(w) / "c")]),
    Case("evaluate: --resolution 3", lambda w: ["evaluate", "--fake", str(digits_folder(w, "f")), "--real",
                                                str(digits_folder(w, "real")), "--resolution", "3"]),
    Case("evaluate: --fake all corrupt", lambda w: ["evaluate", "--fake", str(_corrupt_folder(w)), "--real",
                                                    str(digits_folder(w, "real")), "--metrics", "swd"]),
    Case("evaluate: --split nonsense", lambda w: ["evaluate", str(w / "run"), "--split", "nonsense"]),
    # --- export --------------------------------------------------------------------------------------
    Case("export: --out on a read-only disk", lambda w: ["export", str(w / "run"), "--format", "torchscript",
                                                         "--out", str(read_only(w) / "g.pt")]),
    Case("export: --out on a full disk", lambda w: ["export", str(w / "run"), "--format", "torchscript",
                                                    "--out", str(full_disk(w) / "g.pt")], process=[]),
    Case("export: a torn snapshot", lambda w: ["export", str(_torn_latest(w)), "--format", "torchscript",
                                               "--out", str(w / "g.pt")]),
    Case("export: --format tflite", lambda w: ["export", str(w / "run"), "--format", "tflite"]),
    Case("export: --out onto latest.pt", lambda w: ["export", str(w / "run"), "--format", "torchscript", "--out",
                                                    str(w / "run" / "latest.pt")], guard=lambda w: [w / "run" / "latest.pt"]),
    # --- interpolate and timelapse ---------------------------------------------------------------------
    Case("interpolate: a broken ffmpeg", lambda w: ["interpolate", str(w / "run"), "--seconds", "0.4", "--fps", "5",
                                                    "--out", str(w / "w.mp4")], process=[],
         env={"IMAGEIO_FFMPEG_EXE": "__BROKEN__"}),
    Case("interpolate: ffmpeg missing", lambda w: ["interpolate", str(w / "run"), "--seconds", "0.4", "--fps", "5",
                                                   "--out", str(w / "w.mp4")], process=[],
         env={"IMAGEIO_FFMPEG_EXE": "/nonexistent/ffmpeg"}),
    Case("interpolate: --out .gif on a full disk", lambda w: ["interpolate", str(w / "run"), "--seconds", "2", "--grid", "4",
                                                              "--out", str(full_disk(w, leave=4096) / "w.gif")]),
    Case("interpolate: --out on a read-only disk", lambda w: ["interpolate", str(w / "run"), "--out",
                                                              str(read_only(w) / "w.gif")]),
    Case("interpolate: --seconds 0", lambda w: ["interpolate", str(w / "run"), "--seconds", "0", "--out", str(w / "w.gif")]),
    Case("interpolate: --seconds nan", lambda w: ["interpolate", str(w / "run"), "--seconds", "nan", "--out", str(w / "w.gif")]),
    Case("interpolate: --fps 0", lambda w: ["interpolate", str(w / "run"), "--fps", "0", "--out", str(w / "w.gif")]),
    Case("interpolate: --grid 9", lambda w: ["interpolate", str(w / "run"), "--grid", "9", "--out", str(w / "w.gif")]),
    Case("interpolate: a torn snapshot", lambda w: ["interpolate", str(_torn_latest(w)), "--out", str(w / "w.gif")]),
    Case("timelapse: a damaged grid", lambda w: ["timelapse", str(_damaged_grid(w)), "--out", str(w / "t.gif")],
         check=lambda w, r: (w / "t.gif").is_file()),
    Case("timelapse: a broken ffmpeg", lambda w: ["timelapse", str(w / "run"), "--out", str(w / "t.mp4")], process=[],
         env={"IMAGEIO_FFMPEG_EXE": "__BROKEN__"}),
    Case("timelapse: no grids", lambda w: ["timelapse", str(_mkdir(w, "nogrids")), "--out", str(w / "t.gif")]),
    Case("timelapse: every grid damaged", lambda w: ["timelapse", str(_all_grids_damaged(w)), "--out", str(w / "t.gif")]),
    Case("timelapse: --out on a read-only disk", lambda w: ["timelapse", str(w / "run"), "--out", str(read_only(w) / "t.gif")]),
    Case("timelapse: --out .avi", lambda w: ["timelapse", str(w / "run"), "--out", str(w / "t.avi")]),
    # --- project -------------------------------------------------------------------------------------
    Case("project: --image missing", lambda w: ["project", str(w / "run"), "--image", str(w / "none.png"), "--label", "1",
                                                "--steps", "2", "--out", str(w / "p")]),
    Case("project: --image not an image", lambda w: ["project", str(w / "run"), "--image", str(_file(w, "x.png")),
                                                     "--label", "1", "--steps", "2", "--out", str(w / "p")]),
    Case("project: --image a bomb header", lambda w: ["project", str(w / "run"), "--image", str(_bomb(w)), "--label", "1",
                                                      "--steps", "2", "--out", str(w / "p")]),
    Case("project: --label missing on a class run", lambda w: ["project", str(w / "run"), "--image",
                                                               str(digits_folder(w, "i", n=1) / "000.png"), "--steps",
                                                               "2", "--out", str(w / "p")]),
    Case("project: --out on a read-only disk", lambda w: ["project", str(w / "run"), "--image",
                                                          str(digits_folder(w, "i", n=1) / "000.png"), "--label", "1",
                                                          "--steps", "2", "--out", str(read_only(w) / "p")]),
    Case("project: --out on a full disk", lambda w: ["project", str(w / "run"), "--image",
                                                     str(digits_folder(w, "i", n=1) / "000.png"), "--label", "1",
                                                     "--steps", "2", "--video", "gif", "--out", str(full_disk(w, leave=4096) / "p")]),
    Case("project: --steps 0", lambda w: ["project", str(w / "run"), "--image", str(w / "x"), "--steps", "0"]),
    # --- studio, plot, bench, torchrun --------------------------------------------------------------------
    Case("studio: a missing folder", lambda w: ["studio", str(w / "nowhere")]),
    Case("studio: the port is taken", lambda w: ["studio", str(w), "--port", str(port_taken(w))], process=[]),
    Case("studio: --refresh 0", lambda w: ["studio", str(w), "--refresh", "0"]),
    Case("studio: --port 70000", lambda w: ["studio", str(w), "--port", "70000"]),
    Case("plot: --out on a read-only disk", lambda w: ["plot", str(w / "run"), "--out", str(read_only(w) / "s.png")]),
    Case("plot: --out on a full disk", lambda w: ["plot", str(w / "run"), "--out", str(full_disk(w, leave=4096) / "s.png")]),
    Case("plot: stats.jsonl rows of the wrong types", lambda w: ["plot", str(_odd_stats(w))]),
    Case("plot: stats.jsonl a link to a file elsewhere", lambda w: ["plot", str(symlinked_stats(w))]),
    Case("plot: a run with no stats", lambda w: ["plot", str(_mkdir(w, "nostats"))]),
    Case("bench: --model nope", lambda w: ["bench", "--model", "nope"]),
    Case("bench: --resolution 3", lambda w: ["bench", "--model", "cdcgan", "--resolution", "3"]),
    Case("bench: --batch 0", lambda w: ["bench", "--model", "cdcgan", "--batch", "0"]),
    Case("bench: --model-opt bogus=1", lambda w: ["bench", "--model", "cdcgan", "--resolution", "16", "--model-opt", "bogus=1"]),
    Case("bench: --device cuda without a GPU", lambda w: ["bench", "--model", "cdcgan", "--device", "cuda"]),
    Case("bench: --steps 0", lambda w: ["bench", "--model", "cdcgan", "--steps", "0"]),
    Case("torchrun: --gpus 2 --device cpu, --data missing", lambda w: ["train", "--gpus", "2", "--device", "cpu", "--data",
                                                                       str(w / "nowhere"), "--outdir", str(w / "r")]),
    Case("torchrun: --gpus 2 --device cpu, an odd --batch", lambda w: [
        "train", "--gpus", "2", "--device", "cpu", *TINY[:2], "--batch", "15", *TINY[4:], "--outdir", str(w / "r")],
        process=[]),
]


def _one_unreadable(work: Path) -> Path:
    folder = digits_folder(work, "some")
    unreadable(folder / "003.png")
    return folder


def _mkdir(work: Path, name: str) -> Path:
    (work / name).mkdir()
    return work / name


def _with_bomb(work: Path) -> Path:
    folder = digits_folder(work, "bombed", n=4)
    (folder / "bomb.png").write_bytes(png_claiming(70_000, 70_000))
    return folder


def _bomb(work: Path) -> Path:
    (work / "bomb.png").write_bytes(png_claiming(70_000, 70_000))
    return work / "bomb.png"


def _corrupt_folder(work: Path) -> Path:
    folder = _mkdir(work, "corrupt")
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
    return folder


def _latin1(work: Path) -> Path:
    (work / "prompts.txt").write_bytes("un oiseau d\xe9j\xe0 vu\n".encode("latin-1"))
    return work / "prompts.txt"


def _torn_latest(work: Path) -> Path:
    run = copy_run(work, "torn")
    torn(run / "latest.pt", 5000)
    for kept in run.glob("snapshot-*.pt"):
        kept.unlink()
    return run


def _damaged_grid(work: Path) -> Path:
    run = copy_run(work, "damaged")
    torn(sorted(run.glob("fakes*.png"))[-1])
    return run


def _all_grids_damaged(work: Path) -> Path:
    run = copy_run(work, "damaged")
    for grid in run.glob("fakes*.png"):
        torn(grid)
    return run


def _odd_stats(work: Path) -> Path:
    run = copy_run(work, "odd")
    (run / "stats.jsonl").write_text('{"kimg": "x", "loss/G": 1}\n[1, 2]\n{"kimg": 1, "loss/G": "a"}\n{"kimg": 2}\n')
    return run


def _run_on_full_disk(work: Path) -> Path:
    disk = tmpfs(work, "disk", size="3m")
    run = disk / "run"
    run.mkdir()
    for path in (work / "run").iterdir():
        if path.is_file() and not path.name.startswith(("snapshot-", "events.", "stats.png")):
            shutil.copy(path, run / path.name)
    (disk / ".filler").write_bytes(bytes(shutil.disk_usage(disk).free - 12 * 1024))
    return run


def _file(work: Path, name: str) -> Path:
    (work / name).write_text("x")
    return work / name


def _garbage(work: Path) -> Path:
    (work / "garbage.pt").write_bytes(os.urandom(1000))
    return work / "garbage.pt"


def _torn_stats(work: Path) -> Path:
    run = copy_run(work, "torn-stats")
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"kimg": 0.04, "ste')
    return run


@dataclass
class ProcessResult:
    """A subprocess's outcome in the shape of click's test result."""
    exit_code: int
    output: str
    exception: BaseException | None = None


def run_process(case: Case, args: list[str], work: Path) -> ProcessResult:
    env = {**os.environ, "GANFORGE_PROGRESS": "0", **{k: broken_ffmpeg(work) if v == "__BROKEN__" else v
                                                      for k, v in (case.env or {}).items()}}
    try:
        done = subprocess.run([*case.process, sys.executable, "-m", "ganforge", *args], capture_output=True, text=True,
                              env=env, timeout=300)
    except subprocess.TimeoutExpired as e:  # a command that should have stopped at once kept running
        return ProcessResult(1, f"{e.stdout or ''}{e.stderr or ''}", RuntimeError("still running after 300 s"))
    output = done.stdout + done.stderr
    if done.returncode < 0:  # killed by a signal: an abort in native code is worse than a traceback
        return ProcessResult(done.returncode, output, RuntimeError(f"killed by signal {-done.returncode}"))
    return ProcessResult(done.returncode, output, RuntimeError(output.strip().splitlines()[-1])
                         if "Traceback (most recent call last)" in done.stderr else None)


def run_case(case: Case, work: Path) -> dict:
    try:
        args = [str(a) for a in case.args(work)]
    except Unavailable as e:
        return {"case": case.name, "outcome": "skipped", "work lost": "no", "empty run dir left": "no", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - the catalogue's own fault in making the case: reported, not judged
        return {"case": case.name, "outcome": "case not made", "work lost": "no", "empty run dir left": "no",
                "message": f"{type(e).__name__}: {e}"}
    guarded = {p: p.read_bytes() for p in case.guard(work) if p.exists()}
    runs_before = sorted((work / "r").iterdir()) if (work / "r").exists() else []
    result = run_process(case, args, work) if case.process is not None else CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        outcome = "traceback"
    elif result.exit_code != 0:
        lines = [line for line in result.output.splitlines() if line.strip()]
        outcome = "clear error" if lines and len(lines[-1]) > 20 else "silent"
    else:
        outcome = "handled" if case.check(work, result) else "silent"
    lost = any(not p.exists() or p.read_bytes() != data for p, data in guarded.items())
    leftover = (work / "r").exists() and sorted((work / "r").iterdir()) != runs_before
    last = next((line for line in reversed(result.output.splitlines()) if line.strip()), "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        last = f"{type(result.exception).__name__}: {result.exception}"
    return {"case": case.name, "outcome": outcome, "work lost": "yes" if lost else "no",
            "empty run dir left": "yes" if leftover else "no", "message": last[:140]}


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated case numbers (1-based) [default: all]")
    args = parser.parse_args(argv)
    chosen = [CASES[int(i) - 1] for i in args.cases.split(",")] if args.cases else CASES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("GANFORGE_PROGRESS", "0")
        base = [a if a != "0.032" or i != TINY.index("--kimg") + 1 else "0.064" for i, a in enumerate(TINY)]
        result = CliRunner().invoke(main, ["train", *base, "--outdir", str(work / "runs")])  # two stats rows
        assert result.exit_code == 0, result.output
        shutil.move(str(next((work / "runs").iterdir())), work / "run")
        try:
            for i, case in enumerate(chosen, 1):
                case_work = work / f"case{i}"
                case_work.mkdir()
                shutil.copytree(work / "run", case_work / "run")
                rows.append(run_case(case, case_work))
                print(f"{i:2d}. {rows[-1]['case']}: {rows[-1]['outcome']}", file=sys.stderr, flush=True)
                for folder in case_work.rglob("*"):  # what a case made unreadable, the clean-up must remove
                    if folder.is_dir() and not folder.is_symlink() and not os.access(folder, os.R_OK | os.X_OK):
                        folder.chmod(0o755)
        finally:
            for point in MOUNTS:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)
            for holder in HELD:
                holder.close()
    print("| case | outcome | work lost | empty run dir left | message |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['outcome']} | {r['work lost']} | {r['empty run dir left']} | {r['message'].replace('|', '/').replace(chr(10), ' ')} |")
    bad = [r for r in rows if r["outcome"] in ("traceback", "silent") or r["work lost"] == "yes"
           or r["empty run dir left"] == "yes"]
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clear error", "handled", "traceback", "silent", "skipped")}
    print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f", {sum(r['work lost'] == 'yes' for r in rows)} with work lost")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_())
