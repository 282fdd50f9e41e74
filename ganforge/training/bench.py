"""Timing the training loop's body (next batch, every phase of the step with its penalties, G's
EMA, the statistics): of a fully grown model on random images (`ganforge bench`), and of each
period of a run's own schedule on its own data before it starts (`ganforge train --plan`)."""

from __future__ import annotations

import time

import torch

from ganforge.augment import Augmenter
from ganforge.data import ImageDataset, RealStream, to_float
from ganforge.hardware import (bf16_peak_tflops, make_scalers, peak_memory, prepare_networks, reset_peak_memory,
                               resolve_device)
from ganforge.hostsync import StepCensus
from ganforge.models import Schedule, build_model, model_class
from ganforge.progress import bar_over
from ganforge.training.distributed import Dist
from ganforge.training.graphs import WARMUP_STEPS, GraphedSteps
from ganforge.training.estimate import TimedPeriod, plan_lines, time_periodic_work
from ganforge.training.loop import RunState, loop_step, prepare, run_options, training_data, training_model
from ganforge.training.options import TrainOptions, check_batches, describe_schedule, resolve_augment, run_periods
from ganforge.training.runlog import SampleGrid
from ganforge.training.step import step_flops

CENSUS_STEPS = 2  # steps after the timed ones whose host syncs are counted and timed


def bench_training_step(model_name: str, resolution: int, batch: int, precision: str = "fp32", steps: int = 10,
                        warmup: int = 3, device: str = "auto", channels: int = 3, num_classes: int | None = None,
                        model_opts: dict | None = None, channels_last: bool = False, compile: bool = False,
                        count_flops: bool = False, augment: str = "none", cuda_graphs: bool = False) -> dict:
    """img/s of `steps` turns of the training loop's body after `warmup`, with peak GPU memory, and the
    host syncs per step with the share of a step the host spends waiting in them (counted on
    CENSUS_STEPS more). Random reals (speed only), held on the device as a run holds a dataset that
    fits in memory. A model that trains on labels is timed with 10 classes unless `num_classes` says
    otherwise. `cuda_graphs`: steps replayed from a CUDA graph (the warm-up then includes its capture)."""
    dev = resolve_device(device)
    if num_classes is None:
        num_classes = 10 if model_class(model_name).trains_on_labels(model_opts or {}) else 0
    model = build_model(model_name, dict(resolution=resolution, channels=channels, num_classes=num_classes,
                                         **(model_opts or {}))).to(dev)
    model, notes = prepare_networks(model, precision, channels_last, compile)
    opts = TrainOptions(model=model_name, resolution=resolution, batch=batch, precision=precision, device=str(dev),
                        channels_last=channels_last, compile=compile, augment=augment, cuda_graphs=cuda_graphs)
    sched = Schedule(resolution=resolution, batch=batch, alpha=1.0, stage=str(resolution))
    gen = torch.Generator(dev).manual_seed(0)
    state = RunState(optimizers=model.optimizers(sched), scalers=make_scalers(precision, dev), generator=gen,
                     stream=RealStream(random_images(batch, channels, resolution, num_classes), seed=0, device=dev),
                     augmenter=Augmenter(augment, dev, 0))
    model.prepare_synthetic(batch, dev, gen)  # random stand-ins for what the model's data would give (captions)
    single = Dist()
    graphs = GraphedSteps(capture=dev.type == "cuda") if cuda_graphs else None
    if graphs is not None:
        warmup = max(warmup, WARMUP_STEPS + 1)

    def turn() -> None:
        loop_step(model, state, sched, opts, single, dev, graphs=graphs)

    seconds, _, _ = time_turns(turn, warmup, steps, dev, f"{model_name} {resolution}x{resolution}, batch {batch}")
    census = StepCensus(device=dev)
    for _ in range(CENSUS_STEPS):
        with census():
            turn()
    # Counted after a step: a progressive model samples at the size its last step trained (full here).
    reals = state.stream.images[:batch].float() / 127.5 - 1
    labels = state.stream.labels[:batch]
    flops = step_flops(model, reals, labels, gen, batch) if count_flops else None
    result = dict(model=model_name, resolution=resolution, batch=batch, precision=precision, device=str(dev),
                  steps=steps, img_per_sec=steps * batch / seconds, sec_per_step=seconds / steps,
                  host_syncs_per_step=sum(census.counts.values()) / CENSUS_STEPS,
                  host_wait=census.waited / CENSUS_STEPS / (seconds / steps))
    if dev.type == "cuda":
        result["cuda_syncs_per_step"] = sum(census.cuda_counts.values()) / CENSUS_STEPS
    if flops is not None:
        result["gflop_per_step"] = flops / 1e9
        result["tflop_per_sec"] = flops * steps / seconds / 1e12
        peak = bf16_peak_tflops(dev)
        if peak:
            result["share_of_bf16_peak"] = result["tflop_per_sec"] / peak
    if dev.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if graphs is not None:
        result["cuda_graphs_captured"] = graphs.captures
    if notes:
        result["notes"] = notes
    return result


