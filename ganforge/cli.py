"""Command line: `ganforge train | generate | evaluate | compare | interpolate | timelapse | project | dataset | studio |
runs | info | plot | export | bench | torchrun` (and `ganforge --version`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import fields
from functools import partial
from pathlib import Path

import click
from click.core import ParameterSource

from ganforge import __version__
from ganforge.errors import GanforgeError, GanforgeWarning
from ganforge.metrics import default_metrics, inception_metrics, metrics_help, registered, suggested_metrics
from ganforge.training.options import (RESERVED_MODEL_OPTS, SEED_MAX, FiniteRange, TrainOptions, command_line_form,
                                       finite_positive)


_finite_positive = finite_positive  # the check of other commands' options too


def _parse_model_opts(pairs: tuple[str, ...], aliases: dict | None = None) -> dict:
    """KEY=VALUE strings -> dict; values read as JSON where they parse (numbers, true/false), else text."""
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--model-opt")
        if key in RESERVED_MODEL_OPTS:
            raise click.BadParameter(f"{key} is set by {RESERVED_MODEL_OPTS[key]}, not --model-opt", param_hint="--model-opt")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    for key, value in (aliases or {}).items():
        if value is not None and key in opts and opts[key] != value:
            raise click.BadParameter(f"--{key.replace('_', '-')} {value} and --model-opt {key}={opts[key]!r} disagree; "
                                     "give one", param_hint="--model-opt")
        if value is not None:
            opts[key] = value
    return opts


def option_from(name: str, **override):
    """The click option of a TrainOptions field, from its one declaration (default, help, form);
    `override` changes what another command needs differently (its default, say)."""
    decls, kwargs = command_line_form(name)
    if "default" in override:  # a default of the command's own: shown where it is one
        kwargs["show_default"] = override["default"] not in (None, "")
    return click.option(*decls, **{**kwargs, **override})


def train_options(function):
    """Every TrainOptions field that is a command-line option, in declaration order."""
    for spec in reversed([f for f in fields(TrainOptions) if f.metadata["cli"]]):
        function = option_from(spec.name)(function)
    return function


# Options several commands share, declared once (on TrainOptions) so their defaults and help agree.
DEVICE, SEED, PRECISION = option_from("device"), option_from("seed"), option_from("precision")
SCALE = click.option("--scale", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Enlarge the images this many times, each pixel a block (for small samples: 16x16, 32x32)")
MODEL_OPT = click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
                         help="Set one of the model's hyperparameters, e.g. lr=5e-5 or skip=true (repeatable)")
INCEPTION_WEIGHTS = click.option("--inception-weights", type=click.Path(exists=True, dir_okay=False), default=None,
                                 help="TorchScript Inception for the metrics that use its features [default: the "
                                      "bundled FID weights]")


class MetricsOption(click.Option):
    """--metrics: its help and default read from the metric registry when shown or used, so that a
    metric a plug-in declares is offered as a built-in one is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, default=lambda: ",".join(default_metrics()), help="Comma-separated", show_default=False,
                         **kwargs)

    def get_help_record(self, ctx):
        self.help = f"{metrics_help()}  [default: {','.join(default_metrics())}]"
        return super().get_help_record(ctx)


# Flags the papers' users expect, each the same as one --model-opt.
MODEL_OPT_ALIASES = {"gamma": "BEGAN's diversity ratio gamma", "base_channels": "Network width (n, base filters)"}


# What Ctrl-C leaves, per command, in the one line it prints (training's own stop, which writes
# latest.pt first, prints its resume line in the loop; this is for a second Ctrl-C or one before the first step).
INTERRUPTED = {
    "train": "training stopped at once; a run that had begun continues from its last snapshot with "
             "ganforge train --resume RUN, a run that had not leaves nothing",
    "evaluate": "the blocks of images measured so far are kept in the cache folder (the run's metric-cache/ or "
                "--cache-dir); the same command continues from them",
    "dataset": "nothing was written (a conversion is written whole or not at all); run the command again",
}

