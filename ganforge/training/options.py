"""The options of a training run, each declared once: its default, its help and its command-line
form live on the TrainOptions field, and `ganforge train` is generated from them. Also what
resuming may change, and the schedule of a run in words."""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import math
import os
from dataclasses import MISSING, dataclass, field

import click

from ganforge.errors import OptionError, TrainingError, check_memory
from ganforge.models import model_names


ADA_BELOW = 30_000  # --augment auto: adaptive augmentation for datasets smaller than this


# Seeds are combined into others (seed * 1_000_003 + epoch, times 8 in the metrics) that must still fit
# the 64 bits torch.Generator.manual_seed takes: 2**32 - 1 leaves that room.
SEED_MAX = 2**32 - 1


def option(default, help: str, cli: bool = True, **form):
    """A TrainOptions field with its command-line help and form: choices=[...], minimum=N,
    maximum=N, positive=True (a finite number > 0), fraction=True (a number in [0, 1]), power_of_two=True,
    flag=True (--x/--no-x), comma=True (a list given as a,b,c), cli=False (not a command-line option)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "cli": cli, **form})


@dataclass
class TrainOptions:
    """Every option of a run; saved as training_options.json and inside each snapshot."""

    model: str = option("cdcgan", "GAN to train", models=True)
    data: str = option("mnist", "'mnist' or 'mnist-captions' (built in), an image folder (class sub-folders = "
                       "labels), a .zip, or images/+text/+split.csv")
    resolution: int = option(32, "Image size (power of two)", power_of_two=True)
    channels: int | None = option(None, "1 grey or 3 RGB [default: 1 for grey data such as mnist, else 3]",
                                  choices=[1, 3])
    center_crop: bool = option(True, "Square centre crop (else squash)", flag=True)
    xflip: bool = option(False, "Random horizontal flips of reals", flag=True)
    augment: str = option("auto", "Differentiable augmentation of all D sees: ada (p adapts to D's overfitting), "
                          f"diffaug (p fixed), none [default: ada under {ADA_BELOW:,} images, else none]",
                          choices=["auto", "ada", "diffaug", "none"])
    augment_p: float | None = option(None, "Fix the probability p of each augmentation [default: 1 for diffaug; "
                                     "ada starts at 0 and adapts]", fraction=True)
    augment_ops: list[str] = option(lambda: ["color", "translation", "cutout"], "Which augmentations: a comma list "
                                    "of color, translation, cutout (DiffAugment's policy)", comma=True)
    ada_target: float = option(0.6, "ada: the r_t = E[sign(D(reals))] above which p rises", fraction=True)
    ada_kimg: float = option(500.0, "ada: kimg for p to go from 0 to 1 at the fastest", positive=True)
    split: str = option("train", "Which split.csv rows to use (captioned layout)", choices=["train", "test", "all"])
    batch: int | None = option(None, "Images per step, all GPUs together [default: the model's, 64 for cdcgan]",
                               minimum=1)
    batch_gpu: int | None = option(None, "Images per GPU in one forward pass: a larger share of --batch is "
                                   "accumulated over several [default: the whole share]", minimum=1)
    kimg: float = option(100.0, "Training length in thousands of real images shown", positive=True)
    seed: int = option(0, "Random seed (noise, data order); the same seed gives the same result", minimum=0,
                       maximum=SEED_MAX)
    model_opts: dict = option(dict, "The model's own hyperparameters (--model-opt KEY=VALUE)", cli=False)
    ema_kimg: float = option(10.0, "Half-life of the EMA generator in kimg", positive=True)
    ema_rampup: float | None = option(0.05, "EMA half-life at most this fraction of images seen (None: off)",
                                      cli=False)
    tick: float = option(1.0, "kimg per stats row", positive=True)
    sample_every: float = option(10.0, "kimg between sample grids", positive=True)
    snap: float = option(25.0, "kimg between kept snapshots (latest.pt is rewritten each time)", positive=True)
    metrics: list[str] = option(list, "Metrics to evaluate during training, e.g. fid,swd,acc (see evaluate)",
                                comma=True)
    metrics_every: float = option(50.0, "kimg between metric evaluations", positive=True)
    metrics_n: int = option(5000, "Generated images per evaluation", minimum=2)
    best_metric: str | None = option(None, "Keep best.pt by this metric [default: the first of --metrics]")
    precision: str = option("fp32", "Arithmetic: fp32, tf32 matmuls, or bf16/fp16 autocast (fp16 with loss "
                            "scaling)", choices=["fp32", "tf32", "bf16", "fp16"])
    channels_last: bool = option(False, "NHWC convolutions (faster with bf16/fp16 on GPUs)", flag=True)
    compile: bool = option(False, "torch.compile G and D where the graph allows (not through double backward)",
                           flag=True)
    cuda_graphs: bool = option(False, "Replay each step from a CUDA graph where it repeats exactly (stable phases, "
                               "one process, not fp16): far fewer launches for small networks", flag=True)
    sync_bn: bool = option(False, "Under torchrun on GPUs: BatchNorm statistics over every GPU's share of the "
                           "batch (SyncBatchNorm), not each GPU's alone", flag=True)
    device: str = option("auto", "auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    workers: int = option(4, "Processes decoding images ahead of the step when the data is too large to hold "
                          "in memory (0: decode in the training process)", minimum=0)
    nonfinite_retries: int = option(3, "NaN/Inf: restore the last snapshot and continue this many times, then stop",
                                    cli=False)
    outdir: str = option("runs", "Parent folder of numbered run directories")
    run_id: str | None = option(None, "The run's identity, drawn when it starts: a snapshot resumes only in the "
                                "run that wrote it", cli=False)
    init_from: str | None = option(None, "Start a new run from another run's networks (G, D, G's EMA): its run "
                                   "directory or a snapshot; optimizers, counters and random streams start fresh")
    init_from_sha256: str | None = option(None, "SHA-256 of the --init-from snapshot file", cli=False)
    freeze_d: int = option(0, "Keep D's first N blocks from the image side as they are (FreezeD; for fine-tuning "
                           "with --init-from)", minimum=0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def power_of_two(ctx, param, value):
    if value is not None and (value < 4 or value & (value - 1)):
        raise click.BadParameter(f"{value} is not a power of two >= 4", ctx, param)
    return value


class FiniteRange(click.FloatRange):
    """click's FloatRange without NaN, which it lets through (every comparison with NaN is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value} is not a number in the range {self._describe_range()}", param, ctx)
        return number


