"""ganforge from Python: load a run's generator and sample it; train, evaluate, project, interpolate,
export and convert a dataset as the commands do, each the same function the command line calls
(`import ganforge` reaches these lazily)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ganforge.errors import GanforgeWarning, OptionError
from ganforge.inference import Generator

if TYPE_CHECKING:
    import PIL.Image

    from ganforge.explore import Projection


def load(run_or_snapshot: str | Path, device: str = "cpu") -> Generator:
    """The EMA generator of a run directory (its latest snapshot) or of a snapshot file, on `device`
    ("cpu", "cuda", "cuda:N" or "auto"), ready to sample:

        g = ganforge.load("runs/00000-cdcgan-mnist")
        images = g.sample(16, seed=7, label=3)   # [16, C, H, W] in [-1, 1]

    A path that holds no snapshot, or a snapshot that cannot be used, raises a GanforgeError whose
    message says why (the line `ganforge generate` prints)."""
    from ganforge.hardware import resolve_device

    return Generator.load(run_or_snapshot, resolve_device(device))


class Run(os.PathLike):
    """A run directory, as `train` returns it (or, as `.run`, the KeyboardInterrupt it raises when
    stopped); a path (os.PathLike) that `load`, `evaluate`, `project`, `interpolate` and `export`
    take, with the run's options and whether it reached its --kimg."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, (Run, str, os.PathLike)) and Path(other) == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def options(self) -> dict:
        """The run's options as it trains with them (its training_options.json)."""
        return json.loads((self.path / "training_options.json").read_text(encoding="utf-8"))

    @property
    def finished(self) -> bool:
        """Whether the run reached its --kimg: its latest snapshot has seen that many images. False
        when it was asked to stop (Ctrl-C, SIGTERM) and wrote latest.pt, which `train(resume=run)`
        continues, and for a run with no snapshot yet."""
        from ganforge.snapshots import SnapshotError, find_snapshot

        try:
            snapshot = find_snapshot(self.path)
        except SnapshotError:
            return False
        # the snapshot, not stats.jsonl, which a run may lack rows of; mmap: one number, not all the weights
        seen = torch.load(snapshot, map_location="cpu", weights_only=True, mmap=True)["images_seen"]
        return seen >= round(self.options["kimg"] * 1000)  # the loop's own test of the end

    def load(self, device: str = "cpu") -> Generator:
        """The run's EMA generator (`ganforge.load(run)`)."""
        return load(self, device)


def train(*, resume: str | os.PathLike | None = None, progress: bool = True, inception_weights: str | None = None,
          **options) -> Run:
    """Train a GAN, or continue one (`resume`: its run directory or a snapshot), as `ganforge train`
    does; returns the run directory.

    The keywords are the fields of TrainOptions (ganforge.training.options), with the same names,
    defaults and checks as the command's options (`data="mnist"` is `--data mnist`; lists such as
    `metrics=["swd"]` may also be given as "swd,fid"; the model's own hyperparameters go in
    `model_opts={"lr": 2e-4}`). An unknown keyword or a value the command would refuse raises an
    OptionError with the command's message. `progress=False` hides the progress bar and tick lines.

    Ctrl-C (or SIGTERM; in Jupyter, interrupting the kernel) stops the run after the current step
    and writes latest.pt, as the command does; `train` then raises KeyboardInterrupt, so a script or
    a notebook cell stops there as on Ctrl-C anywhere else instead of going on as if the run were
    trained. Its `.run` is the stopped run: `train(resume=stopped.run)` continues it. A second Ctrl-C
    stops at once (a KeyboardInterrupt without `.run`), keeping the last snapshot written.

        run = ganforge.train(model="cdcgan", data="mnist", kimg=1, outdir="runs")
    """
    from ganforge.training.loop import train as run_training
    from ganforge.training.options import checked_options

    opts = checked_options(options)
    run_dir = run_training(opts, resume=None if resume is None else os.fspath(resume), explicit=set(options),
                           progress=progress, inception_weights=inception_weights)
    run = Run(run_dir)
    if not run.finished:  # the loop ends early only when asked to stop
        # KeyboardInterrupt itself, not a subclass: Python ends a script on it through SIGINT, so that a
        # shell loop around the script stops too
        stopped = KeyboardInterrupt(f"training stopped before its --kimg; latest.pt is written, and "
                                    f"ganforge.train(resume={str(run)!r}) continues it")
        stopped.run = run
        raise stopped
    return run