# What the machine refuses, not ganforge's fault: a full or read-only disk, a file without the right.
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class _GanforgeErrors(click.Group):
    """Project errors (bad data, snapshot, option) and what the machine refuses (a full or read-only
    disk) end with one clear line (`--debug`: with the traceback); anything else is a fault and keeps
    its traceback, with a request to report it."""

    def invoke(self, ctx):
        try:
            with _sigterm_as_interrupt() as stopped_by:
                return super().invoke(ctx)
        except GanforgeError as e:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:
            if not _stdout_reader_gone():
                click.echo("ganforge: unexpected error, probably a bug: please report it with the traceback below",
                           err=True)
                raise
            # `ganforge runs | head -1`: the reader took what it wanted and left; no fault, nothing to say.
            # stdout goes to /dev/null so that Python's own flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + getattr(signal, "SIGPIPE", 13))  # 141, as a shell reports a writer whose reader left
        except OSError as e:
            if ctx.params.get("debug") or e.errno not in MACHINE_ERRNOS:
                click.echo("ganforge: unexpected error, probably a bug: please report it with the traceback below",
                           err=True)
                raise
            raise click.ClickException(f"{e.strerror}" + (f": {e.filename}" if e.filename else "")) from e
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:  # one line and the shell's code for Ctrl-C, not click's bare "Aborted!"
            said = INTERRUPTED.get(ctx.invoked_subcommand, f"{ctx.invoked_subcommand} stopped before it finished")
            click.echo(("\n" if sys.stderr.isatty() else "") + f"interrupted: {said}", err=True)  # past the ^C
            ctx.exit(128 + stopped_by.get("signal", signal.SIGINT))  # the shell's codes: 130 Ctrl-C, 143 SIGTERM
        except Exception:
            click.echo("ganforge: unexpected error, probably a bug: please report it with the traceback below", err=True)
            raise


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (the write end then polls as an error), so
    that a broken pipe of another kind (a subprocess's) is still reported as a fault."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are reported unasked
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout: take it as stdout's
        return True


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a scheduler's stop, a closed terminal's session) ends a command as Ctrl-C does:
    its one line of what was kept, where Python's default would end it without a word. Yields a dict
    that holds the signal once one came. Training's own stop handler replaces this one while it steps."""
    stopped_by = {}

    def interrupt(signum, frame):
        stopped_by["signal"] = signum
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a command invoked from another one): leave the handler alone
        previous = None
    try:
        yield stopped_by
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@click.group(cls=_GanforgeErrors)
@click.version_option(__version__, "--version", prog_name="ganforge", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show the traceback of errors that are normally one line")
def main(debug):
    """ganforge: train, sample, measure and export GANs on your own images."""
    warnings.simplefilter("default", UserWarning)
    warnings.showwarning = _one_line_warning


_python_showwarning = warnings.showwarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """ganforge's own warnings as one line, like its errors; other libraries' keep Python's form."""
    if issubclass(category, GanforgeWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


@main.command()
@train_options
@click.option("--base-channels", type=click.IntRange(min=1), default=None,
              help=MODEL_OPT_ALIASES["base_channels"] + " [default: model's] (same as --model-opt base_channels=...)")
@click.option("--gamma", type=FiniteRange(0, 1, min_open=True), default=None,
              help=MODEL_OPT_ALIASES["gamma"] + " (same as --model-opt gamma=...)")
@MODEL_OPT
@INCEPTION_WEIGHTS
@click.option("--resume", type=click.Path(exists=True), default=None, help="Run directory or snapshot to continue")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this machine (one per GPU) through torchrun; --batch is the total over all")
@click.option("--dry-run", is_flag=True, help="Check the data against the model (without decoding it), print the "
              "resolved options and exit")
@click.option("--plan", "plan_only", is_flag=True,
              help="Time a few steps of each phase of the run on this device, print how long the run takes, and "
                   "exit (writes nothing)")
@click.option("--quiet", is_flag=True, help="No progress bars or tick lines on the console (warnings still show)")
@click.pass_context
def train(ctx, resume, dry_run, plan_only, quiet, inception_weights, gpus, **kwargs):
    """Train a GAN (default: the conditional DCGAN on the built-in MNIST digits)."""
    if gpus > 1 and "WORLD_SIZE" not in os.environ and not (dry_run or plan_only):  # relaunch this command under torchrun
        _check_before_launch(gpus, kwargs, resume)  # one clear line here, not one traceback per process
        args = [a for a in sys.argv[1:]]
        i = next(i for i, a in enumerate(args) if a.startswith("--gpus"))
        del args[i:i + (1 if "=" in args[i] else 2)]
        os.execvp(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={gpus}", "-m", "ganforge", *args])
    from ganforge.api import train as run_training
    from ganforge.training.options import checked_options, plan

    if quiet:  # every bar of the run (decoding, caption encoding, metrics), in its worker processes too
        os.environ["GANFORGE_PROGRESS"] = "0"
    explicit = {k for k in kwargs if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    aliases = {k: kwargs.pop(k) for k in MODEL_OPT_ALIASES}
    kwargs["model_opts"] = _parse_model_opts(kwargs.pop("model_opt"), aliases)
    if explicit & {"model_opt", *MODEL_OPT_ALIASES}:
        explicit.add("model_opts")
    given = {k: kwargs[k] for k in explicit - {"model_opt", *MODEL_OPT_ALIASES}}  # the rest: TrainOptions' defaults
    if plan_only or dry_run:
        opts = checked_options(given)
    if plan_only:
        if resume or gpus > 1 or "WORLD_SIZE" in os.environ:
            raise click.UsageError("--plan times a new run in one process: leave out --resume and --gpus (a resumed "
                                   "run logs its estimate at its first tick)")
        from ganforge.training.bench import plan_run

        lines, _ = plan_run(opts, set(given))
        click.echo("\n".join(lines))
        return
    if dry_run:
        opts, schedule = plan(opts, resume, set(given))
        from ganforge.training.loop import training_data

        from ganforge.hardware import resolve_device
        from ganforge.training.options import resolve_augment

        dataset = training_data(opts, preload=False)  # refused now as a real start would refuse it (headers only)
        opts = resolve_augment(opts, len(dataset))  # as the run records it: auto made ada or none by the data's size
        # device stays as the run records it (auto chooses again where a run resumes), with what it is here beside it
        resolved = {**opts.to_json(), "device_resolved": str(resolve_device(opts.device))}
        click.echo(json.dumps(resolved, indent=2))
        for line in schedule:
            click.echo(line)
        return
    try:
        run = run_training(resume=resume, progress=not quiet, inception_weights=inception_weights, **given)
    except KeyboardInterrupt as e:
        if getattr(e, "run", None) is None:  # a second Ctrl-C, or one before the first step: the group's line
            raise
        if int(os.environ.get("RANK", "0")) == 0:  # Ctrl-C or SIGTERM: latest.pt is written and its line said so
            ctx.exit(130)
        return
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"run directory: {run}")
        for line in _next_commands(run.path, run.options):
            click.echo(line)


def _next_commands(run_dir: Path, options: dict) -> list[str]:
    """What to do with a finished run (its saved options), as a stopped one is told how to resume."""
    from ganforge.models import model_class
    from ganforge.models.base import TEXT

    conditioning = model_class(options["model"]).conditioning  # a class attribute where a model fixes it
    sample = f' --prompt "{_a_caption(options)}"' if conditioning == TEXT else ""
    # the Inception metrics the [metrics] extra serves alone: not `is`, whose logits its FID weights lack
    extra = [name for name in inception_metrics() if "logits" not in registered()[name].keeps]
    metrics = suggested_metrics(conditioning)
    return ["next:",
            f"  ganforge generate {run_dir}{sample} --n 16 --out {run_dir / 'samples.png'}",
            f"  ganforge evaluate {run_dir} --metrics {','.join(metrics)} --n 1000   # {', '.join(extra)} too, with the "
            "[metrics] extra",
            f"  ganforge studio {run_dir.parent}   # the run in a web page, with the [studio] extra"]


def _a_caption(options: dict) -> str:
    from ganforge.data import load_dataset

    try:
        captions = load_dataset(options["data"], options["resolution"], options["channels"], options["center_crop"],
                                options["split"], preload=False).captions
        return captions[0][0].replace('"', "'")
    except (GanforgeError, OSError, IndexError, TypeError):
        return "a caption"


def _check_before_launch(gpus: int, options: dict, resume: str | None) -> None:
    """The mistakes every one of the --gpus processes would otherwise report at once."""
    import torch

    if options["device"] != "cpu" and torch.cuda.device_count() < gpus:  # --device cpu: CPU processes (gloo)
        raise click.BadParameter(f"{gpus} processes need {gpus} GPUs; this machine has {torch.cuda.device_count()} "
                                 "(--device cpu runs the processes on CPUs)", param_hint="--gpus")
    from ganforge.data import BUILTIN_DATASETS

    if resume is None and options["data"] not in BUILTIN_DATASETS and not Path(options["data"]).expanduser().exists():
        raise click.BadParameter(f"{options['data']}: no such file or folder", param_hint="--data")
    if options["batch"] is not None:  # else each process reports it, and torchrun adds its own traceback
        from ganforge.training.options import accumulation_rounds

        accumulation_rounds(options["batch"], gpus, options["batch_gpu"])


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("torchrun_args", metavar="TORCHRUN_ARGS...", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def torchrun(ctx, torchrun_args):
    """torchrun (same options), whose c10d rendezvous failures stop it with one line.

    Replace `torchrun` with `ganforge torchrun` in each node's command. A port of --rdzv_endpoint
    held by another program (torchrun waits for it without end), a rendezvous store no one serves, and
    a rendezvous short of --nnodes nodes then end in one line each, within read_timeout or join_timeout
    (--rdzv_conf; 60 s and 600 s by default), before any worker starts.
    """
    from ganforge.training.launch import torchrun as launch

    ctx.exit(launch(list(torchrun_args), debug=ctx.parent.params.get("debug", False)))


@main.command()
@click.argument("run_or_snapshot", type=click.Path(exists=True))
@click.option("--n", type=click.IntRange(min=1), default=64, show_default=True, help="Number of images")
@click.option("--label", default=None, help="Class to generate, by number or name (a class folder's) "
              "[default: one row per class]")
@SEED
@click.option("--out", default="samples.png", show_default=True, help="A .png grid, or a folder for one PNG per image")
@click.option("--prompt", "prompts", multiple=True, help="Text-to-image (dfgan): a caption; repeat for more rows")
@click.option("--prompts", "prompt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text-to-image: a UTF-8 file of captions, one a line")
@click.option("--no-truncation", is_flag=True, help="Text-to-image: plain N(0, 1) noise instead of truncated")
@click.option("--psi", type=FiniteRange(0, 2), default=1.0, show_default=True,  # sampling.MAX_PSI (it imports torch)
              help="Truncation: the noise scaled toward its mean (lower: more typical, less varied samples)")
@SCALE
@DEVICE
def generate(run_or_snapshot, n, label, seed, out, prompts, prompt_file, no_truncation, psi, scale, device):
    """Sample images from a run's EMA generator (the RuntimeGenerator).

    For text-to-image runs, --n images are drawn for each prompt, one grid row per prompt.
    """
    from ganforge.hardware import resolve_device
    from ganforge.inference import GRID_SUFFIXES, Generator, captions_beside, check_scale, class_name, enlarge, write_images

    grid = Path(out).suffix.lower() in GRID_SUFFIXES
    _check_writable(out, "--out", folder=not grid)
    if prompt_file:
        prompts = (*prompts, *Path(prompt_file).read_text(encoding="utf-8", errors="replace").splitlines())
    rows = [p for p in prompts if p.strip()]
    if rows and grid:  # the row captions go beside the grid: never over a run's own file
        _check_writable(captions_beside(out), "--out")
    generator = Generator.load(run_or_snapshot, resolve_device(device))
    check_scale(n * max(len(rows), 1), generator.channels, generator.resolution, scale)
    samples = generator.draw(n, seed, label, prompts, psi, truncate=not no_truncation)
    paths = write_images(enlarge(samples.images, scale), out, samples.columns, samples.labels, samples.captions)
    if samples.captions is not None:
        beside = f" and its row captions to {captions_beside(out)}" if grid else ""
        click.echo(f"wrote {len(samples.images)} images ({n} per prompt) to {out if grid else Path(out)}{beside}")
    else:
        of = f" of class {class_name(generator.source, samples.label)}" if samples.label is not None else ""
        click.echo(f"wrote {n} images{of} to {out if len(paths) == 1 else Path(out)}")


@main.command()
@click.argument("run_or_snapshot", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx (onnxruntime, any language) or torchscript (PyTorch without ganforge)")
@click.option("--out", default=None, help="Output file [default: generator.onnx / generator.pt beside the snapshot]")
def export(run_or_snapshot, fmt, out):
    """Write a standalone generator (noise [+ label] -> image in [-1, 1]) that runs without ganforge."""
    from ganforge.api import export as write_export
    from ganforge.snapshots import find_snapshot

    if out is not None:  # the default, beside the snapshot, is never one of the run's own files
        _check_writable(out, "--out", reading=find_snapshot(run_or_snapshot))
    write_export(run_or_snapshot, fmt, out, report=click.echo)


@main.command()
@click.argument("run_or_snapshot", required=False, type=click.Path(exists=True))
@click.option("--metrics", cls=MetricsOption)
@click.option("--real", default=None, help="Real data (any --data form) [default: the run's training data]")
@click.option("--fake", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of generated images instead of a run")
@click.option("--n", type=click.IntRange(min=2), default=10_000, show_default=True, help="Images a side")
@option_from("split", default=None, help="Split of a captioned real dataset [default: the run's own, usually train; "
             "the DF-GAN paper's figures are on test]")
@option_from("resolution", default=None,
             help="Resolution for --fake/--real folders [default: the run's, or the first fake image's]")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="Also report real images against real ones, for the metrics that have such a floor")
@INCEPTION_WEIGHTS
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache real statistics here [default: the run directory's metric-cache/, none for folders]")
@DEVICE
@SEED
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON here")
def evaluate(run_or_snapshot, metrics, real, fake, n, split, resolution, floor, inception_weights, cache_dir, device, seed,
             out):
    """Measure a run's generator (or a folder of images) against real images."""
    from ganforge.api import evaluate as measure
    from ganforge.snapshots import find_snapshot

    if out:
        _check_writable(out, "--out", reading=find_snapshot(run_or_snapshot) if run_or_snapshot else None)
    results = measure(run_or_snapshot, metrics, n, real=real, fake=fake, split=split, resolution=resolution,
                      floor=floor, inception_weights=inception_weights, cache_dir=cache_dir, device=device, seed=seed,
                      out=out, report=partial(click.echo, err=True))
    click.echo(json.dumps(results, indent=2))


@main.command()
@click.argument("sources", metavar="RUN_OR_JSON...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--paper", multiple=True, metavar="METRIC=VALUE", callback=lambda ctx, param, value: _paper_figures(value),
              help="A published figure to set beside them, e.g. fid=14.81 (repeatable)")
@click.option("--paper-n", type=click.IntRange(min=1), default=None,
              help="The number of generated images the published figures were measured on")
def compare(sources, paper, paper_n):
    """Print the latest figures of runs (or of evaluate --out files) side by side, and mark each metric
    whose figures were measured under different protocols, naming the fields that differ."""
    from ganforge.compare import comparison

    for line in comparison(list(sources), paper, {"n_generated": paper_n} if paper_n else None):
        click.echo(line)


def _paper_figures(pairs: tuple[str, ...]) -> dict[str, float]:
    """METRIC=VALUE strings -> {metric: value}, for metrics ganforge knows."""
    figures = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name.strip().lower() not in registered():
            raise click.BadParameter(f"{pair!r}: unknown metric {name!r} (choose from {', '.join(registered())})",
                                     param_hint="--paper")
        try:
            figures[name.strip().lower()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r} is not METRIC=NUMBER, e.g. fid=14.81", param_hint="--paper") from None
    return figures


def _check_writable(path: str | Path, option: str, folder: bool = False, reading: str | Path | None = None) -> None:
    """Refuse an output that cannot be written before the work that would fill it starts, and one
    that would replace a run's own file or `reading`, the snapshot the command reads."""
    from ganforge.api import unwritable

    problem = unwritable(path, folder, reading)
    if problem is not None:  # a usage error (exit 2), as click's own checks of the options
        raise click.BadParameter(problem, param_hint=option)


def _number_list(ctx, param, value: str | None) -> list[int] | None:
    """A comma-separated list of whole numbers >= 0 (seeds, class labels)."""
    if value is None:
        return None
    try:
        numbers = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers, e.g. 1,7,42") from None
    if not numbers or min(numbers) < 0 or max(numbers) > SEED_MAX:
        raise click.BadParameter(f"{value!r}: give whole numbers 0..{SEED_MAX}, e.g. 1,7,42")
    return numbers


@main.command()
@click.argument("run_or_snapshot", type=click.Path(exists=True))
@click.option("--out", default="walk.mp4", show_default=True, help="A .mp4 (the [video] extra) or .gif file")
@click.option("--seeds", default="0,1,2,3", show_default=True, callback=_number_list,
              help="The walk passes through each seed's sample and returns to the first")
@click.option("--seconds", type=float, default=10.0, show_default=True, callback=_finite_positive, help="Length of the loop")
@click.option("--fps", type=click.IntRange(1, 120), default=30, show_default=True, help="Frames per second")
@click.option("--grid", type=click.IntRange(1, 8), default=1, show_default=True, help="N x N walks side by side")
@click.option("--labels", "--label", "labels", default=None,
              callback=lambda ctx, param, value: None if value is None else [v.strip() for v in value.split(",") if v.strip()],
              help="Class-conditional run: the class of each keyframe, by number or name, e.g. 3,8 (the class "
                   "embedding moves between them) [default: 0]")
@click.option("--prompt", "prompts", multiple=True,
              help="Text-to-image: the caption of a keyframe; repeat to move between captions")
@click.option("--latent", "latent_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A latent.npy written by ganforge project, as a keyframe instead of a seed; repeat for more")
@SCALE
@DEVICE
@click.pass_context
def interpolate(ctx, run_or_snapshot, out, seeds, seconds, fps, grid, labels, prompts, latent_files, scale, device):
    """Write a looping latent walk through the samples of the given seeds (or projected latents, and
    classes or captions) as a video."""
    from ganforge.api import interpolate as walk

    _check_writable(out, "--out")
    walk(run_or_snapshot, out, seeds=None if ctx.get_parameter_source("seeds") == ParameterSource.DEFAULT else seeds,
         seconds=seconds, fps=fps, grid=grid, labels=labels, prompts=prompts, latents=latent_files, scale=scale,
         device=device, report=click.echo)


@main.command()
@click.argument("roots", metavar="[RUNS_DIR]...", nargs=-1, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; 0.0.0.0 opens the page to the network, on purpose")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to serve on")
@click.option("--refresh", type=float, default=5.0, show_default=True, callback=_finite_positive,
              help="Seconds between updates of the Training tab")
@DEVICE
def studio(roots, host, port, refresh, device):
    """Explore runs in a local web page: samples, walks, a run as it trains, options and metrics.

    RUNS_DIR: folders holding runs, or runs themselves [default: runs]. Only runs under them are
    offered or read. Stop with Ctrl-C.
    """
    from ganforge.errors import require
    from ganforge.hardware import resolve_device

    roots = list(roots) or ["runs"]
    missing = next((r for r in roots if not Path(r).is_dir()), None)
    if missing:
        raise click.BadParameter(f"{missing}: no such folder (give folders that hold runs)", param_hint="RUNS_DIR")
    require("gradio", "studio", "ganforge studio")
    from ganforge.studio import serve

    try:
        page, url = serve(roots, host, port, resolve_device(device), refresh)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise click.ClickException(f"--host {host} --port {port}: cannot serve there ({e})") from None
    click.echo(f"ganforge studio: {url} (Ctrl-C to stop)")
    try:
        page.block_thread()
    finally:
        page.close()


@main.command()
@click.argument("run_or_snapshot", type=click.Path(exists=True))
@click.option("--image", required=True, help="The real image to find in the generator")
@click.option("--out", default="projection", show_default=True, help="Folder for the results")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimisation steps")
@click.option("--label", default=None, help="Class-conditional run: the image's class, by number or name "
              "[default: every class is tried and the closest kept]")
@click.option("--prompt", default=None, help="Text-to-image run: a caption of the image")
@click.option("--video", type=click.Choice(["mp4", "gif", "none"]), default="mp4", show_default=True,
              help="The optimisation as a video (mp4 needs the [video] extra)")
@SCALE
@SEED
@DEVICE
def project(run_or_snapshot, image, out, steps, label, prompt, video, seed, scale, device):
    """Find the latent whose sample best matches a real image; write both, the latent and a video."""
    import numpy as np
    import torch
    from torchvision.utils import make_grid, save_image

    from ganforge.explore import (PROJECTION_RECORD, as_frame, check_video_writer, project_image, read_image,
                                  write_video)
    from ganforge.hardware import resolve_device
    from ganforge.inference import check_scale, class_name, enlarge, load_model, run_options
    from ganforge.snapshots import find_snapshot

    if video != "none":  # before the optimisation, not after it
        check_video_writer(f"projection.{video}", "--video mp4", "; or --video gif")
    _check_writable(out, "--out", folder=True)
    dev = resolve_device(device)
    model = load_model(run_or_snapshot, dev)
    target = read_image(image, model.config["channels"], model.sample_resolution).to(dev)
    check_scale(2 * 64, model.config["channels"], model.sample_resolution, scale)  # the video's pairs, at most 61
    result = project_image(model, run_or_snapshot, target, label, prompt, steps, seed, partial(click.echo, err=True))
    folder, found, real = Path(out), result.image, result.target
    save_image(enlarge(real, scale) * 0.5 + 0.5, folder / "target.png")  # the figures below stay at the samples' size
    save_image(enlarge(found, scale) * 0.5 + 0.5, folder / "projected.png")
    save_image(enlarge(torch.cat([real, found]), scale) * 0.5 + 0.5, folder / "compare.png", nrow=2, padding=2)
    np.save(folder / "latent.npy", result.latent.numpy())
    # the run beside the figures: `interpolate --latent` says so when it is given this latent with another run
    figures = {"psnr_db": round(result.psnr_db, 2), "ms_ssim": round(result.ms_ssim, 4), "steps": steps,
               "start": result.start, "final_loss": round(result.loss, 5), "image": str(image), "label": result.label,
               "prompt": prompt, "run": str(find_snapshot(run_or_snapshot)),
               "run_id": run_options(run_or_snapshot).get("run_id"), "model": model.name,
               "z_dim": model.z_dim}
    (folder / PROJECTION_RECORD).write_text(json.dumps(figures, indent=2) + "\n")
    written = ["target.png", "projected.png", "compare.png", "latent.npy", PROJECTION_RECORD]
    if video != "none":
        frames = np.stack([as_frame(make_grid(enlarge(torch.stack([real[0], f]), scale) * 0.5 + 0.5, nrow=2, padding=2).mul(255)
                                    .round().to(torch.uint8)) for f in result.frames])
        write_video(frames, folder / f"projection.{video}", fps=15)
        written.append(f"projection.{video}")
    under = f" under class {class_name(run_or_snapshot, result.label)}" if label is not None and model.num_classes else ""
    click.echo(f"projected {image}{under} in {steps} steps from {result.start}: PSNR {figures['psnr_db']} dB, "
               f"MS-SSIM {figures['ms_ssim']}; wrote {', '.join(written)} to {folder}")


@main.command()
@click.argument("source")
@click.argument("dest", type=click.Path())
@option_from("resolution", default=None, required=True, help="Size of the written images (power of two)")
@option_from("channels")
@option_from("center_crop")
@click.option("--lods", is_flag=True, help="Also store every lower level of detail (halving down to 4x4), which "
              "progressive models (PGGAN) read in their early phases")
@click.option("--shards", "shard_size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Write WebDataset tar shards of N images each into the folder DEST")
def dataset(source, dest, resolution, channels, center_crop, lods, shard_size):
    """Convert any --data form (folder, class folders, zip, captioned layout) to a resolution-fixed
    .zip or folder, once: bad files are reported here, and training reads it without resizing."""
    from ganforge.api import dataset as convert

    convert(source, dest, resolution, channels=channels, center_crop=center_crop, lods=lods, shards=shard_size,
            report=click.echo)


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, help="A .mp4 or .gif file [default: RUN/timelapse.mp4]")
@click.option("--fps", type=click.IntRange(1, 120), default=8, show_default=True, help="Grids per second")
def timelapse(run, out, fps):
    """Write a run's sample grids in training order, each labelled with its kimg, as a video."""
    from ganforge.explore import VIDEO_SUFFIXES, check_video_writer, timelapse_frames, write_video

    out = out or str(Path(run) / "timelapse.mp4")
    if Path(out).suffix.lower() not in VIDEO_SUFFIXES:
        raise click.BadParameter(f"{out}: give a .mp4 or .gif file", param_hint="--out")
    check_video_writer(out)
    _check_writable(out, "--out")
    frames, labels = timelapse_frames(run)
    write_video(frames, out, fps)
    click.echo(f"wrote {out}: {len(frames)} grids, {labels[0]} to {labels[-1]}")


@main.command()
@click.argument("folder", default="runs", type=click.Path(file_okay=False))
def runs(folder):
    """List the runs in FOLDER [default: runs]: model, data, kimg reached of planned, training or
    stopped, last metric."""
    from ganforge.training.rundir import run_summary

    found = sorted({p.parent for depth in ("", "*/", "*/*/") for p in Path(folder).glob(f"{depth}training_options.json")})
    if not found:
        raise click.ClickException(f"{folder}: no runs here (a run is a folder with training_options.json)")
    rows = [("run", "model", "data", "kimg", "state", "last metric")]
    for run in found:
        summary = run_summary(run)
        options = summary["options"]
        rows.append((str(run), options.get("model", "?"), str(options.get("data", "?")),
                     f"{summary['kimg']:g} / {summary['planned']:g}" if summary["planned"] else f"{summary['kimg']:g}",
                     summary["state"], _last_metric(summary["metrics"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _last_metric(metrics: dict) -> str:
    """The newest metric row's headline number, with the kimg it was measured at."""
    if not metrics:
        return "-"
    name, row = max(metrics.items(), key=lambda item: item[1].get("kimg", 0))
    declared = registered().get(name)
    key = declared.headline if declared else None
    value = row.get(key) if key else None
    return f"{name} {value:.4g} at {row.get('kimg', 0):g} kimg" if isinstance(value, (int, float)) else name


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
def info(run):
    """What a run is and where it stands: its model, data, options that differ from the defaults,
    progress, processes, snapshots and the last result of each metric."""
    from ganforge.training.rundir import run_summary

    if not (Path(run) / "training_options.json").is_file():
        raise click.BadParameter(f"{run}: not a ganforge run directory (no training_options.json)", param_hint="RUN")
    summary = run_summary(run)
    options = summary["options"]
    defaults = TrainOptions().to_json()
    # run_id: every run's own identity, no option anyone set
    changed = {k: v for k, v in options.items() if k in defaults and v != defaults[k] and k not in ("outdir", "run_id")}
    when = (f", last wrote {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(summary['last_write']))}"
            if summary["last_write"] else "")
    click.echo(f"run:        {run}")
    target, grown = options.get("resolution"), summary["resolution_reached"]
    short_of_target = f" (grown to {grown}x{grown} so far)" if grown and target and grown < target else ""
    click.echo(f"model:      {options.get('model')} on {options.get('data')} at {target}x{target}{short_of_target}")
    click.echo(f"progress:   {summary['kimg']:g} of {summary['planned']:g} kimg, {summary['state']}{when}")
    click.echo(f"processes:  {options.get('processes', 'not recorded (a run made before ganforge recorded it)')}")
    click.echo(f"options:    {json.dumps(changed)}")
    snapshots = sorted(p.name for p in Path(run).glob("*.pt"))
    click.echo(f"snapshots:  {', '.join(snapshots) or 'none yet'}")
    for name, row in summary["metrics"].items():
        click.echo(f"metric:     {name} at {row.get('kimg', 0):g} kimg: {_last_metric({name: row}).split(' at ')[0]}")


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="[default: RUN/stats.png]")
def plot(run, out):
    """Chart a run's losses and measures (stats.jsonl) and its metrics (metric-*.jsonl) against kimg."""
    from ganforge.training.plots import plot_stats

    if out is not None:
        _check_writable(out, "--out")
    path = plot_stats(run, out)
    if path is None:
        raise click.ClickException(f"{run}: not enough rows in stats.jsonl to plot yet")
    click.echo(f"wrote {path}")


@main.command()
@option_from("model", default="pggan", show_default=True, help="GAN to time")
@option_from("resolution", default=64, help="Image size (power of two); progressive models are timed fully grown")
@option_from("batch", default=16, show_default=True, help="Images per step")
@PRECISION
@option_from("channels_last")
@option_from("compile")
@option_from("cuda_graphs")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed steps first (allocation, cuDNN autotuning, compilation)")
@MODEL_OPT
@DEVICE
def bench(model, resolution, batch, precision, channels_last, compile, cuda_graphs, steps, warmup, model_opt, device):
    """Time full training steps (D step with penalties + G step) of a model: img/s, memory, TFLOP/s.

    FLOPs are counted by torch.utils.flop_counter over one whole training step (forward and backward
    passes, penalties included); achieved TFLOP/s = FLOPs per step x steps / seconds.
    """
    from ganforge.training.bench import bench_training_step

    extra = _parse_model_opts(model_opt)
    result = bench_training_step(model, resolution, batch, precision, steps, warmup, device,
                                 channels=3, model_opts=extra, channels_last=channels_last, compile=compile,
                                 count_flops=True, cuda_graphs=cuda_graphs)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