def finite_positive(ctx, param, value):
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise click.BadParameter(f"{value} must be a finite number > 0", ctx, param)
    return value


class ModelChoice(click.Choice):
    """The registered models, read when the option is parsed: a model registered after this module
    was imported (a plug-in, a test) is a choice too."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return model_names()

    @choices.setter
    def choices(self, value):
        pass


def command_line_form(name: str) -> tuple[list[str], dict]:
    """The click declaration and keyword arguments of a TrainOptions field's command-line option, from
    its one declaration (default, help, form): `ganforge train` is made of these, and `train()` from
    Python checks its keywords with them, so both refuse a value with the same words."""
    spec = next(f for f in dataclasses.fields(TrainOptions) if f.name == name)
    form, flag = spec.metadata, "--" + name.replace("_", "-")
    kwargs = dict(default=spec.default if spec.default is not MISSING else None, help=form["help"])
    if form.get("flag"):
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    elif form.get("comma"):  # given as a,b,c and kept as a list
        kwargs.update(default=",".join(spec.default_factory()),
                      callback=lambda ctx, param, value: [v.strip() for v in value.split(",") if v.strip()])
    elif form.get("models"):
        kwargs["type"] = ModelChoice()
    elif form.get("choices"):
        kwargs["type"] = click.Choice([str(c) for c in form["choices"]])
        if isinstance(form["choices"][0], int):  # given as text, kept as the number
            kwargs["callback"] = lambda ctx, param, value: None if value is None else int(value)
            kwargs["default"] = None if kwargs["default"] is None else str(kwargs["default"])
    elif "minimum" in form:
        kwargs["type"] = click.IntRange(min=form["minimum"], max=form.get("maximum"))
    elif form.get("positive"):
        kwargs.update(type=float, callback=finite_positive)
    elif form.get("fraction"):
        kwargs["type"] = FiniteRange(0.0, 1.0)
    elif form.get("power_of_two"):
        kwargs.update(type=int, callback=power_of_two)
    kwargs["show_default"] = kwargs["default"] not in (None, "")
    return [flag, name], kwargs


# Model options that are not the model's to set, and where they come from instead.
RESERVED_MODEL_OPTS = {"resolution": "--resolution", "channels": "--channels or the data",
                       "num_classes": "the data's classes"}


def checked_options(given: dict) -> TrainOptions:
    """TrainOptions from keyword values, each checked as `ganforge train` checks its option (the same
    message, as an OptionError); an unknown keyword is refused with the closest names."""
    from ganforge.metrics.evaluate import parse_metrics

    known = [f.name for f in dataclasses.fields(TrainOptions)]
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise OptionError(f"{name!r} is not a training option; "
                              + (f"did you mean {' or '.join(map(repr, close))}?" if close else
                                 f"the options are {', '.join(known)}"))
    values = dict(given)
    ctx = click.Context(click.Command("train"))
    for spec in dataclasses.fields(TrainOptions):
        if spec.name not in given or not spec.metadata["cli"]:
            continue
        value = given[spec.name]
        if spec.metadata.get("comma") and isinstance(value, (list, tuple)):
            value = ",".join(value)
        elif spec.metadata.get("choices") and value is not None:
            value = str(value)
        decls, kwargs = command_line_form(spec.name)
        try:
            values[spec.name] = click.Option(decls, **kwargs).process_value(ctx, value)
        except click.BadParameter as e:
            raise OptionError(e.format_message()) from None
    for key in values.get("model_opts") or {}:
        if key in RESERVED_MODEL_OPTS:
            raise OptionError(click.BadParameter(f"{key} is set by {RESERVED_MODEL_OPTS[key]}, not --model-opt",
                                                 param_hint="--model-opt").format_message())
    values["metrics"] = parse_metrics(values.get("metrics", []))
    if values.get("best_metric") is not None and values["best_metric"] not in values["metrics"]:
        raise OptionError(click.BadParameter(f"{values['best_metric']} is not among --metrics",
                                             param_hint="--best-metric").format_message())
    return TrainOptions(**values)


# Options that may differ when a run is resumed: they change how long or where it runs, not what it computes.
RESUME_MAY_CHANGE = {"batch_gpu", "channels_last", "compile", "cuda_graphs", "nonfinite_retries", "kimg", "tick", "sample_every", "snap", "device",
                     "workers", "outdir", "metrics", "metrics_every", "metrics_n", "best_metric"}


def absolute_data(opts: TrainOptions) -> TrainOptions:
    """--data as an absolute path (a built-in dataset's name as it is): the run stores it, so that a
    resume from another working directory reads the same data, not a folder of the same name there."""
    from ganforge.data import BUILTIN_DATASETS

    if opts.data in BUILTIN_DATASETS:
        return opts
    return dataclasses.replace(opts, data=os.path.abspath(os.path.expanduser(opts.data)))


def saved_options(saved: dict) -> dict:
    """A snapshot's options in today's form: runs before the model's width became a model option
    kept it as `base_channels` beside the shared options."""
    saved = {"augment": "none", **saved}  # runs before augmentation trained without it
    width = saved.pop("base_channels", None)
    if width is not None:
        saved["model_opts"] = {"base_channels": width, **saved.get("model_opts", {})}
    return saved


def check_resume(opts: TrainOptions, saved: dict, explicit: set[str], path: str) -> TrainOptions:
    """Start from the snapshot's options; allow only explicit changes that keep the computation the same."""
    saved = saved_options(saved)
    merged = TrainOptions(**{**saved, **{k: getattr(opts, k) for k in explicit & RESUME_MAY_CHANGE}})
    for key in sorted(explicit - RESUME_MAY_CHANGE):
        if getattr(opts, key) != saved.get(key):
            raise TrainingError(f"--resume {path}: option --{key.replace('_', '-')} {getattr(opts, key)!r} differs "
                                f"from the run's {saved.get(key)!r}; a resumed run keeps its configuration "
                                f"(only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    return merged


def resolve_options(opts: TrainOptions) -> TrainOptions:
    """Fill the options left open (None): the batch with the model's default, the channels from the data."""
    from ganforge.data import detect_channels
    from ganforge.models import model_class

    if opts.batch is None:
        opts = dataclasses.replace(opts, batch=model_class(opts.model).default_batch)
    if opts.channels is None:
        opts = dataclasses.replace(opts, channels=detect_channels(opts.data))
    return opts


def check_options(opts: TrainOptions) -> None:
    """What a run's resolved options must hold beyond each option's own form (a TrainOptions made in
    Python skips that form): lengths and probabilities that make sense, known augmentations, and a
    real batch that fits in memory."""
    from ganforge.augment import OPS as AUGMENT_OPS  # here: the command line's help imports no torch

    if (opts.batch is not None and opts.batch < 1) or not math.isfinite(opts.kimg) or opts.kimg <= 0:
        raise TrainingError("--batch must be >= 1 and --kimg a positive number")
    if round(opts.kimg * 1000) < 1:
        raise TrainingError(f"--kimg {opts.kimg:g} is less than one image")
    if opts.augment_p is not None and (opts.augment == "none" or not 0 <= opts.augment_p <= 1):
        raise TrainingError(f"--augment-p {opts.augment_p:g}: a probability from 0 to 1, with --augment ada or diffaug")
    if not opts.augment_ops or any(op not in AUGMENT_OPS for op in opts.augment_ops):
        raise TrainingError(f"--augment-ops {','.join(opts.augment_ops)}: a comma list of {', '.join(AUGMENT_OPS)}")
    if opts.batch is not None:  # the real batch alone, as uint8 and float, before any network
        check_memory(opts.batch * (opts.channels or 3) * opts.resolution**2 * 5, f"--batch {opts.batch} at "
                     f"{opts.resolution}x{opts.resolution}", "--batch")


def resolve_augment(opts: TrainOptions, images: int) -> TrainOptions:
    """--augment auto, once the dataset's size is known: adaptive augmentation for small datasets."""
    if opts.augment != "auto":
        return opts
    if opts.augment_p is not None:  # a fixed p asks for augmentation whatever the size
        return dataclasses.replace(opts, augment="diffaug")
    return dataclasses.replace(opts, augment="ada" if images < ADA_BELOW else "none")


def model_config(opts: TrainOptions, channels: int, num_classes: int) -> dict:
    return {**dict(resolution=opts.resolution, channels=channels, num_classes=num_classes), **opts.model_opts}


@dataclass
class PlannedPeriod:
    """A stretch of a run with one schedule period, resolution and batch, counted as the loop steps
    it: `steps` steps of `schedule.batch` images from image `start` (the last step may pass --kimg)."""

    start: int
    steps: int
    schedule: object  # the model's Schedule at `start`

    @property
    def images(self) -> int:
        return self.steps * self.schedule.batch

    @property
    def name(self) -> str:
        return period_name(self.schedule)


def period_name(schedule) -> str:
    """'8x8 fade', '8x8 stable', or '32x32 train' for the one period of a fixed schedule."""
    return f"{schedule.resolution}x{schedule.resolution} {schedule.period.partition('-')[2] or 'train'}"


def run_periods(model, opts: TrainOptions, start: int = 0) -> list[PlannedPeriod]:
    """The periods the run passes through from image `start` to --kimg, with the steps the loop takes
    in each: the loop asks `model.schedule` at the image count where a step begins and moves on by its
    batch, so a period's images are whole batches. Where the model states its period starts, the
    count is done period by period; otherwise every step's schedule is asked."""
    total = round(opts.kimg * 1000)
    starts = model.period_starts(opts.batch, opts.resolution)
    cuts = None if starts is None else sorted({c for c in starts if start < c < total} | {total})
    periods: list[PlannedPeriod] = []
    images = start
    while images < total:
        sched = model.schedule(images, opts.batch, opts.resolution)
        cut = images + 1 if cuts is None else cuts[bisect.bisect_right(cuts, images)]
        steps = -(-(cut - images) // sched.batch)  # the steps that begin before the cut
        last = periods[-1].schedule if periods else None
        if last is not None and (last.period, last.stage, last.resolution, last.batch) == \
                (sched.period, sched.stage, sched.resolution, sched.batch):
            periods[-1].steps += steps
        else:
            periods.append(PlannedPeriod(images, steps, sched))
        images += steps * sched.batch
    return periods


def schedule_periods(model, opts: TrainOptions) -> list[tuple[float, object]]:
    """(kimg where it starts, schedule) for each period the run will pass through within --kimg."""
    return [(p.start / 1000, p.schedule) for p in run_periods(model, opts)]


def accumulation_rounds(batch: int, world: int, batch_gpu: int | None, where: str = "") -> int:
    """Micro-batches per step on each process: 1, or the process's share of the batch over --batch-gpu."""
    if batch % world:
        raise TrainingError(f"batch {batch}{where} does not divide among {world} processes: set --batch to a "
                            f"multiple of {world}")
    share = batch // world
    if batch_gpu is None or batch_gpu >= share:
        return 1
    if share % batch_gpu:
        raise TrainingError(f"--batch-gpu {batch_gpu}: must divide each process's share of the batch "
                            f"({share} of {batch}{where})")
    return share // batch_gpu


def check_batches(model, opts: TrainOptions, world: int) -> None:
    """Every batch the run will train with divides among the processes and into micro-batches: a
    preset's batch at 512x512 is refused now, not days into the run."""
    for _, sched in schedule_periods(model, opts):
        accumulation_rounds(sched.batch, world, opts.batch_gpu, f" at {sched.resolution}x{sched.resolution}")


def describe_schedule(model, opts: TrainOptions) -> list[str]:
    """Plain words for log.txt and --dry-run: the resolutions the run reaches, and when."""
    periods = schedule_periods(model, opts)
    lines = []
    if len(periods) > 1 or (periods and periods[0][1].period):
        lines.append("schedule: " + "; ".join(f"{period_name(s)} from {round(kimg, 1):g} kimg (batch {s.batch})"
                                              for kimg, s in periods))
    reached = periods[-1][1].resolution if periods else opts.resolution
    if reached < opts.resolution:
        stays = "stays at" if len(periods) == 1 else "reaches only"
        lines.append(f"warning: the run {stays} {reached}x{reached}: --kimg {opts.kimg:g} ends before the target "
                     f"{opts.resolution}x{opts.resolution}; give a larger --kimg (or shorter periods)")
    return lines


def plan(opts: TrainOptions, resume: str | None, explicit: set[str]) -> tuple[TrainOptions, list[str]]:
    """What --dry-run shows: the options a run would train with (a resumed run's own, with what may
    change) and its schedule in words, asked of the model itself (built on the CPU, no data read)."""
    from ganforge.models import GanModel, build_model, model_class
    from ganforge.snapshots import load_snapshot

    opts = absolute_data(opts)
    if resume:
        opts = check_resume(opts, load_snapshot(resume)["options"], explicit, resume)
    opts = resolve_options(opts)
    if model_class(opts.model).schedule is GanModel.schedule:  # a fixed schedule has nothing to say
        return opts, []
    notes = [] if opts.batch is not None else ["batch: set per resolution by the model (see the schedule)"]
    return opts, notes + describe_schedule(build_model(opts.model, model_config(opts, opts.channels or 3, 0)), opts)
