"""The one training loop every GAN in ganforge runs in.

A model (ganforge.models) supplies networks, optimizers, per-phase losses and a schedule; this
loop supplies the rest: devices, seeding, precision, the real-image stream, freezing the network
that is not being trained, the EMA of G, progress in kimg, stats.jsonl / TensorBoard / log.txt,
sample grids from fixed noise, and atomic snapshots that resume bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torchvision.utils import save_image

from ganforge.data import ImageDataset, ImagesTooSmall, RealStream, detect_channels, load_dataset, to_float
from ganforge.errors import GanforgeError, check_memory
from ganforge.metrics.diversity import relative_diversity
from ganforge.models import CONDITIONAL, GanModel, Schedule, StepContext, build_model, model_class, parameter_count
from ganforge.training.checkpoint import LATEST, SnapshotError, load_snapshot, save_snapshot
from ganforge.training.distributed import (all_true, average_gradients, barrier, broadcast_object,
                                           broadcast_parameters, init_from_env, reduce_mean)
from ganforge.training.plots import plot_stats


@dataclass
class TrainOptions:
    """Every option of a run; saved as training_options.json and inside each snapshot."""

    model: str = "cdcgan"            # cdcgan | dcgan
    data: str = "mnist"              # built-in name, image folder, zip, or captioned layout
    resolution: int = 32             # training resolution (power of two)
    channels: int | None = None      # 1 or 3; None: 1 for grey data (mnist, grey image files), else 3
    center_crop: bool = True         # square centre crop before resizing (else squash)
    xflip: bool = False              # random horizontal flips of real images
    split: str = "train"             # for the captioned layout: train | test | all
    batch: int | None = None         # images per step (all GPUs together); None: the model's default
    kimg: float = 100.0              # length of training in thousands of real images shown
    seed: int = 0
    base_channels: int | None = None # network width; None: the model's default for the resolution
    model_opts: dict = field(default_factory=dict)  # the model's own hyperparameters (e.g. BEGAN's gamma)
    ema_kimg: float = 10.0           # half-life of the EMA of G, in kimg
    ema_rampup: float | None = 0.05  # EMA half-life at most this fraction of images seen (None: off)
    tick: float = 1.0                # kimg between progress lines / stats.jsonl rows
    sample_every: float = 10.0       # kimg between sample grids
    snap: float = 25.0               # kimg between kept snapshots (latest.pt is rewritten each time)
    metrics: list[str] = field(default_factory=list)  # evaluated every metrics_every kimg (see ganforge.metrics)
    metrics_every: float = 50.0      # kimg between evaluations
    metrics_n: int = 5000            # generated (and real) images per evaluation
    best_metric: str | None = None   # keep best.pt by this metric (default: the first of --metrics)
    precision: str = "fp32"          # fp32 | tf32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    channels_last: bool = False      # NHWC layout for the convolutions (faster with bf16/fp16 on GPUs)
    compile: bool = False            # torch.compile G and D where the graph allows
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    workers: int = 4                 # decoding threads when images are not preloaded
    nonfinite_retries: int = 3       # NaN/Inf: restore the last snapshot and continue this many times, then stop
    outdir: str = "runs"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Options that may differ when a run is resumed: they change how long or where it runs, not what it computes.
RESUME_MAY_CHANGE = {"channels_last", "compile", "nonfinite_retries", "kimg", "tick", "sample_every", "snap", "device", "workers", "outdir", "metrics",
                     "metrics_every", "metrics_n", "best_metric"}


COLLAPSED = 0.25  # tick diversity (samples' spread / reals') below which log.txt warns of mode collapse


class TrainingError(GanforgeError, RuntimeError):
    """A run that cannot start or continue; the message says why."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TrainingError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrainingError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda", "mps", "meta"):
        raise TrainingError(f"--device {name}: not supported (use auto, cpu, cuda or cuda:N)")
    return device