def _refused(option: str, message: str) -> OptionError:
    """An OptionError worded as the command line words a bad option value."""
    import click

    return OptionError(click.BadParameter(message, param_hint=option).format_message())


def unwritable(path: str | os.PathLike, folder: bool = False, reading: str | os.PathLike | None = None) -> str | None:
    """Why an output cannot be written, or None when it can: it would replace a run's own file or
    `reading` (the snapshot read), it is a folder given for a file (or a file for a `folder`), or
    nothing can be written where it goes (its folders are made as needed). The command line's --out
    check words its refusals with this too, so both say the same."""
    from ganforge.training.rundir import kept_in_run

    path = Path(path)
    if kept_in_run(path) or (reading is not None and path.exists() and path.samefile(reading)):
        return (f"{path} is a file ganforge keeps in the run (a snapshot, its options, its logs or a grid drawn "
                "during training) and would be replaced; give another file")
    if folder and path.exists() and not path.is_dir():
        return f"{path} is a file; give a folder (or a .png file for a grid)"
    if not folder and path.is_dir():
        return f"{path} is a folder; give a file name"
    parent = path if folder else path.parent
    try:  # a real write: permissions alone miss a read-only mount or a full disk's quota
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".ganforge-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write in {parent} ({e.strerror or e})"
    return None


def _check_writable(path: str | os.PathLike, option: str, reading: str | os.PathLike | None = None) -> None:
    """Refuse an output that cannot be written, as the command refuses its --out, before the work
    that would fill it starts (a walk or an export of a large generator takes minutes)."""
    problem = unwritable(path, reading=reading)
    if problem is not None:
        raise _refused(option, problem)


def evaluate(run_or_snapshot: str | os.PathLike | None = None, metrics: str | Sequence[str] | None = None,
             n: int = 10_000, *, real: str | None = None, fake: str | None = None, split: str | None = None,
             resolution: int | None = None, floor: bool = True, inception_weights: str | None = None,
             cache_dir: str | None = None, device: str = "auto", seed: int = 0, out: str | os.PathLike | None = None,
             report: Callable[[str], None] | None = None) -> dict:
    """Measure a run's generator (or a folder of generated images, `fake`, against `real`) as
    `ganforge evaluate` does; returns what its --out writes: {metric: {value name: number}}, an
    undefined number as None. The results of a run's snapshot are also kept in its run (metric-*.jsonl).

    `metrics`: names, or one comma-separated string [default: the command's]; `n` images a side;
    `real`: any --data form [default: the run's training data]; `out`: a file to
    write the results to as JSON too; `report` gets the lines the command prints on stderr (what is
    measured, how long it takes).

        results = ganforge.evaluate(run, metrics=["swd"], n=500)
    """
    import time

    from ganforge.data import load_dataset
    from ganforge.hardware import resolve_device
    from ganforge.inference import load_model
    from ganforge.metrics import default_metrics, parse_metrics
    from ganforge.metrics.evaluate import Evaluator, dataset_source
    from ganforge.snapshots import find_snapshot, load_snapshot

    say = report or (lambda line: None)
    names = parse_metrics(default_metrics() if metrics is None else metrics)
    if not names:
        raise _refused("--metrics", "give one metric or more, e.g. swd,msssim")
    if n < 2:
        raise _refused("'--n'", f"{n} is not in the range x>=2.")
    if (run_or_snapshot is None) == (fake is None):
        raise OptionError("give either RUN_OR_SNAPSHOT or --fake DIR")
    if out is not None:  # refused before minutes of features, not after them
        _check_writable(out, "--out", reading=None if run_or_snapshot is None else find_snapshot(run_or_snapshot))
    dev = resolve_device(device)
    started = time.time()
    if run_or_snapshot is not None:
        saved = load_snapshot(run_or_snapshot)
        options = saved["options"]
        model = load_model(run_or_snapshot, dev)
        real_ds = load_dataset(real or options["data"], model.sample_resolution, model.config["channels"],
                               options["center_crop"], split or options["split"])
        snapshot = find_snapshot(run_or_snapshot)
        evaluator = Evaluator(names, real_ds, n, dev, inception_weights, cache_dir or snapshot.parent / "metric-cache", seed)
        model.prepare(real_ds, dev, resumed=True)  # a text model samples this split's captions (DF-GAN: test)
        evaluator.use_captions_of(model)
        measure = lambda: evaluator.evaluate_model(model, n, seed + 1, (str(snapshot), snapshot.stat().st_mtime_ns))  # noqa: E731
        n_fake = n
    else:
        if real is None:
            raise OptionError("--fake needs --real")
        fake_ds = load_dataset(fake, resolution or _first_image_size(fake))
        real_ds = load_dataset(real, fake_ds.resolution, fake_ds.channels, split=split or "train")
        evaluator = Evaluator(names, real_ds, n, dev, inception_weights, cache_dir, seed)
        fakes = dataset_source(fake_ds, n, seed + 1)  # read a block at a time, as the reals are
        measure = lambda: evaluator.evaluate(fakes, evaluator.partial_path(fake_ds.name, len(fake_ds), n, seed))  # noqa: E731
        n_fake = fakes.n
    if real_ds.captions is not None:  # say which captioned rows are the reals (and, for text models, the captions)
        used = split or (options["split"] if run_or_snapshot is not None else "train")
        say(f"real images: {len(real_ds)} of the {used} split of {real_ds.name}")
    if n_fake < n or evaluator.n_real < n:
        say(f"note: using {n_fake} fake and {evaluator.n_real} real images (asked for {n})")
    evaluator.report = report  # how long each side takes, from its first block
    results = measure()
    shared = dict(evaluator.shared_seconds)
    if floor:
        floors_started = time.time()
        for name, figures in evaluator.floors().items():
            results[name]["floor_real_vs_real"] = figures
        shared["the real-vs-real floors"] = time.time() - floors_started
    said = ", ".join(f"{seconds:.1f} s {work}" for work, seconds in shared.items() if seconds >= 0.05)
    say(f"evaluated in {time.time() - started:.1f} s in all"
        + (f"; of it, work no metric's seconds include: {said}" if said else "")
        + "; each metric's seconds are its own work (what it prepares, its part of each block, its figures)")
    kept = finite_or_null(results)  # JSON has no NaN: an undefined value is null
    if out is not None:  # whole or not at all: a stop (Ctrl-C, SIGTERM) never leaves half a file
        partial = Path(out).with_name(Path(out).name + ".partial")
        partial.write_text(json.dumps(kept, indent=2) + "\n")
        os.replace(partial, out)
    if run_or_snapshot is not None:
        _keep_in_run(snapshot, saved, results, n, out, say)
    return kept


