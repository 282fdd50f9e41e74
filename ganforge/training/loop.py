"""The one training loop every GAN in ganforge runs in.

A model (ganforge.models) supplies networks, optimizers, per-phase losses and a schedule; this
loop supplies the rest: devices, seeding, precision, the real-image stream, the EMA of G, progress
in kimg, logs and grids (RunLog), metrics during training, and atomic snapshots that resume bit for
bit (RunState). `train` reads top to bottom: resolve the options, load the data, build the model,
open the run directory, then step until --kimg.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ganforge.augment import Augmenter
from ganforge.data import ImagesTooSmall, RealStream, data_identity, load_dataset, to_float
from ganforge.errors import GanforgeError, GanforgeWarning, OptionError, TrainingError
from ganforge.hardware import bf16_peak_tflops, make_scalers, prepare_networks, resolve_device, restore_generator
from ganforge.hostsync import StepCensus, census_from_env
from ganforge.models import GanModel, Schedule, build_model, model_class, parameter_count
from ganforge.models.base import TEXT
from ganforge.snapshots import LATEST, SnapshotError, check_shapes, keep_snapshot, load_snapshot, save_snapshot
from ganforge.training.distributed import (Dist, all_true, barrier, broadcast_object, broadcast_parameters,
                                          gather_object, init_from_env, job_id, naming_the_rank, restart_count)
from ganforge.training.estimate import RunTimer, time_snapshot
from ganforge.training.finetune import freeze_d, read_source, source_options, start_from_source
from ganforge.training.options import (TrainOptions, absolute_data, check_batches, check_options, check_resume,
                                       describe_schedule, model_config, period_name, resolve_augment, resolve_options)
from ganforge.training.rundir import (OWN_TEMPORARY, RunLock, check_run_directory, dataset_desc, growth_picture,
                                      job_note, kimg_label, make_run_dir, remove_unless_kept, truncate_logs,
                                      write_options)
from ganforge.training.graphs import GraphedSteps
from ganforge.training.runlog import RunLog, SampleGrid
from ganforge.training.step import StepResult, device_step, ema_beta, step_flops


@dataclass
class RunState:
    """Everything a snapshot restores besides the networks: the counters, the schedule's stage, the
    best metric value, the optimizers and loss scalers, the run's RNGs and the stream's position."""

    optimizers: dict
    scalers: dict
    generator: torch.Generator
    stream: RealStream
    augmenter: Augmenter | None = None  # D's input augmentation, its p and its own random stream
    images_seen: int = 0
    step: int = 0
    stage: str | None = None       # the schedule's stage: optimizers start afresh when it changes
    period: str | None = None      # the schedule's period: its grid is kept when it ends (not saved)
    best_value: float | None = None
    data: dict | None = None       # the data's image count, class names and fingerprint (data_identity)
    retries: int = 0               # non-finite steps recovered from in this process (not saved)
    notes: list = dataclasses.field(default_factory=list)  # lines for log.txt from restoring (not saved)

    def snapshot(self, model: GanModel, opts: TrainOptions) -> dict:
        return dict(model=opts.model, model_config=model.config, options=opts.to_json(), state=model.state_dict(),
                    optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                    scaler={k: s.state_dict() for k, s in self.scalers.items()},
                    rng={"loop": self.generator.get_state(), "torch": torch.get_rng_state(),
                         "device": self.generator.device.type}, stage=self.stage,
                    images_seen=self.images_seen, step=self.step, stream_position=self.stream.position,
                    best_value=self.best_value, data=self.data,
                    **({"augment": self.augmenter.state_dict()} if self.augmenter and self.augmenter.active else {}))

    def restore(self, snap: dict, model: GanModel, opts: TrainOptions) -> None:
        model.load_state_dict(snap["state"])
        self.optimizers = model.optimizers(model.schedule(snap["images_seen"], opts.batch, opts.resolution))
        for name, opt in self.optimizers.items():
            opt.load_state_dict(snap["optimizers"][name])
            for group in opt.param_groups:  # a run with --cuda-graphs saved them capturable; a graph sets it again
                group["capturable"] = False
        saved = snap["scaler"]
        for net, scaler in self.scalers.items():  # snapshots before per-network scalers held one state for both
            scaler.load_state_dict(saved[net] if set(saved) == set(self.scalers) else saved)
        torch.set_rng_state(snap["rng"]["torch"])
        self.stream.position = snap["stream_position"]
        self.stage, self.images_seen, self.step = snap["stage"], snap["images_seen"], snap["step"]
        self.best_value = snap.get("best_value")
        carried = restore_generator(self.generator, snap["rng"]["loop"], opts.seed + 1_000_003 * self.step)
        if self.augmenter is not None and "augment" in snap:
            carried = self.augmenter.load_state_dict(snap["augment"]) and carried
        if not carried:
            self.notes.append(f"random streams start afresh at step {self.step}: the snapshot's were drawn on "
                              f"{snap['rng'].get('device', 'another kind of device')}, this run is on "
                              f"{self.generator.device.type}")


@dataclass
class Run:
    """One training run as the loop and its helpers see it, passed whole: what it trains and with
    what, where it writes, and where it stands."""

    opts: TrainOptions
    model: GanModel
    state: RunState
    directory: Path
    dist: Dist            # the run's processes, and which of them this one is
    device: torch.device
    log: RunLog
    stop: StopFlag


def recover(run: Run, reason: str) -> str:
    """Back to the last good snapshot after a non-finite step, with fresh noise and the data moved on
    (a few times, then TrainingError); returns the line for log.txt."""
    state, model, opts, run_dir = run.state, run.model, run.opts, run.directory
    state.retries += 1
    where = f"{state.images_seen / 1000:.1f} kimg (step {state.step})"
    if state.retries > opts.nonfinite_retries or not (run_dir / LATEST).exists():
        kept = f"the last good snapshot in {run_dir} is kept" if (run_dir / LATEST).exists() else "no snapshot yet"
        raise TrainingError(f"{reason} at {where}: training diverged; {kept} "
                            f"(try a lower learning rate or --precision fp32)")
    state.restore(load_snapshot(run_dir / LATEST), model, opts)
    state.generator.manual_seed(opts.seed + 1_000_003 * state.retries + state.step)
    state.stream.position += state.retries * (opts.batch or 1)
    return (f"warning: {reason} at {where}; restored {LATEST} ({state.images_seen / 1000:.1f} kimg) and continue "
            f"with fresh noise (retry {state.retries} of {opts.nonfinite_retries})")


@naming_the_rank
def train(opts: TrainOptions, resume: str | None = None, explicit: set[str] | None = None,
          progress: bool = True, evaluator_factory: Callable | None = None, inception_weights: str | None = None,
          watch_step: Callable[[], contextlib.AbstractContextManager] | None = None) -> Path:
    """Train (or continue) a run; returns its directory.

    `explicit`: the options the user set (only these may override a resumed run's).
    `evaluator_factory`: (dataset, run_dir, device, share) -> (model -> {metric: results}) for the run's
    --metrics; by default ganforge.metrics.evaluate.training_evaluator's, with `inception_weights`.
    `watch_step`: a context entered around each step's loop body: by default none, or the
    ganforge.hostsync.StepCensus that GANFORGE_HOST_SYNCS asks for (a count of the steps' host
    syncs in log.txt, or a refusal of any).
    """
    started = time.perf_counter()  # the estimate logged at the first tick counts the start-up too
    resume, restarted = elastic_resume(opts, resume)
    snapshot = read_snapshot(resume)
    source = read_source(opts, resume, explicit or set())  # --init-from: another run's networks
    opts, channels_source = run_options(opts, snapshot, explicit or set(), resume)
    opts = source_options(opts, source)
    if opts.metrics and evaluator_factory is None:  # before the run directory: a missing extra stops here
        from ganforge.metrics.evaluate import training_evaluator

        evaluator_factory = training_evaluator(opts.metrics, opts.metrics_n, inception_weights)
    ddp, device_name = init_from_env(opts.device)
    check_same_options(opts, ddp, lambda obj: gather_object(obj, ddp.world_size))
    device, world = resolve_device(device_name), ddp.world_size
    if snapshot is None:  # the run's identity, in its options and every snapshot: a snapshot resumes only in its run
        opts = dataclasses.replace(opts, run_id=broadcast_object(uuid.uuid4().hex[:16] if ddp.main else None, world))
    watch_step = watch_step or census_from_env(device) or contextlib.nullcontext
    torch.manual_seed(opts.seed)
    dataset = training_data(opts, listed_once=lambda make: made_once(make, ddp))
    identity = data_identity(dataset)
    if snapshot is not None:
        check_same_data(snapshot, identity, opts)
    opts = resolve_augment(opts, len(dataset))
    model, notes = training_model(opts, dataset, snapshot, device, world)
    copied, made_new = start_from_source(model, source)
    notes = [*notes, *copied, *freeze_d(model, opts.freeze_d, opts.init_from, made_new)]
    check_batches(model, opts, world)
    try:  # torch's optimizers check their settings: a negative lr from --model-opt, say
        optimizers = model.optimizers(model.schedule(0, opts.batch, opts.resolution))
    except ValueError as e:
        raise OptionError(f"--model-opt: the optimizer refuses its settings ({e})") from e
    state = RunState(optimizers=optimizers,
                     scalers=make_scalers(opts.precision, device), generator=torch.Generator(device).manual_seed(opts.seed),
                     stream=RealStream(dataset, seed=opts.seed, xflip=opts.xflip, device=device, workers=opts.workers,
                                       rank=ddp.rank, world_size=world),
                     augmenter=Augmenter(opts.augment, device, opts.seed, opts.augment_p, opts.ada_target, opts.ada_kimg,
                                         tuple(opts.augment_ops)), data=identity)
    broadcast_parameters(model, world)
    run_dir, lock = None, None
    with StopFlag() as stop:
        # Until its first step a new run holds nothing to keep: a stop (SIGTERM, Ctrl-C) abandons it at
        # once; from the first step on a stop finishes the step and writes latest.pt.
        stop.raise_now = snapshot is None
        try:
            run_dir, lock = open_run_directory(opts, snapshot, dataset, model, state, ddp, device)
            check_shared_directory(run_dir, ddp)
            log = RunLog(run_dir, ddp.main, progress, round(opts.kimg * 1000), state.images_seen)
            run = Run(opts, model, state, run_dir, ddp, device, log, stop)
            with contextlib.closing(log):
                log_start(run, dataset, snapshot is not None,
                          [f"images: {'grey, 1 channel' if dataset.channels == 1 else 'colour, 3 channels'} "
                           f"({channels_source})", *notes, state.augmenter.describe(),
                           *([lock.took_over] if lock and lock.took_over else []), *state.notes,
                           *restart_notes(restarted, snapshot)])
                run_steps(run, dataset, snapshot is not None, evaluator_factory, watch_step, started)
            if ddp.main and state.images_seen >= round(opts.kimg * 1000):
                forget_job_run(opts)  # finished: a later restart of this job has nothing to continue
            if snapshot is None and state.step == 0:  # stopped between the start and the first step
                raise StopRequested
        except BaseException as e:
            if snapshot is None and run_dir is not None and ddp.main:  # a new run with no snapshot: nothing to resume
                if lock is not None:
                    lock.release()
                if remove_unless_kept(run_dir):
                    forget_job_run(opts)
            if isinstance(e, StopRequested):
                raise TrainingError("stopped before the first step: nothing was trained, and the new run "
                                    "directory is removed") from None
            if isinstance(e, OSError) and run_dir is not None and not run_dir.is_dir():
                raise TrainingError(f"{run_dir} was removed while the run was writing in it: nothing of the run "
                                    "is kept; start it again") from e
            if isinstance(e, OSError) and run_dir is not None:  # the disk filled (or went read-only) during a write
                raise TrainingError(f"could not write in {run_dir}: {e.strerror or e}"
                                    + (f" ({e.filename})" if e.filename else "") + f"; {kept_snapshot(run_dir)}") from e
            raise
        finally:
            if lock is not None:
                lock.release()
    return run_dir


def log_start(run: Run, dataset, resumed: bool, notes: list[str]) -> None:
    """log.txt's opening lines: what trains on what, where and how, then the notes of the set-up."""
    opts, model, world = run.opts, run.model, run.dist.world_size
    run.log.line(f"{'resuming' if resumed else 'starting'} {run.directory} at {run.state.images_seen / 1000:.1f} kimg "
                 f"on {run.device}: {opts.model} {opts.resolution}x{opts.resolution}, {len(dataset)} images{split_in_words(dataset)}, "
                 f"{classes_in_words(opts, dataset)}, G {parameter_count(model.G):,} / D {parameter_count(model.D):,} "
                 f"parameters, {world} process{'es' if world > 1 else ''}")
    for note in notes + describe_schedule(model, opts) + dataset_notes(opts, dataset):
        run.log.line(note)


def run_steps(run: Run, dataset, resumed: bool, evaluator_factory: Callable | None, watch_step: Callable,
              started: float) -> None:
    """The training loop proper: step, then tick, grids, metrics and snapshots when their kimg come.
    The first tick of each period logs the whole run's estimate from the speed measured so far."""
    opts, model, state, log, stop, device = run.opts, run.model, run.state, run.log, run.stop, run.device
    world, total = run.dist.world_size, round(opts.kimg * 1000)
    grid = SampleGrid(model, opts.seed, device)
    grid_reals, _ = RealStream(dataset, seed=opts.seed + 1, device=device).next_batch(len(grid.z))
    timer = RunTimer.for_run(started, model, opts, state.images_seen)
    with timer.work("set-up" if resumed else "grid"):
        log.start_grids(model, grid, to_float(grid_reals), first=not resumed, fine=opts.sample_every < 1)
    evaluate = evaluator_factory(dataset, run.directory, device, metric_share(run.dist)) if opts.metrics else None
    graphs = GraphedSteps(capture=device.type == "cuda") if opts.cuda_graphs else None
    speed = TickSpeed(model, device, state.generator, world)
    unchecked = UncheckedLosses()
    if graphs is not None and not graphs.capture:
        log.line(f"--cuda-graphs: {device} has no CUDA graphs; the steps run as they would be captured, eagerly")

    stop.raise_now = False  # from the first step on, a stop writes a snapshot
    log.begin_steps(state.images_seen, max(1, round(opts.tick * 1000)))  # as crossed() counts ticks
    while state.images_seen < total and not stop.requested:
        sched: Schedule = model.schedule(state.images_seen, opts.batch, opts.resolution)
        enter_schedule(run, sched)
        before = state.images_seen
        with watch_step():
            result = loop_step(model, state, sched, opts, run.dist, device, run.directory, graphs)
            log.add_step(result.stats, before, state.images_seen)
            unchecked.add(result)
        timer.stepped(period_name(sched), sched.batch)
        # A stop (Ctrl-C, SIGTERM) writes the snapshot alone: the ticks, grids and plots due at the end
        # of a run cost seconds on a busy CPU, and the user is waiting for the prompt.
        done = state.images_seen >= total
        due = {name: crossed(before, state.images_seen, every) or done for name, every in
               (("tick", opts.tick), ("grids", opts.sample_every), ("snap", opts.snap))}
        due["metrics"] = evaluate is not None and (crossed(before, state.images_seen, opts.metrics_every)
                                                   or state.images_seen >= total)
        # The steps' finiteness is read here, once, when something is about to be written: a NaN
        # since the last check rolls back to latest.pt before it reaches a row, a grid or a snapshot.
        if (any(due.values()) or stop.requested) and not all_true(unchecked.finite(), world, device):
            log.line(recover(run, "non-finite loss"))
            log.move_to(state.images_seen)
            continue
        if due["tick"]:
            with timer.work("tick"):
                log.tick(model, sched, state.images_seen, state.step, speed(sched))
            estimate = timer.estimate_line(state.images_seen, lambda: time_snapshot(state, model, opts)) \
                if run.dist.main else None
            if estimate:
                log.line(estimate)
        if due["grids"]:
            with timer.work("grid"):
                log.grids(model, state.images_seen, fine=opts.sample_every < 1)
        if due["metrics"]:
            with timer.work("metrics"):
                evaluate_and_keep_best(run, evaluate, sched)
        if due["snap"] or stop.requested:
            # asked anew: a stop may have come while the grids were written or the metrics ran
            if not all_true(weights_finite(model), world, device):
                log.line(recover(run, "non-finite weights"))  # never overwrite a good snapshot with a poisoned one
                log.move_to(state.images_seen)
                continue
            on_interval = crossed(before, state.images_seen, opts.snap)
            keep = on_interval or state.images_seen >= total
            # the final snapshot between two intervals gets the finer name: in the whole kimg of
            # the last kept one (--kimg 1.5 --snap 1) it would replace that one
            with timer.work("snapshot", count=1 + keep):
                write_snapshots(run, keep=keep, fine=opts.snap < 1 or not on_interval)
    if state.images_seen >= total and state.period:
        log.period_grid(model, state.period)
        if run.dist.main:
            growth_picture(run.directory)
    if graphs is not None and graphs.capture:
        log.line(f"--cuda-graphs: {graphs.captures} graph(s) captured")
    if isinstance(watch_step, StepCensus):
        for line in watch_step.summary():
            log.line(line)
    if stop.requested and state.images_seen < total and run.dist.main:  # one during the last step: the run is done
        log.say(f"stopped at {state.images_seen / 1000:.1f} kimg; continue with: "
                f"ganforge train --resume {run.directory}")


# --- setting a run up ----------------------------------------------------------------------------
def read_snapshot(resume: str | None) -> dict | None:
    if resume is None:
        return None
    try:
        return load_snapshot(resume)
    except SnapshotError as e:
        raise TrainingError(str(e)) from e


def run_options(opts: TrainOptions, snapshot: dict | None, explicit: set[str], resume: str | None) -> tuple:
    """The options this run trains with (a resumed run's own, with what may change), checked; and
    where its channel count comes from, for log.txt."""
    channels_source = "--channels" if opts.channels is not None else "detected from the data"
    opts = absolute_data(opts)
    if snapshot is not None:
        opts = check_resume(opts, snapshot["options"], explicit, resume)
        channels_source = "as the run was trained"
        if opts.channels is None:  # runs made before channels were resolved: keep what the networks have
            opts = dataclasses.replace(opts, channels=snapshot["model_config"]["channels"])
    opts = resolve_options(opts)
    check_options(opts)
    return opts, channels_source


def elastic_resume(opts: TrainOptions, resume: str | None) -> tuple[str | None, int]:
    """Under torchrun, workers its agent restarted (--max-restarts: a worker died) continue the run
    their job opened, from its latest.pt, as if given --resume: rank 0 noted that run in --outdir
    (job_note), and tells the others. A node's agent counts only its own restarts, so any rank's
    count > 0 means a restart. Returns (what to resume, the restart count); with no restart, or
    no snapshot yet in the job's run (nothing of it to keep), the `resume` given."""
    job = job_id()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or job is None:
        return resume, 0
    ddp, _ = init_from_env(opts.device)
    restarts = max(gather_object(restart_count(), ddp.world_size))
    if restarts == 0:
        return resume, 0
    found = None
    if ddp.main:
        note = job_note(opts.outdir, job)
        run_dir = Path(note.read_text(encoding="utf-8").strip()) if note.is_file() else None
        found = str(run_dir) if run_dir is not None and (run_dir / LATEST).is_file() else None
    found = broadcast_object(found, ddp.world_size)
    return (found or resume), restarts


def check_same_options(opts: TrainOptions, ddp: Dist, gather: Callable) -> None:
    """Every node was started with rank 0's options (torchrun runs each node's own command line): a
    node with another --batch or --seed would train something else in lockstep, silently."""
    if not ddp.active:
        return
    every = gather(opts.to_json())
    for rank, theirs in enumerate(every):
        differ = sorted(k for k in every[0] if theirs.get(k) != every[0][k])
        if differ:
            key = differ[0]
            raise TrainingError(f"rank {rank} was started with --{key.replace('_', '-')} {theirs.get(key)!r}, rank 0 "
                                f"with {every[0][key]!r} ({len(differ)} option(s) differ: {', '.join(differ)}); start "
                                "every node with the same ganforge options")


def check_shared_directory(run_dir: Path, ddp: Dist) -> None:
    """Every rank sees the run directory rank 0 opened: --outdir must be one file system shared by the
    nodes (the restarted workers of a node read the run back from it)."""
    if not ddp.active:
        return
    seen = (run_dir / "training_options.json").is_file()
    for _ in range(20):  # a network file system may show another node's new file a moment late
        if seen:
            break
        time.sleep(0.25)
        seen = (run_dir / "training_options.json").is_file()
    blind = [rank for rank, ok in enumerate(gather_object(seen, ddp.world_size)) if not ok]
    if blind:
        raise TrainingError(f"rank(s) {', '.join(map(str, blind))} do not see the run directory {run_dir} that rank 0 "
                            "made: --outdir must be on a file system every node shares, at the same path")


def record_job_run(opts: TrainOptions, run_dir: Path) -> None:
    job = job_id()
    if job is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        tmp = job_note(opts.outdir, job).with_suffix(".tmp")
        tmp.write_text(f"{run_dir.resolve()}\n", encoding="utf-8")
        os.replace(tmp, job_note(opts.outdir, job))


def forget_job_run(opts: TrainOptions) -> None:
    job = job_id()
    if job is not None:
        job_note(opts.outdir, job).unlink(missing_ok=True)


def restart_notes(restarts: int, snapshot: dict | None) -> list[str]:
    """log.txt's line for workers torchrun restarted: the restart, and where the run went back to."""
    if restarts == 0:
        return []
    if snapshot is None:
        return [f"torchrun restarted the workers (restart {restarts} of job {job_id()}): the job's run had no "
                "snapshot yet, so a new run starts"]
    return [f"torchrun restarted the workers (restart {restarts} of job {job_id()}): continuing from "
            f"{snapshot['path']} at {snapshot['images_seen'] / 1000:g} kimg"]


def made_once(make, ddp: Dist):
    """make() on rank 0, its result shared with every rank; an error there stops every rank with it."""
    if ddp.world_size <= 1:
        return make()
    try:
        outcome = ("made", make()) if ddp.main else None
    except GanforgeError as e:
        outcome = ("failed", e)
    kind, value = broadcast_object(outcome, ddp.world_size)
    if kind == "failed":
        raise value
    return value


def training_data(opts: TrainOptions, listed_once=None, preload: bool | None = None):
    """The run's data, refused here (before any network is built) when the model cannot learn from it;
    `preload=False`: listed and, where the model refuses small images, its headers read, not decoded."""
    full_size = model_class(opts.model).needs_full_size_images
    try:
        with warnings.catch_warnings():  # skipped files: the run's log (and console) says so, once
            warnings.simplefilter("ignore", GanforgeWarning)
            dataset = load_dataset(opts.data, opts.resolution, opts.channels, opts.center_crop, opts.split,
                                   preload=preload, min_side=opts.resolution if full_size else None,
                                   listed_once=listed_once)
    except ImagesTooSmall as e:
        raise TrainingError(f"{e}; {opts.model} would learn upscaling blur. Use a lower --resolution or larger "
                            "images") from e
    if model_class(opts.model).trains_on_labels(opts.model_opts) and dataset.num_classes < 2:
        raise TrainingError(f"--model {opts.model} needs labelled data, but --data {opts.data} has no labels "
                            f"(use class sub-folders or split.csv, or --model dcgan)")
    if model_class(opts.model).conditioning == TEXT and dataset.captions is None:  # as the model's prepare says it
        raise TrainingError(f"--model {opts.model} needs captions: --data {dataset.name} has no text/ folder "
                            "(use the captioned layout, or --data mnist-captions)")
    if dataset.smallest_side is not None and dataset.smallest_side < opts.resolution and full_size:
        raise TrainingError(f"{smaller_images(opts, dataset)}; {opts.model} would learn upscaling blur. Use a lower "
                            "--resolution or larger images")
    return dataset


def check_same_data(snapshot: dict, identity: dict, opts: TrainOptions) -> None:
    """A resumed run continues on the data it was trained on: say what differs and stop (a renamed
    class folder would shift every label; another folder would train on silently)."""
    saved = snapshot.get("data")
    if saved is None:  # snapshots from before runs recorded their data
        return
    where = f"--resume {snapshot['path']}: --data {opts.data} is not the data the run was trained on"
    fix = "; give the run its own data again (or start a new run)"
    if saved["images"] != identity["images"]:
        raise TrainingError(f"{where}: {saved['images']} images then, {identity['images']} now{fix}")
    if saved["classes"] != identity["classes"]:
        then = [c for c in saved["classes"] if c not in identity["classes"]]
        now = [c for c in identity["classes"] if c not in saved["classes"]]
        differ = (f"class(es) {', '.join(then[:5]) or '-'} then, {', '.join(now[:5]) or '-'} now" if then or now
                  else "the same class names in another order")
        raise TrainingError(f"{where}: {len(saved['classes'])} classes then, {len(identity['classes'])} now; "
                            f"{differ}{fix}")
    if saved["fingerprint"] != identity["fingerprint"]:
        raise TrainingError(f"{where}: its files changed (names, sizes or labels: fingerprint {saved['fingerprint']} "
                            f"then, {identity['fingerprint']} now){fix}")


def smaller_images(opts: TrainOptions, dataset) -> str:
    # Only the smallest side is known, not how many images are below the resolution: "some" was false
    # where every image is (the built-in digits are all 28 px).
    return (f"--resolution {opts.resolution}: --data {opts.data} has images smaller than that "
            f"(the smallest side {dataset.smallest_side} px)")


def split_in_words(dataset) -> str:
    """Which rows of data with splits (split.csv) the run trains on: " of the train split"; nothing for other data."""
    split = getattr(dataset, "split", None)
    return "" if split is None else " of every split" if split == "all" else f" of the {split} split"


def classes_in_words(opts: TrainOptions, dataset) -> str:
    """The data's labels as the run uses them: none, its classes, or classes the model does not use."""
    if not dataset.num_classes:
        return "unlabelled"
    used = model_class(opts.model).trains_on_labels(opts.model_opts)
    return f"{dataset.num_classes} class{'es' if dataset.num_classes != 1 else ''}" + ("" if used else f" (unused: {opts.model} here is unconditional)")


def dataset_notes(opts: TrainOptions, dataset) -> list[str]:
    notes = []
    if dataset.smallest_side is not None and dataset.smallest_side < opts.resolution:
        notes.append(smaller_images(opts, dataset) + "; those are upscaled")
    if dataset.bad_files:
        notes.append(f"warning: skipped {len(dataset.bad_files)} unreadable image(s), e.g. {dataset.bad_files[0]}")
    return notes


def training_model(opts: TrainOptions, dataset, snapshot: dict | None, device: torch.device, world: int = 1) -> tuple:
    """The model, on its device and set up for speed; a resumed run's networks, if this data and these
    options still describe them. Returns (model, notes for log.txt)."""
    labelled = model_class(opts.model).trains_on_labels(opts.model_opts)
    config = model_config(opts, dataset.channels, dataset.num_classes if labelled else 0)
    if snapshot is not None:
        saved = snapshot["model_config"]
        differ = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if snapshot["model"] != opts.model or differ:
            raise TrainingError(f"--resume {snapshot['path']}: snapshot holds {snapshot['model']} with "
                                f"{ {k: a for k, (a, b) in differ.items()} }, these options and data give "
                                f"{opts.model} with { {k: b for k, (a, b) in differ.items()} }")
        config = saved
    model = build_model(opts.model, config).to(device)
    if snapshot is not None:  # an edited or damaged tensor: one line naming it, before the run directory is touched
        check_shapes(snapshot["state"], model.state_dict(), snapshot["path"])
    if opts.sync_bn and world > 1:
        if device.type != "cuda":
            raise TrainingError("--sync-bn: needs CUDA GPUs (PyTorch's SyncBatchNorm runs on NCCL only)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # every BatchNorm of every network
    return prepare_networks(model, opts.precision, opts.channels_last, opts.compile)


def open_run_directory(opts: TrainOptions, snapshot: dict | None, dataset, model: GanModel, state: RunState, ddp: Dist,
                       device: torch.device) -> tuple[Path, RunLock | None]:
    """A resumed run's directory, checked, locked, restored and cut back to the snapshot; or a new
    numbered one, made once the model has accepted the data. Rank 0 writes it; the other ranks
    compute the same steps and write nothing."""
    if snapshot is None:
        prepare(model, dataset, device, resumed=False)  # before the run directory: it may refuse the data
        run_dir = make_run_dir(opts.outdir, f"{opts.model}-{dataset_desc(opts.data)}") if ddp.main else None
        try:
            lock = RunLock(run_dir) if ddp.main else None
            if ddp.main:
                write_options(run_dir, opts, ddp.world_size)
                record_job_run(opts, run_dir)
        except BaseException as e:  # an empty new directory would only take the next run number
            shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(e, OSError):
                raise TrainingError(f"--outdir {opts.outdir}: cannot write in the new run directory "
                                    f"({e.strerror or e})") from e
            raise
        return Path(broadcast_object(str(run_dir) if ddp.main else None, ddp.world_size)), lock
    run_dir = Path(snapshot["path"]).parent
    check_run_directory(run_dir, snapshot)
    if snapshot["images_seen"] >= round(opts.kimg * 1000):
        raise TrainingError(f"--resume {run_dir}: the run already reached {snapshot['images_seen'] / 1000:g} kimg "
                            f"(--kimg {opts.kimg:g}); give a larger --kimg to continue it")
    lock = RunLock(run_dir) if ddp.main else None  # before anything in the directory is rewritten
    state.restore(snapshot, model, opts)
    if ddp.main:  # rank 0 alone: two ranks rewriting one file through one temporary name collide
        for stale in run_dir.glob(".*.tmp"):  # a snapshot or options write cut short by a kill (ours only)
            if OWN_TEMPORARY.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        truncate_logs(run_dir, state.step)  # rows written after this snapshot will be written again
        write_options(run_dir, opts, ddp.world_size)  # the options this continuation runs with (a longer --kimg)
        record_job_run(opts, run_dir)
    prepare(model, dataset, device, resumed=True)
    return run_dir, lock


def prepare(model: GanModel, dataset, device: torch.device, resumed: bool) -> None:
    try:
        model.prepare(dataset, device, resumed)
    except ValueError as e:
        raise TrainingError(str(e)) from e


# --- during a run --------------------------------------------------------------------------------
def loop_step(model: GanModel, state: RunState, sched: Schedule, opts: TrainOptions, ddp: Dist, device: torch.device,
              run_dir: Path | None = None, graphs: GraphedSteps | None = None) -> StepResult:
    """The body of the training loop, the same in a run and in bench: the next real batch, one
    training step with G's EMA and the augmentation's p (replayed from a CUDA graph where `graphs`
    can), the counters. Returns the step's result (device tensors). Nothing here waits for the
    device: what the host needs of it (are the losses finite? what are they?) is read at the next tick."""
    real_u8, labels = state.stream.next_batch(sched.batch, sched.resolution)
    beta = ema_beta(opts, sched.batch, state.images_seen + sched.batch, model.ema_beta)
    replayed = graphs is not None and graphs.replayable(model, state, sched, opts, ddp.world_size)
    try:
        result = (graphs.step if replayed else device_step)(model, state, sched, opts, ddp, device, real_u8, labels,
                                                             state.stream.last_indices, beta)
    except torch.OutOfMemoryError as e:
        where = out_of_memory(opts, sched, run_dir, "training step") if run_dir else "out of memory in a training step"
        raise TrainingError(where) from e
    state.images_seen, state.step = state.images_seen + sched.batch, state.step + 1
    return result


class UncheckedLosses:
    """Whether every phase's loss was finite in the steps since the host last asked: folded into one
    device bool step by step (no wait), read when the loop is about to write something."""

    def __init__(self):
        self.all_finite: torch.Tensor | None = None

    def add(self, result: StepResult) -> None:
        finite = result.finite()
        self.all_finite = finite if self.all_finite is None else self.all_finite & finite

    def finite(self) -> bool:
        """The one host read of the steps' losses; the steps after it are counted afresh."""
        all_finite, self.all_finite = self.all_finite, None
        return all_finite is None or bool(all_finite)


class TickSpeed:
    """A tick's (training FLOPs per image, bf16 peak) on a GPU whose peak is known: the FLOPs are
    counted once per resolution and batch (one G and one D forward under the FLOP counter)."""

    def __init__(self, model: GanModel, device: torch.device, generator: torch.Generator, world: int):
        self.model, self.device, self.generator = model, device, generator
        peak = bf16_peak_tflops(device)
        self.peak = peak * world if peak else None  # img/s are the run's, over all its GPUs
        self.per_image: dict[tuple[int, int], float] = {}

    def __call__(self, sched: Schedule) -> tuple[float, float] | None:
        if self.peak is None:
            return None
        key = (sched.resolution, sched.batch)
        if key not in self.per_image:
            n = sched.batch
            reals = torch.zeros(n, 1, sched.resolution, sched.resolution, device=self.device)
            labels = torch.zeros(n, dtype=torch.long, device=self.device)
            # Counting runs G and D once: in eval mode (no BatchNorm statistics move) and with the
            # run's noise stream put back, so the run trains as it would have.
            state, modes = self.generator.get_state(), {net: net.training for net in (self.model.G, self.model.D)}
            for net in modes:
                net.eval()
            self.per_image[key] = step_flops(self.model, reals, labels, self.generator, n) / n
            self.generator.set_state(state)
            for net, training in modes.items():
                net.train(training)
        return self.per_image[key], self.peak


def weights_finite(model: GanModel) -> bool:
    """Whether every weight is finite, read from the device once."""
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


def crossed(before: int, after: int, every_kimg: float) -> bool:
    """True when images_seen passed a multiple of every_kimg between two steps."""
    every = max(1, round(every_kimg * 1000))
    return before // every != after // every


def enter_schedule(run: Run, sched: Schedule) -> None:
    """A new stage starts its optimizers afresh (PGGAN's new resolution); the grid of a finished
    period is kept (PGGAN's growth)."""
    model, state = run.model, run.state
    if sched.stage != state.stage:
        if state.stage is not None:
            state.optimizers = model.optimizers(sched)
        state.stage = sched.stage
    if sched.period != state.period:
        if state.period:
            run.log.period_grid(model, state.period)
        state.period = sched.period


def write_snapshots(run: Run, keep: bool, fine: bool) -> None:
    """latest.pt, and with `keep` snapshot-<kimg>.pt too (`fine`: kimg_label's finer name); every rank
    waits until they are complete (other ranks may read one back to recover)."""
    state, run_dir = run.state, run.directory
    if run.dist.main:
        write_snapshot(run_dir / LATEST, state.snapshot(run.model, run.opts), run_dir)
        if keep:  # the same state: a second name of latest.pt's file, not a second copy on disk
            kept = run_dir / f"snapshot-{kimg_label(state.images_seen, fine)}.pt"
            try:
                keep_snapshot(run_dir / LATEST, kept)
            except OSError as e:
                raise TrainingError(f"could not write snapshot {kept}: {e.strerror or e}; {LATEST} is intact, "
                                    f"resume with: ganforge train --resume {run_dir}") from e
    barrier(run.dist.world_size)


def write_snapshot(path: Path, snap: dict, run_dir: Path) -> None:
    """Every snapshot (latest, kept, best) through one safe path with one clear message on failure."""
    try:
        save_snapshot(path, snap)
    except OSError as e:
        kept = (f"{run_dir / LATEST} is intact, resume with: ganforge train --resume {run_dir}"
                if (run_dir / LATEST).exists() else "the run has no snapshot yet, so nothing of it can be resumed")
        raise TrainingError(f"could not write snapshot {path}: {e.strerror or e}; {kept}") from e


def metric_share(ddp: Dist):
    """Each rank's part in evaluating --metrics: all ranks make and measure samples together."""
    from ganforge.metrics.evaluate import Share

    return Share(ddp.rank, ddp.world_size, lambda obj: gather_object(obj, ddp.world_size),
                 lambda obj: broadcast_object(obj, ddp.world_size))


def evaluate_and_keep_best(run: Run, evaluate, sched: Schedule) -> None:
    """The run's --metrics now, logged by rank 0; best.pt when the best metric improved. A stop
    asked for meanwhile abandons the evaluation (it can take minutes) for the snapshot, when one
    process runs alone (ranks evaluate together: they all finish it, then stop)."""
    from ganforge.metrics.evaluate import headline, improves

    model, state, opts, run_dir, log, stop = run.model, run.state, run.opts, run.directory, run.log, run.stop
    stop.raise_now = not run.dist.active
    try:
        results = evaluate(model)
    except StopRequested:
        log.line(f"metrics at {state.images_seen / 1000:.1f} kimg abandoned: stop requested")
        return
    except torch.OutOfMemoryError as e:
        raise TrainingError(out_of_memory(opts, sched, run_dir, f"--metrics {','.join(opts.metrics)} with "
                                          f"--metrics-n {opts.metrics_n}")) from e
    finally:
        stop.raise_now = False
    log.metrics(results, state.images_seen, state.step)
    best_name = opts.best_metric or opts.metrics[0]
    if best_name in results:
        value = headline(best_name, results[best_name])
        if improves(best_name, value, state.best_value):
            state.best_value = value
            if run.dist.main:
                write_snapshot(run_dir / "best.pt", state.snapshot(model, opts), run_dir)
            log.line(f"best.pt: {best_name} {value:.4g} at {state.images_seen / 1000:.1f} kimg")


def kept_snapshot(run_dir: Path) -> str:
    """What a run stopped by a failure keeps, and how to go on."""
    latest = run_dir / LATEST
    if latest.exists():
        return f"the last snapshot {latest} is intact; make room, then resume with: ganforge train --resume {run_dir}"
    return "the new run was removed" if not run_dir.exists() else "no snapshot was written yet"


def out_of_memory(opts: TrainOptions, sched: Schedule, run_dir: Path, where: str) -> str:
    """What to lower when the GPU runs out of memory (PGGAN at 512 and 1024 is where runs meet it)."""
    latest = run_dir / LATEST
    kept = f"the last snapshot {latest} is intact" if latest.exists() else "no snapshot was written yet"
    return (f"out of GPU memory in the {where}: {opts.model} at {sched.resolution}x{sched.resolution}, batch "
            f"{sched.batch}, --precision {opts.precision}. Lower --batch (or --metrics-n), use --precision bf16 "
            f"and --channels-last, or spread the batch over more GPUs with --gpus N; {kept}")


class StopRequested(Exception):
    """Raised inside an abandonable step when a stop is asked for."""


class StopFlag:
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