def make_run_dir(outdir: str | Path, desc: str) -> Path:
    """runs/00000-<desc>/, numbered one past the highest existing run."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        ids = [int(p.name[:5]) for p in outdir.iterdir() if p.is_dir() and p.name[:5].isdigit()]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        run_dir.mkdir()
    except OSError as e:
        raise TrainingError(f"--outdir {outdir}: cannot make a run directory there ({e.strerror or e})") from e
    return run_dir


def dataset_desc(data: str) -> str:
    name = Path(data.rstrip("/")).stem if data != "mnist" else "mnist"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "data"


def uses_labels(opts: TrainOptions) -> bool:
    """Conditional models always, others (PGGAN's AC-GAN head) when asked with conditional=true."""
    return opts.model in CONDITIONAL or bool(opts.model_opts.get("conditional", False))


def model_config(opts: TrainOptions, channels: int, num_classes: int) -> dict:
    config = dict(resolution=opts.resolution, channels=channels, num_classes=num_classes)
    if opts.base_channels is not None:
        config["base_channels"] = opts.base_channels
    return {**config, **opts.model_opts}


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def ema_beta(opts: TrainOptions, batch: int, images_seen: int, fixed: float | None = None) -> float:
    """EMA decay per step: from a half-life of --ema-kimg, or a model's fixed beta (PGGAN's 0.999).

    The ramp-up bounds the half-life by a fraction of the images seen, so early samples (and short
    runs) are not dominated by the random initial weights; long runs reach the plain decay.
    """
    beta = fixed if fixed is not None else 0.5 ** (batch / (opts.ema_kimg * 1000))
    if opts.ema_rampup is not None:
        beta = min(beta, 0.5 ** (batch / max(images_seen * opts.ema_rampup, 1e-8)))
    return beta


def autocast_for(precision: str, device: torch.device):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def make_scalers(precision: str, device: torch.device) -> dict[str, torch.amp.GradScaler]:
    """One loss scaler per network (fp16 only): G's and D's overflows are their own, and each scale
    grows on its own network's steps."""
    return {net: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for net in ("G", "D")}


def check_precision(model: GanModel, precision: str) -> None:
    """fp16 is refused where a gradient penalty differentiates D twice: the gradients of gradients of
    an fp16 graph underflow unless every inner gradient is scaled and unscaled by hand; bf16 has
    fp32's range, needs no loss scaling and is as fast on GPUs that have fp16."""
    if precision == "fp16" and model.double_backward:
        raise TrainingError(f"--precision fp16: {model.name}'s gradient penalty differentiates "
                            f"{' and '.join(model.double_backward)} twice, which fp16 does not survive; "
                            "use --precision bf16 (or tf32/fp32)")


def restore(snap: dict, model: GanModel, scalers: dict, gen: torch.Generator, stream: RealStream, opts: TrainOptions):
    """Load a snapshot's full state into a live run; returns (optimizers, stage, images_seen, step, best)."""
    model.load_state_dict(snap["state"])
    optimizers = model.optimizers(model.schedule(snap["images_seen"], opts.batch, opts.resolution))
    for name, opt in optimizers.items():
        opt.load_state_dict(snap["optimizers"][name])
    saved = snap["scaler"]
    for net, scaler in scalers.items():  # snapshots before per-network scalers held one state for both
        scaler.load_state_dict(saved[net] if set(saved) == set(scalers) else saved)
    gen.set_state(snap["rng"]["loop"])
    torch.set_rng_state(snap["rng"]["torch"])
    stream.position = snap["stream_position"]
    return optimizers, snap["stage"], snap["images_seen"], snap["step"], snap.get("best_value")


OWN_TEMPORARY = re.compile(r"\.(latest|best|snapshot-\d+(k\d+)?)\.pt\.\d+\.tmp|\.training_options\.json\.tmp|\.lock\.\d+\.tmp")


def check_run_directory(run_dir: Path, snapshot: dict) -> None:
    """Resume only into a run directory ganforge made for this snapshot's model: a resumed run
    rewrites its logs and snapshots, which must never happen to a folder that is not a run's."""
    options = run_dir / "training_options.json"
    if not options.exists():
        raise TrainingError(f"--resume {snapshot['path']}: {run_dir} is not a ganforge run directory (no "
                            "training_options.json); resume from the run directory the snapshot came from")
    try:
        model = json.loads(options.read_text(encoding="utf-8"))["model"]
    except (ValueError, KeyError) as e:
        raise TrainingError(f"--resume: {options} is unreadable ({e})") from e
    if model != snapshot["model"]:
        raise TrainingError(f"--resume {snapshot['path']}: the snapshot holds {snapshot['model']} but the run "
                            f"directory {run_dir} is a {model} run; it was copied from another run")


def write_options(run_dir: Path, opts: TrainOptions) -> None:
    tmp = run_dir / ".training_options.json.tmp"
    tmp.write_text(json.dumps(opts.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "training_options.json")


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop log rows after `step` (and any line torn by a kill) from stats.jsonl and metric-*.jsonl."""
    for path in [run_dir / "stats.jsonl", *run_dir.glob("metric-*.jsonl")]:
        if not path.exists():
            continue
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)


def prepare_model(model: GanModel, dataset: ImageDataset, device: torch.device, resumed: bool) -> None:
    try:
        model.prepare(dataset, device, resumed)
    except ValueError as e:
        raise TrainingError(str(e)) from e


def training_step(model: GanModel, optimizers: dict, scalers: dict, reals: torch.Tensor,
                  labels: torch.Tensor, ctx: StepContext, precision: str, device: torch.device,
                  world_size: int = 1) -> None:
    """One step: each phase of the model updates its network with the other frozen (the NNC sample's lesson)."""
    for phase in model.phases():
        for net in ("G", "D"):
            getattr(model, net).requires_grad_(net == phase.network)
        optimizer = optimizers[phase.optimizer]
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            loss = model.loss(phase.name, reals, labels, ctx)
        scaler = scalers[phase.network]
        scaler.scale(loss).backward()
        average_gradients(getattr(model, phase.network), world_size)
        scaler.step(optimizer)
        scaler.update()
    model.after_step(ctx)


def kimg_label(images_seen: int, fine: bool) -> str:
    """The kimg in file names: whole kimg (000025), or with `fine` (intervals under 1 kimg) also the
    images beyond it (000001k500), so that names never collide and sort in training order."""
    return f"{images_seen // 1000:06d}" + (f"k{images_seen % 1000:03d}" if fine else "")


def crossed(before: int, after: int, every_kimg: float) -> bool:
    """True when images_seen passed a multiple of every_kimg between two steps."""
    every = max(1, round(every_kimg * 1000))
    return before // every != after // every


class SampleGrid:
    """Fixed noise and labels for the grids written during training: one row per class when labelled."""

    def __init__(self, model: GanModel, seed: int, device: torch.device, columns: int = 10, max_images: int = 100):
        g = torch.Generator().manual_seed(seed + 12345)  # its own generator: grids never disturb training
        labels = model.grid_labels(max(1, max_images // columns), columns)
        self.labels = labels.to(device) if labels is not None else None
        self.columns = columns
        self.z = model.sample_latents(len(labels) if labels is not None else max_images, generator=g).to(device)

    @torch.no_grad()
    def images(self, model: GanModel) -> torch.Tensor:
        return torch.cat([model.generate(z, None if self.labels is None else y)
                          for z, y in zip(self.z.split(50), (self.labels.split(50) if self.labels is not None
                                                             else [None] * math.ceil(len(self.z) / 50)))])

    def write(self, model: GanModel, path: Path) -> None:
        save_image(self.images(model).float(), path, nrow=self.columns, normalize=True, value_range=(-1, 1), padding=1)


def schedule_phases(model: GanModel, opts: TrainOptions) -> list[tuple[float, Schedule]]:
    """(kimg where it starts, schedule) for each phase the run will pass through within --kimg."""
    total = round(opts.kimg * 1000)
    stride = max(1, total // 20_000)  # the model is asked every `stride` images: phase starts to 0.1 kimg at 2M images
    phases: list[tuple[float, Schedule]] = []
    for images in range(0, total, stride):
        sched = model.schedule(images, opts.batch, opts.resolution)
        if not phases or sched.phase != phases[-1][1].phase or sched.resolution != phases[-1][1].resolution:
            phases.append((images / 1000, sched))
    return phases


def describe_schedule(model: GanModel, opts: TrainOptions) -> list[str]:
    """Plain words for log.txt and --dry-run: the resolutions the run reaches, and when."""
    phases = schedule_phases(model, opts)
    lines = []
    if len(phases) > 1 or (phases and phases[0][1].phase):
        lines.append("schedule: " + "; ".join(f"{s.resolution}x{s.resolution} {s.phase.split('-')[-1] or 'train'} "
                                              f"from {round(kimg, 1):g} kimg (batch {s.batch})" for kimg, s in phases))
    reached = phases[-1][1].resolution if phases else opts.resolution
    if reached < opts.resolution:
        stays = "stays at" if len(phases) == 1 else "reaches only"
        lines.append(f"warning: the run {stays} {reached}x{reached}: --kimg {opts.kimg:g} ends before the target "
                     f"{opts.resolution}x{opts.resolution}; give a larger --kimg (or shorter phases)")
    return lines


def resolve_options(opts: TrainOptions) -> TrainOptions:
    """Fill the options left open (None): the batch with the model's default, the channels from the data."""
    if opts.batch is None:
        opts = dataclasses.replace(opts, batch=model_class(opts.model).default_batch)
    if opts.channels is None:
        opts = dataclasses.replace(opts, channels=detect_channels(opts.data))
    return opts


def _check_resume(opts: TrainOptions, saved: dict, explicit: set[str], path: str) -> TrainOptions:
    """Start from the snapshot's options; allow only explicit changes that keep the computation the same."""
    merged = TrainOptions(**{**saved, **{k: getattr(opts, k) for k in explicit & RESUME_MAY_CHANGE}})
    for key in sorted(explicit - RESUME_MAY_CHANGE):
        if getattr(opts, key) != saved.get(key):
            raise TrainingError(f"--resume {path}: option --{key.replace('_', '-')} {getattr(opts, key)!r} differs "
                                f"from the run's {saved.get(key)!r}; a resumed run keeps its configuration "
                                f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    return merged


class StopRequested(Exception):
    """Raised inside an abandonable step when a stop is asked for."""


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step and write a snapshot."""

    def __init__(self):
        self.requested = False
        self.raise_now = False  # set during long steps that can be abandoned (an evaluation)

    def __enter__(self):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        if self.raise_now:
            raise StopRequested

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(opts: TrainOptions, resume: str | None = None, explicit: set[str] | None = None,
          progress: bool = True, evaluator_factory: Callable | None = None) -> Path:
    """Train (or continue) a run; returns its directory.

    `explicit`: the options the user set (only these may override a resumed run's).
    `evaluator_factory`: (dataset, run_dir, device) -> (model -> {metric: results}), needed for
    `opts.metrics`; ganforge.metrics.evaluate.training_evaluator makes one.
    A new run that fails before its first step leaves no run directory behind (it would hold nothing
    to resume and take the next run number).
    """
    start: dict = {}
    try:
        return _train(opts, resume, explicit, progress, evaluator_factory, start)
    except BaseException:
        if start.get("new_run_dir") is not None and not start.get("stepped"):
            shutil.rmtree(start["new_run_dir"], ignore_errors=True)
        raise


def _train(opts: TrainOptions, resume: str | None, explicit: set[str] | None, progress: bool,
           evaluator_factory: Callable | None, start: dict) -> Path:
    snapshot = None
    channels_source = "--channels" if opts.channels is not None else "detected from the data"
    if resume is not None:
        try:
            snapshot = load_snapshot(resume)
        except SnapshotError as e:
            raise TrainingError(str(e)) from e
        opts = _check_resume(opts, snapshot["options"], explicit or set(), resume)
        channels_source = "as the run was trained"
        if opts.channels is None:  # runs made before channels were resolved: keep what the networks have
            opts = dataclasses.replace(opts, channels=snapshot["model_config"]["channels"])
    opts = resolve_options(opts)
    if (opts.batch is not None and opts.batch < 1) or not math.isfinite(opts.kimg) or opts.kimg <= 0:
        raise TrainingError("--batch must be >= 1 and --kimg a positive number")
    if round(opts.kimg * 1000) < 1:
        raise TrainingError(f"--kimg {opts.kimg:g} is less than one image")
    if opts.batch is not None:  # the real batch alone, as uint8 and float, before any network
        check_memory(opts.batch * (opts.channels or 3) * opts.resolution**2 * 5, f"--batch {opts.batch} at "
                     f"{opts.resolution}x{opts.resolution}", "--batch")

    ddp, device_name = init_from_env(opts.device)
    device = resolve_device(device_name)
    world = ddp.world_size
    if opts.batch is not None and opts.batch % world:
        raise TrainingError(f"--batch {opts.batch}: must divide evenly among {world} processes")
    if opts.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(opts.seed)

    full_size = model_class(opts.model).needs_full_size_images
    try:
        dataset = load_dataset(opts.data, opts.resolution, opts.channels, opts.center_crop, opts.split,
                               min_side=opts.resolution if full_size else None)
    except ImagesTooSmall as e:
        raise TrainingError(f"{e}; {opts.model} would learn upscaling blur. Use a lower --resolution or larger "
                            "images") from e
    if uses_labels(opts) and dataset.num_classes < 2:
        raise TrainingError(f"--model {opts.model} needs labelled data, but --data {opts.data} has no labels "
                            f"(use class sub-folders or split.csv, or --model dcgan)")
    config = model_config(opts, dataset.channels, dataset.num_classes if uses_labels(opts) else 0)
    if snapshot is not None:  # the snapshot's networks, if this data and these options still describe them
        saved = snapshot["model_config"]
        differ = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if snapshot["model"] != opts.model or differ:
            raise TrainingError(f"--resume {snapshot['path']}: snapshot holds {snapshot['model']} with "
                                f"{ {k: a for k, (a, b) in differ.items()} }, these options and data give "
                                f"{opts.model} with { {k: b for k, (a, b) in differ.items()} }")
        config = saved
    model = build_model(opts.model, config).to(device)
    check_precision(model, opts.precision)
    notes = []  # for log.txt once the run directory exists
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opts.compile:
        from ganforge.training.bench import compile_networks

        notes += compile_networks(model)
    if dataset.smallest_side is not None and dataset.smallest_side < opts.resolution:
        message = (f"--resolution {opts.resolution}: some images in --data {opts.data} are smaller "
                   f"(smallest side {dataset.smallest_side} px)")
        if model.needs_full_size_images:
            raise TrainingError(message + f"; {opts.model} would learn upscaling blur. Use a lower --resolution "
                                          "or larger images")
        notes.append(message + "; they are upscaled")
    optimizers = model.optimizers(model.schedule(0, opts.batch, opts.resolution))
    gen = torch.Generator(device).manual_seed(opts.seed)
    stream = RealStream(dataset, seed=opts.seed, xflip=opts.xflip, device=device, workers=opts.workers,
                        rank=ddp.rank, world_size=world)
    broadcast_parameters(model, world)
    scalers = make_scalers(opts.precision, device)
    images_seen = step = 0
    stage = grown_phase = None
    best_value = None

    if snapshot is not None:
        run_dir = Path(snapshot["path"]).parent
        check_run_directory(run_dir, snapshot)
        if snapshot["images_seen"] >= round(opts.kimg * 1000):
            raise TrainingError(f"--resume {run_dir}: the run already reached {snapshot['images_seen'] / 1000:g} kimg "
                                f"(--kimg {opts.kimg:g}); give a larger --kimg to continue it")
        lock = RunLock(run_dir) if ddp.main else None  # before anything in the directory is rewritten
        optimizers, stage, images_seen, step, best_value = restore(snapshot, model, scalers, gen, stream, opts)
        truncate_logs(run_dir, step)  # rows written after this snapshot will be written again
        if ddp.main:  # the options this continuation runs with (a longer --kimg, say)
            write_options(run_dir, opts)
        for stale in run_dir.glob(".*.tmp"):  # a snapshot or options write cut short by a kill (ours only)
            if OWN_TEMPORARY.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        prepare_model(model, dataset, device, resumed=True)
    else:
        prepare_model(model, dataset, device, resumed=False)  # before the run directory: it may refuse the data
        if ddp.main:
            run_dir = make_run_dir(opts.outdir, f"{opts.model}-{dataset_desc(opts.data)}")
            start["new_run_dir"] = run_dir
            lock = RunLock(run_dir)
            write_options(run_dir, opts)
        else:
            lock = None
        run_dir = Path(broadcast_object(str(run_dir) if ddp.main else None, world))
    # Rank 0 writes the run directory; the other ranks compute the same steps and write nothing.
    log_file = open(run_dir / "log.txt" if ddp.main else os.devnull, "a", encoding="utf-8")

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()
        if progress and ddp.main:
            tqdm_write(line)

    from torch.utils.tensorboard import SummaryWriter  # import here: tensorboard is slow to import
    tb = SummaryWriter(str(run_dir)) if ddp.main else _NullWriter()
    stats_file = open(run_dir / "stats.jsonl" if ddp.main else os.devnull, "a", encoding="utf-8")

    grey = "grey, 1 channel" if dataset.channels == 1 else "colour, 3 channels"
    notes.insert(0, f"images: {grey} ({channels_source})")
    if lock is not None and lock.took_over:
        notes.append(lock.took_over)
    log(f"{'resuming' if snapshot else 'starting'} {run_dir} at {images_seen / 1000:.1f} kimg on {device}: "
        f"{opts.model} {opts.resolution}x{opts.resolution}, {len(dataset)} images, {dataset.num_classes} classes, "
        f"G {parameter_count(model.G):,} / D {parameter_count(model.D):,} parameters")
    for note in notes + describe_schedule(model, opts):
        log(note)
    if dataset.bad_files:
        log(f"skipped {len(dataset.bad_files)} unreadable image(s), e.g. {dataset.bad_files[0]}")

    grid = SampleGrid(model, opts.seed, device)
    grid_reals, grid_labels = RealStream(dataset, seed=opts.seed + 1, device=device).next_batch(len(grid.z))
    grid_reals = to_float(grid_reals)

    def write_grids() -> None:
        if not ddp.main:
            return
        kimg = kimg_label(images_seen, fine=opts.sample_every < 1)
        grid.write(model, run_dir / f"fakes{kimg}.png")
        with torch.no_grad():
            for name, images in model.visuals(grid_reals[:32], grid_labels[:32]).items():
                save_image(images.float(), run_dir / f"{name}{kimg}.png", nrow=8, normalize=True,
                           value_range=(-1, 1), padding=1)
        plot_stats(run_dir)

    if snapshot is None and ddp.main:
        save_image(grid_reals, run_dir / "reals.png", nrow=grid.columns, normalize=True, value_range=(-1, 1), padding=1)
        write_grids()

    total = round(opts.kimg * 1000)
    collapse_warned = False
    tick_start, tick_images, tick_sums, tick_count = time.time(), images_seen, {}, 0
    from tqdm import tqdm
    bar = tqdm(total=total, initial=min(images_seen, total), unit="img", unit_scale=True, dynamic_ncols=True,
               smoothing=0.1, disable=not (progress and ddp.main))

    def make_snapshot() -> dict:
        return dict(model=opts.model, model_config=model.config, options=opts.to_json(), state=model.state_dict(),
                    optimizers={k: o.state_dict() for k, o in optimizers.items()}, scaler={k: s.state_dict() for k, s in scalers.items()},
                    rng={"loop": gen.get_state(), "torch": torch.get_rng_state()}, stage=stage,
                    images_seen=images_seen, step=step, stream_position=stream.position, best_value=best_value)

    def write_snapshots(keep: bool) -> None:
        if not ddp.main:
            barrier(world)
            return
        state = make_snapshot()
        paths = [run_dir / LATEST] + ([run_dir / f"snapshot-{kimg_label(images_seen, opts.snap < 1)}.pt"] if keep else [])
        for path in paths:
            write_snapshot(path, state)
        barrier(world)  # other ranks may read it back (recovery) only once it is complete

    def write_snapshot(path: Path, state: dict) -> None:
        """Every snapshot (latest, kept, best) through one safe path with one clear message on failure."""
        try:
            save_snapshot(path, state)
        except OSError as e:
            raise TrainingError(f"could not write snapshot {path}: {e.strerror or e}; the previous snapshot "
                                f"is intact, resume with: ganforge train --resume {run_dir}") from e

    retries = 0

    def recover(reason: str) -> None:
        """Go back to the last good snapshot, move the noise and data on, and continue (a few times)."""
        nonlocal optimizers, stage, images_seen, step, best_value, retries, tick_sums, tick_count
        retries += 1
        where = f"{images_seen / 1000:.1f} kimg (step {step})"
        if retries > opts.nonfinite_retries or not (run_dir / LATEST).exists():
            kept = f"the last good snapshot in {run_dir} is kept" if (run_dir / LATEST).exists() else "no snapshot yet"
            raise TrainingError(f"{reason} at {where}: training diverged; {kept} "
                                f"(try a lower learning rate or --precision fp32)")
        good = load_snapshot(run_dir / LATEST)
        optimizers, stage, images_seen, step, best_value = restore(good, model, scalers, gen, stream, opts)
        gen.manual_seed(opts.seed + 1_000_003 * retries + step)
        stream.position += retries * (opts.batch or 1)
        tick_sums, tick_count = {}, 0
        bar.n = min(images_seen, total)
        bar.refresh()
        log(f"warning: {reason} at {where}; restored {LATEST} ({images_seen / 1000:.1f} kimg) and continue with "
            f"fresh noise (retry {retries} of {opts.nonfinite_retries})")

    evaluate = None
    if opts.metrics:
        if evaluator_factory is None:
            raise TrainingError("--metrics needs an evaluator (ganforge.metrics.evaluate.training_evaluator)")
        evaluate = evaluator_factory(dataset, run_dir, device)
    best_name = opts.best_metric or (opts.metrics[0] if opts.metrics else None)

    def run_metrics() -> None:
        nonlocal best_value
        from ganforge.metrics.evaluate import append_jsonl, headline, improves

        stop.raise_now = True  # an evaluation can take minutes: a stop abandons it for the snapshot
        try:
            results = evaluate(model)
        except StopRequested:
            log(f"metrics at {images_seen / 1000:.1f} kimg abandoned: stop requested")
            return
        except torch.OutOfMemoryError as e:
            raise TrainingError(out_of_memory(opts, sched, run_dir, f"--metrics {','.join(opts.metrics)} with "
                                              f"--metrics-n {opts.metrics_n}")) from e
        finally:
            stop.raise_now = False
        kimg = images_seen / 1000
        for name, result in results.items():
            append_jsonl(run_dir / f"metric-{name}.jsonl", {"kimg": kimg, "step": step, **result})
            tb.add_scalar(f"metrics/{name}", headline(name, result), global_step=images_seen)
        log(f"metrics at {kimg:.1f} kimg: " + ", ".join(f"{n} {headline(n, r):.4g}" for n, r in results.items()))
        if best_name in results:
            value = headline(best_name, results[best_name])
            if improves(best_name, value, best_value):
                best_value = value
                write_snapshot(run_dir / "best.pt", make_snapshot())
                log(f"best.pt: {best_name} {value:.4g} at {kimg:.1f} kimg")

    with _StopFlag() as stop, log_file, stats_file, bar:
        while images_seen < total and not stop.requested:
            sched: Schedule = model.schedule(images_seen, opts.batch, opts.resolution)
            if sched.stage != stage:  # a new resolution: optimizer state starts afresh (PGGAN)
                if stage is not None:
                    optimizers = model.optimizers(sched)
                stage = sched.stage
            if sched.phase != grown_phase:  # keep a grid of each finished phase (PGGAN's growth)
                if grown_phase and ddp.main:
                    grid.write(model, run_dir / f"phase-{grown_phase}.png")
                grown_phase = sched.phase
            real_u8, labels = stream.next_batch(sched.batch)
            reals = to_float(real_u8)
            if sched.batch % world:
                raise TrainingError(f"batch {sched.batch} at {sched.resolution}x{sched.resolution} does not divide "
                                    f"among {world} processes: set --batch")
            ctx = StepContext(latents=lambda n: rank_slice(model.sample_latents(n * world, gen, device), ddp),
                              reduce_mean=lambda t: reduce_mean(t, world), schedule=sched, step=step,
                              images_seen=images_seen, optimizers=optimizers, generator=gen,
                              indices=stream.last_indices)
            try:
                training_step(model, optimizers, scalers, reals, labels, ctx, opts.precision, device, world)
            except torch.OutOfMemoryError as e:
                raise TrainingError(out_of_memory(opts, sched, run_dir, "training step")) from e
            before, images_seen, step = images_seen, images_seen + sched.batch, step + 1
            update_ema(model.G_ema, model.G, ema_beta(opts, sched.batch, images_seen, model.ema_beta))
            start["stepped"] = True

            finite = not ctx.stats or bool(torch.stack([v.float() for v in ctx.stats.values()]).isfinite().all())
            if not all_true(finite, world, device):
                recover("non-finite loss")
                continue
            for k, v in ctx.stats.items():
                tick_sums[k] = tick_sums.get(k, 0.0) + v.double()
            tick_count += 1
            bar.update(min(images_seen, total) - min(before, total))

            done = images_seen >= total or stop.requested
            if crossed(before, images_seen, opts.tick) or done:
                now = time.time()
                means = {k: (v / tick_count).item() for k, v in tick_sums.items()}
                row = {"kimg": images_seen / 1000, "step": step, "time": now, "resolution": sched.resolution,
                       "batch": sched.batch, "alpha": sched.alpha,
                       "img_per_sec": (images_seen - tick_images) / max(now - tick_start, 1e-9), **means}
                # A collapse signal beside the losses: how much the grid's samples vary, relative to reals.
                row["diversity"] = relative_diversity(grid.images(model), grid_reals)
                # Early samples of any model are alike: warn from 5 kimg on, once per fall below the line.
                if row["diversity"] < COLLAPSED and not collapse_warned and images_seen >= 5000:
                    log(f"warning: at {images_seen / 1000:.1f} kimg the samples are nearly alike (diversity "
                        f"{row['diversity']:.2f} of the reals'): the generator may be collapsing")
                collapse_warned = row["diversity"] < COLLAPSED and images_seen >= 5000
                if device.type == "cuda":
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                stats_file.write(json.dumps(row) + "\n")
                stats_file.flush()
                for k, v in row.items():
                    if k not in ("kimg", "step", "time"):
                        tb.add_scalar(k, v, global_step=images_seen)  # x axis in images shown, like kimg
                short = {k.split("/")[-1]: f"{v:.4g}" for k, v in {**means, "diversity": row["diversity"]}.items()}
                bar.set_postfix({"kimg": f"{images_seen / 1000:.1f}", **short})
                log_file.write(f"kimg {images_seen / 1000:8.1f}  step {step:7d}  img/s {row['img_per_sec']:7.1f}  "
                               + "  ".join(f"{k} {v}" for k, v in short.items()) + "\n")
                log_file.flush()
                tick_start, tick_images, tick_sums, tick_count = now, images_seen, {}, 0
            if crossed(before, images_seen, opts.sample_every) or done:
                write_grids()
            metrics_due = crossed(before, images_seen, opts.metrics_every) or images_seen >= total
            if ddp.main and evaluate is not None and metrics_due:
                run_metrics()
            if crossed(before, images_seen, opts.snap) or images_seen >= total or stop.requested:  # asked anew:
                # a stop may have come while the grids were written or the metrics ran
                if not all_true(all(bool(torch.isfinite(p).all()) for p in model.parameters()), world, device):
                    recover("non-finite weights")  # never overwrite a good snapshot with a poisoned one
                    continue
                write_snapshots(keep=crossed(before, images_seen, opts.snap) or images_seen >= total)

    tb.close()
    if grown_phase and images_seen >= total and ddp.main:
        grid.write(model, run_dir / f"phase-{grown_phase}.png")
        growth_picture(run_dir)
    if stop.requested and ddp.main:
        tqdm_write(f"stopped at {images_seen / 1000:.1f} kimg; continue with: ganforge train --resume {run_dir}")
    if lock is not None:
        lock.release()
    return run_dir


class RunLock:
    """`.lock` in a run directory holds the training process's id: a second process refuses to train
    the same run (their logs and snapshots would interleave); a lock left by a process that no longer
    runs (killed, crashed) is taken over, and `took_over` says so for log.txt."""

    def __init__(self, run_dir: Path):
        self.path, self.took_over = run_dir / ".lock", ""
        holder = self._holder()
        if holder is not None and holder != os.getpid():
            if _running(holder):
                raise TrainingError(f"{run_dir} is being trained by process {holder} (its .lock); wait for it to "
                                    f"finish or stop it, then resume")
            self.took_over = f"note: took over the lock of process {holder}, which no longer runs"
        tmp = self.path.with_name(f".lock.{os.getpid()}.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, self.path)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


def out_of_memory(opts: TrainOptions, sched: Schedule, run_dir: Path, where: str) -> str:
    """What to lower when the GPU runs out of memory (PGGAN at 512 and 1024 is where runs meet it)."""
    latest = run_dir / LATEST
    kept = f"the last snapshot {latest} is intact" if latest.exists() else "no snapshot was written yet"
    return (f"out of GPU memory in the {where}: {opts.model} at {sched.resolution}x{sched.resolution}, batch "
            f"{sched.batch}, --precision {opts.precision}. Lower --batch (or --metrics-n), use --precision bf16 "
            f"and --channels-last, or spread the batch over more GPUs with --gpus N; {kept}")


def rank_slice(batch: torch.Tensor, ddp) -> torch.Tensor:
    """This rank's share of a global batch (noise drawn for all ranks: the numbers one process would use)."""
    n = batch.shape[0] // ddp.world_size
    return batch[ddp.rank * n:(ddp.rank + 1) * n]


class _NullWriter:
    """TensorBoard stand-in for ranks other than 0."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def growth_picture(run_dir: Path) -> Path | None:
    """growth.png: the grid of every phase side by side, upscaled to the largest (nearest, so pixels show)."""
    from PIL import Image

    paths = sorted(run_dir.glob("phase-*.png"))
    if len(paths) < 2:
        return None
    grids = [Image.open(p).convert("RGB") for p in paths]
    width = min(max(g.size[0] for g in grids), 512)
    strip = Image.new("RGB", (width * len(grids), width), "white")
    for i, g in enumerate(grids):
        strip.paste(g.resize((width, width), Image.NEAREST), (i * width, 0))
    strip.save(run_dir / "growth.png")
    return run_dir / "growth.png"


def tqdm_write(line: str) -> None:
    from tqdm import tqdm
    tqdm.write(line)

