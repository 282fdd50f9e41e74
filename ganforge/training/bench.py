"""Timing full training steps (every phase, penalties included) of a fully grown model, outside a run."""

from __future__ import annotations

import time

import torch

from ganforge.hardware import make_scalers, prepare_networks, resolve_device
from ganforge.models import Schedule, StepContext, build_model, model_class
from ganforge.progress import bar_over
from ganforge.training.step import training_step


def bench_training_step(model_name: str, resolution: int, batch: int, precision: str = "fp32", steps: int = 10,
                        warmup: int = 3, device: str = "auto", channels: int = 3, num_classes: int | None = None,
                        model_opts: dict | None = None, channels_last: bool = False, compile: bool = False,
                        count_flops: bool = False) -> dict:
    """img/s of `steps` training steps after `warmup`, with peak GPU memory; random reals (speed only).
    A model that trains on labels is timed with 10 classes unless `num_classes` says otherwise."""
    dev = resolve_device(device)
    if num_classes is None:
        num_classes = 10 if model_class(model_name).trains_on_labels(model_opts or {}) else 0
    model = build_model(model_name, dict(resolution=resolution, channels=channels, num_classes=num_classes,
                                         **(model_opts or {}))).to(dev)
    model, notes = prepare_networks(model, precision, channels_last, compile)
    sched = Schedule(resolution=resolution, batch=batch, alpha=1.0, stage=str(resolution))
    optimizers = model.optimizers(sched)
    scalers = make_scalers(precision, dev)
    gen = torch.Generator(dev).manual_seed(0)
    reals = torch.rand(batch, channels, resolution, resolution, device=dev, generator=gen) * 2 - 1
    if channels_last:
        reals = reals.contiguous(memory_format=torch.channels_last)
    model.prepare_synthetic(batch, dev, gen)  # random stand-ins for what the model's data would give (captions)
    labels = torch.randint(0, max(num_classes, 1), (batch,), device=dev, generator=gen)

    def step(i: int) -> None:
        ctx = StepContext(latents=lambda n: model.sample_latents(n, gen, dev), schedule=sched, step=i,
                          images_seen=i * batch, optimizers=optimizers, generator=gen,
                          indices=torch.arange(batch, device=dev))
        training_step(model, optimizers, scalers, reals, labels, ctx, precision, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in bar_over(range(warmup), f"warm-up ({model_name} {resolution}x{resolution}, batch {batch})", unit="step"):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for i in bar_over(range(steps), "timed steps", unit="step"):
        step(warmup + i)
    sync()
    seconds = time.perf_counter() - start
    # Counted after a step: a progressive model samples at the size its last step trained (full here).
    flops = step_flops(model, reals, labels, gen, batch) if count_flops else None
    result = dict(model=model_name, resolution=resolution, batch=batch, precision=precision, device=str(dev),
                  steps=steps, img_per_sec=steps * batch / seconds, sec_per_step=seconds / steps)
    if flops is not None:
        result["gflop_per_step"] = flops / 1e9
        result["tflop_per_sec"] = flops * steps / seconds / 1e12
    if dev.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if notes:
        result["notes"] = notes
    return result


def step_flops(model, reals: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, batch: int) -> float:
    """FLOPs of one training step = n_G x (G forward) + n_D x (D forward), forwards counted by
    torch.utils.flop_counter at this batch size and (n_G, n_D) = model.step_forwards: each forward
    costs 1 and its backward 2 (SPEC.md: about 4 G + 14 D for a WGAN-GP step, 4 G + 9 D without a
    penalty). The whole step cannot be counted directly: the counter does not follow the double
    backward of gradient penalties."""
    from torch.utils.flop_counter import FlopCounterMode

    n = reals.shape[0]
    ctx = StepContext(latents=lambda k: model.sample_latents(k, gen, reals.device), schedule=None, generator=gen,
                      indices=torch.arange(batch, device=reals.device))
    condition = model.training_condition(labels, ctx)
    z = model.sample_latents(n, gen, reals.device)
    with torch.no_grad(), FlopCounterMode(display=False) as g_count:
        fakes = model.generate(z, condition, ema=False)
    with torch.no_grad(), FlopCounterMode(display=False) as d_count:
        model.discriminate(fakes, condition)
    n_g, n_d = model.step_forwards
    return n_g * g_count.get_total_flops() + n_d * d_count.get_total_flops()