def finite_or_null(value):
    """Results with each non-finite number (NaN, inf) as None, which JSON can hold."""
    import math

    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _keep_in_run(snapshot: Path, saved: dict, results: dict, n: int, out: str | os.PathLike | None,
                 say: Callable[[str], None]) -> None:
    """The results of evaluating a run's snapshot go into its run, beside those of --metrics during
    training, where `plot` and the studio find them; a snapshot outside any run keeps them in `out` only."""
    from ganforge.metrics.evaluate import keep_in_run

    run_dir = snapshot.parent
    if not (run_dir / "training_options.json").is_file():
        where = f"written to {out}" if out else "not kept (give --out FILE to keep them)"
        say(f"{snapshot} is not in a run directory: the results are {where}")
        return
    paths = keep_in_run(run_dir, results, saved["images_seen"], saved["step"], snapshot=snapshot.name, n=n,
                        by="ganforge evaluate")
    say(f"kept in the run: {', '.join(str(p) for p in paths)}")


def _first_image_size(folder: str) -> int:
    from PIL import Image

    from ganforge.data import IMAGE_EXTENSIONS

    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                with Image.open(p) as img:
                    return min(img.size)
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # an unreadable file is reported when the folder is loaded
    raise _refused("--fake", f"{folder}: no readable images")


def project(run_or_snapshot: str | os.PathLike, image: str | os.PathLike | PIL.Image.Image | torch.Tensor,
            steps: int = 1000, *, label: int | str | None = None, prompt: str | None = None, seed: int = 0,
            device: str = "auto", report: Callable[[str], None] | None = None) -> Projection:
    """Find the latent whose sample best matches a real image, as `ganforge project` does; returns a
    Projection (.latent [1, z_dim], .image and .target [1, C, H, W] in [-1, 1], .loss, .psnr_db,
    .ms_ssim, ...) and writes nothing.

    `image`: an image file, or a PIL image, either taken as the command takes its --image (converted
    to the run's channels, centre-cropped to a square, resized to the run's resolution); or a tensor
    [C, H, W] or [1, C, H, W] with the run's C channels, uint8 0..255 (as torchvision.io.read_image
    gives) or float in [-1, 1] (as `Generator.sample` gives), centre-cropped and resized likewise.
    `label`: a class-conditional run's class, by number or name (None: every class is tried and the
    closest kept, said to `report`); `prompt`: a text-to-image run's caption of the image.

        found = ganforge.project(run, "photo.png", steps=50)
        images = ganforge.load(run)(found.latent, torch.tensor([found.label]))
    """
    from ganforge.explore import project_image
    from ganforge.hardware import resolve_device
    from ganforge.inference import load_model

    if steps < 1:
        raise _refused("'--steps'", f"{steps} is not in the range x>=1.")
    dev = resolve_device(device)
    model = load_model(run_or_snapshot, dev)
    target = _target(image, model.config["channels"], model.sample_resolution).to(dev)
    return project_image(model, run_or_snapshot, target, label, prompt, steps, seed, report)


