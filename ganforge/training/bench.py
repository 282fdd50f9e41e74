"""Timing the training loop's body (next batch, every phase of the step with its penalties, G's
EMA, the statistics) of a fully grown model on random images, outside a run."""

from __future__ import annotations

import time

import torch

from ganforge.augment import Augmenter
from ganforge.data import ImageDataset, RealStream
from ganforge.hardware import bf16_peak_tflops, make_scalers, prepare_networks, resolve_device
from ganforge.hostsync import StepCensus
from ganforge.models import Schedule, build_model, model_class
from ganforge.progress import bar_over
from ganforge.training.distributed import Dist
from ganforge.training.graphs import WARMUP_STEPS, GraphedSteps
from ganforge.training.loop import RunState, loop_step
from ganforge.training.step import step_flops
from ganforge.training.options import TrainOptions

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

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in bar_over(range(warmup), f"warm-up ({model_name} {resolution}x{resolution}, batch {batch})", unit="step"):
        turn()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in bar_over(range(steps), "timed steps", unit="step"):
        turn()
    sync()
    seconds = time.perf_counter() - start
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


def random_images(n: int, channels: int, resolution: int, num_classes: int) -> ImageDataset:
    """n random uint8 images in memory, with labels when the model takes classes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, max(num_classes, 1), (n,), generator=g).tolist() if num_classes else [-1] * n
    return ImageDataset(name="random", entries=[f"random-{i}" for i in range(n)], labels=labels, resolution=resolution,
                        channels=channels, class_names=[str(c) for c in range(num_classes)], images=images)