def time_turns(turn, warmup: int, steps: int, device: torch.device, what: str,
               min_seconds: float = 0.0) -> tuple[float, int, int | None]:
    """Seconds of `steps` calls of `turn` (a turn of the loop's body) after `warmup` untimed ones, the
    device's work finished, and more calls until `min_seconds` have passed (fast steps are timed over
    enough of them to average out a busy machine); returns (seconds, calls timed, the peak memory over
    them: hardware.peak_memory)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in bar_over(range(warmup), f"warm-up ({what})", unit="step"):
        turn()
    sync()
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in bar_over(range(steps), f"timed steps ({what})", unit="step"):
        turn()
    sync()
    timed = steps
    while time.perf_counter() - start < min_seconds:
        turn()
        sync()
        timed += 1
    return time.perf_counter() - start, timed, peak_memory(device)


def plan_run(opts: TrainOptions, explicit: set[str], steps: int = 3, warmup: int = 2,
             min_seconds: float = 2.0) -> tuple[list[str], float]:
    """`train --plan`: the run set up as `train` sets it up (its data, model, augmentation, on its
    device), turns of the loop's body timed in each period of its schedule after `warmup` (`steps`,
    and more until `min_seconds` have passed), and the periodic work timed once; nothing is written.
    Returns the table's lines and the whole run's estimated seconds."""
    started = time.perf_counter()
    opts, _ = run_options(opts, None, explicit, None)
    dev = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    dataset = training_data(opts)
    opts = resolve_augment(opts, len(dataset))
    model, _ = training_model(opts, dataset, None, dev)
    check_batches(model, opts, 1)
    prepare(model, dataset, dev, resumed=False)
    state = RunState(optimizers=model.optimizers(model.schedule(0, opts.batch, opts.resolution)),
                     scalers=make_scalers(opts.precision, dev), generator=torch.Generator(dev).manual_seed(opts.seed),
                     stream=RealStream(dataset, seed=opts.seed, xflip=opts.xflip, device=dev, workers=opts.workers),
                     augmenter=Augmenter(opts.augment, dev, opts.seed, opts.augment_p, opts.ada_target, opts.ada_kimg,
                                         tuple(opts.augment_ops)))
    grid = SampleGrid(model, opts.seed, dev)
    grid_reals = to_float(RealStream(dataset, seed=opts.seed + 1, device=dev).next_batch(len(grid.z))[0])
    startup = time.perf_counter() - started
    single, timed = Dist(), []
    for period in run_periods(model, opts):
        sched = period.schedule
        if sched.stage != state.stage:  # as the loop does: a new stage's optimizers start afresh
            state.optimizers, state.stage = model.optimizers(sched), sched.stage
        state.images_seen = period.start

        def turn() -> None:
            loop_step(model, state, sched, opts, single, dev)

        seconds, turns, peak = time_turns(turn, warmup, steps, dev, period.name, min_seconds)
        timed.append(TimedPeriod(period, seconds / turns, peak))
    costs = time_periodic_work(model, grid, grid_reals, state, opts)
    lines, seconds = plan_lines(opts, dev, timed, startup, costs, f"at least {steps} steps and {min_seconds:g} s", warmup)
    # what the run would warn of at its start (a schedule that ends before the target resolution)
    return lines + [line for line in describe_schedule(model, opts) if line.startswith("warning:")], seconds


def random_images(n: int, channels: int, resolution: int, num_classes: int) -> ImageDataset:
    """n random uint8 images in memory, with labels when the model takes classes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, max(num_classes, 1), (n,), generator=g).tolist() if num_classes else [-1] * n
    return ImageDataset(name="random", entries=[f"random-{i}" for i in range(n)], labels=labels, resolution=resolution,
                        channels=channels, class_names=[str(c) for c in range(num_classes)], images=images)