def _target(image, channels: int, resolution: int) -> torch.Tensor:
    """The image to project as the model sees its data, [1, C, R, R] in [-1, 1] (see `project`)."""
    from PIL import Image

    from ganforge.data import fit_square, to_float, to_tensor
    from ganforge.explore import read_image

    if isinstance(image, Image.Image):  # as a file is read once decoded
        return to_float(fit_square(to_tensor(image, channels), resolution, center_crop=True)[None])
    if not isinstance(image, torch.Tensor):
        return read_image(image, channels, resolution)
    pixels = image.detach().cpu()
    pixels = pixels[0] if pixels.dim() == 4 and len(pixels) == 1 else pixels
    if pixels.dim() != 3 or len(pixels) != channels:
        raise OptionError(f"image: a tensor of shape {tuple(image.shape)}; this run's images have {channels} "
                          f"channel{'s' if channels > 1 else ''}: give [{channels}, H, W] or [1, {channels}, H, W]")
    if pixels.dtype == torch.uint8:  # resized as uint8, as the pixels of a file are
        return to_float(fit_square(pixels, resolution, center_crop=True)[None])
    if not pixels.is_floating_point():
        raise OptionError(f"image: a tensor of {pixels.dtype}; give uint8 0..255 or floats in [-1, 1]")
    if not (pixels.isfinite().all() and pixels.abs().max() <= 1):  # a [0, 255] or unscaled image, not [-1, 1]
        raise OptionError(f"image: a float tensor with values from {pixels.min().item():g} to {pixels.max().item():g}; "
                          "give them in [-1, 1], as Generator.sample does (an image in [0, 1]: image * 2 - 1)")
    return fit_square(pixels.float(), resolution, center_crop=True)[None]


def interpolate(run_or_snapshot: str | os.PathLike, out: str | os.PathLike | None = "walk.mp4", *,
                seeds: Sequence[int] | str | None = None, seconds: float = 10.0, fps: int = 30, grid: int = 1,
                labels: Sequence[int | str] | str | None = None, prompts: Sequence[str] | str = (),
                latents: Sequence[str | os.PathLike | torch.Tensor] = (), scale: int = 1, device: str = "auto",
                report: Callable[[str], None] | None = None) -> Path | np.ndarray:
    """A looping latent walk through the samples of `seeds` (or of `latents`, and between `labels`
    or `prompts`), as `ganforge interpolate` makes it; the keywords are its options.

    With `out` (a .mp4, which needs the [video] extra, or a .gif) the video is written there and its
    path returned; with `out=None` nothing is written and the frames are returned instead, uint8
    [F, H, W, 3] (the pixels the video is made of, before the codec). `seeds`: [default 0,1,2,3];
    `labels`: a class-conditional run's class of each keyframe, by number or name; `prompts`: a
    text-to-image run's caption of each keyframe; `latents`: latent.npy files written by `ganforge
    project`, or latents ([1, z_dim] or [z_dim], e.g. `ganforge.project(...).latent`), as keyframes
    instead of seeds. `report` gets the line the command prints ("wrote walk.gif: 40 frames ...").

        ganforge.interpolate(run, "walk.gif", seeds=[1, 7, 42], seconds=4, fps=10)
        frames = ganforge.interpolate(run, None, seeds=[1, 7], seconds=1, fps=8)   # [8, H, W, 3]
    """
    from ganforge.explore import (VIDEO_SUFFIXES, check_video_writer, latent_of_another_run, read_latent, walk_frames,
                                  write_video)
    from ganforge.hardware import resolve_device
    from ganforge.inference import class_name, class_of, load_model, run_class_names, run_options

    if out is not None:
        _check_writable(out, "--out")
    if out is not None and Path(out).suffix.lower() not in VIDEO_SUFFIXES:
        raise _refused("--out", f"{out}: give a .mp4 or .gif file")
    if latents and seeds is not None:
        raise OptionError("--latent and --seeds: give the keyframes as seeds or as latent files, not both")
    if latents and grid > 1:
        raise OptionError("--grid: a walk between --latent files is one walk; drop --grid")
    seeds = _whole_numbers("--seeds", [0, 1, 2, 3] if seeds is None else seeds)
    labels = [str(label).strip() for label in (labels.split(",") if isinstance(labels, str) else labels or [])]
    labels = [label for label in labels if label]
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    _check_walk(seconds, fps, grid, scale)
    if out is not None:
        check_video_writer(out)
    if max(len(latents) or len(seeds), len(labels), len(prompts)) < 2:
        raise OptionError("a walk needs two keyframes or more: give two or more seeds (--seeds 1,7,42), "
                          "latents (--latent a.npy --latent b.npy), classes (--labels 3,8) or prompts "
                          "(--prompt A --prompt B)")
    dev = resolve_device(device)
    model = load_model(run_or_snapshot, dev)
    if labels and not model.num_classes:
        raise _refused("--labels", "this model is not class-conditional (trained without labels)")
    labels = [class_of(model, run_or_snapshot, given, "--labels") for given in labels]
    keys = [_latent_of(given, model) if isinstance(given, (torch.Tensor, np.ndarray)) else read_latent(given, model)
            for given in latents] or None
    files = [given for given in latents if not isinstance(given, (torch.Tensor, np.ndarray))]
    if files:  # a latent of the right shape from another run walks through another image: said, not refused
        run_id = run_options(run_or_snapshot).get("run_id")
        for note in filter(None, (latent_of_another_run(f, run_id, run_or_snapshot) for f in files)):
            warnings.warn(note, GanforgeWarning, stacklevel=2)
    frames = walk_frames(model, seeds, seconds, fps, grid, labels or None, prompts, dev, scale, keys)
    if out is None:
        return frames
    width, height = write_video(frames, out, fps)
    if report is not None:
        files = [str(given) for given in latents if not isinstance(given, (torch.Tensor, np.ndarray))]
        keyframes = (f"latents {', '.join(files)}" if len(files) == len(latents) else f"{len(latents)} latents") \
            if keys else f"seeds {','.join(map(str, seeds))}"
        names = run_class_names(run_or_snapshot) if labels else []  # the names the user knows, beside the numbers
        through = [keyframes] + ([f"classes {', '.join(class_name(run_or_snapshot, c, names) for c in labels)}"]
                                 if labels else []) \
            + ([f"{len(prompts)} prompts"] if len(prompts) > 1 else [])
        enlarged = (f" (the samples' {frames.shape[2]}x{frames.shape[1]} enlarged for the codec)"
                    if (width, height) != (frames.shape[2], frames.shape[1]) else "")
        report(f"wrote {out}: {len(frames)} frames of {width}x{height}{enlarged} at {fps} fps, "
               f"through {' and '.join(through)} and back")
    return Path(out)


def _whole_numbers(option: str, given: Sequence[int] | str) -> list[int]:
    """Seeds as a list of whole numbers 0..SEED_MAX: a list, or "1,7,42" as the command takes them."""
    from ganforge.training.options import SEED_MAX

    if isinstance(given, str):
        try:
            numbers = [int(s) for s in given.split(",") if s.strip()]
        except ValueError:
            raise _refused(option, f"{given!r} is not a comma-separated list of whole numbers, e.g. 1,7,42") from None
    else:
        numbers = list(given)
    if not numbers or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s <= SEED_MAX
                               for s in numbers):
        raise _refused(option, f"{given!r}: give whole numbers 0..{SEED_MAX}, e.g. 1,7,42")
    return [int(s) for s in numbers]


def _check_walk(seconds: float, fps: int, grid: int, scale: int) -> None:
    """The walk's numbers, refused as the command's options refuse them."""
    import math

    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise _refused("'--seconds'", f"{seconds} must be a finite number > 0")
    for option, value, low, high in (("'--fps'", fps, 1, 120), ("'--grid'", grid, 1, 8), ("'--scale'", scale, 1, None)):
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            within = f"{low}<=x<={high}" if high is not None else f"x>={low}"
            raise _refused(option, f"{value} is not in the range {within}.")


def _latent_of(latent, model) -> torch.Tensor:
    """A latent given as a tensor or array ([1, z_dim] or [z_dim], as project returns it) as [z_dim]."""
    latent = torch.as_tensor(latent).detach().cpu()
    if tuple(latent.shape) not in ((1, model.z_dim), (model.z_dim,)) or not latent.is_floating_point():
        raise OptionError(f"latents: a latent of shape {tuple(latent.shape)} ({latent.dtype}); this run's generator "
                          f"takes (1, {model.z_dim}) floats, as ganforge project gives them")
    return latent.float().reshape(model.z_dim)


def export(run_or_snapshot: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None, *,
           report: Callable[[str], None] | None = None) -> list[Path]:
    """Write a run's generator standalone (noise [+ label] -> image in [-1, 1]), as `ganforge export`
    does: `format` "onnx" (onnxruntime, any language; the [export] extra) or "torchscript" (PyTorch
    without ganforge); `out` [default: generator.onnx / generator.pt beside the snapshot].

    Returns the files written: the model file, and only for an ONNX generator beyond 2 GB its
    weights beside it (file.onnx.data), which must stay together. `report` gets the line the command
    prints (the files, the inputs and output).

        path, = ganforge.export(run, format="torchscript", out="g.pt")
        images = torch.jit.load(path)(torch.randn(4, 100), torch.tensor([0, 1, 2, 3]))
    """
    from ganforge.inference import RuntimeGenerator, export as write_export, load_model
    from ganforge.snapshots import find_snapshot

    if format not in ("onnx", "torchscript"):
        raise _refused("'--format'", f"{format!r} is not one of 'onnx', 'torchscript'.")
    snapshot = find_snapshot(run_or_snapshot)
    out = Path(out) if out is not None else snapshot.parent / ("generator.onnx" if format == "onnx" else "generator.pt")
    _check_writable(out, "--out", reading=snapshot)  # never the run's work, nor the file read
    model = load_model(run_or_snapshot)
    paths = write_export(model, format, out)
    if report is not None:
        inputs = f"z [N, {model.z_dim}] float32" + (", labels [N] int64" if RuntimeGenerator(model).conditional else "")
        together = " (keep these files together)" if len(paths) > 1 else ""
        report(f"wrote {', '.join(map(str, paths))}{together}: inputs {inputs}; output images [N, C, H, W] in [-1, 1]")
    return paths


def dataset(source: str | os.PathLike, dest: str | os.PathLike, resolution: int, *, channels: int | None = None,
            center_crop: bool = True, lods: bool = False, shards: int | None = None,
            report: Callable[[str], None] | None = None) -> dict:
    """Convert any --data form (folder, class folders, zip, captioned layout) to a resolution-fixed
    .zip or folder `dest`, as `ganforge dataset` does; returns what its dataset.json says (counts,
    classes, the files skipped as unreadable).

    `channels`: 1 grey or 3 RGB [default: 1 for grey data, else 3]; `center_crop=False` squashes
    instead of cropping; `lods`: also every lower level of detail (for PGGAN); `shards`: WebDataset
    tar shards of that many images each, into the folder `dest`. `report` gets the line the command prints.

        summary = ganforge.dataset("photos/", "photos-64.zip", 64)   # summary["images"], summary["skipped"]
    """
    from ganforge.archive import convert

    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise _refused("'--resolution'", f"{resolution} is not a power of two >= 4")
    if channels not in (None, 1, 3):
        raise _refused("'--channels'", f"'{channels}' is not one of '1', '3'.")
    if shards is not None and (not isinstance(shards, int) or shards < 1):
        raise _refused("'--shards'", f"{shards} is not in the range x>=1.")
    summary = convert(os.fspath(source), dest, resolution, channels, center_crop, lods=lods, shard_size=shards)
    if report is not None:
        kind = ("captioned" if summary["captioned"] else f"{len(summary['classes'])} classes" if summary["classes"]
                else "unlabelled")
        skipped = summary["skipped"]
        levels = f" (and {', '.join(f'{r}x{r}' for r in summary['lods'])})" if summary["lods"] else ""
        levels += f" in {len(summary['shards'])} shards" if summary.get("shards") else ""
        report(f"wrote {dest}: {summary['images']} images at {resolution}x{resolution}{levels}, {kind}"
               + (f"; skipped {len(skipped)} unreadable, e.g. {skipped[0]}" if skipped else ""))
    return summary
