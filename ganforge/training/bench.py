"""Timing full training steps (every phase, penalties included) of a fully grown model, outside a run."""

from __future__ import annotations

import time

import torch

from ganforge.models import Schedule, StepContext, build_model
from ganforge.training.loop import resolve_device, training_step


def bench_training_step(model_name: str, resolution: int, batch: int, precision: str = "fp32", steps: int = 10,
                        warmup: int = 3, device: str = "auto", channels: int = 3, num_classes: int = 0,
                        model_opts: dict | None = None, channels_last: bool = False) -> dict:
    """img/s of `steps` training steps after `warmup`, with peak GPU memory; random reals (speed only)."""
    dev = resolve_device(device)
    model = build_model(model_name, dict(resolution=resolution, channels=channels, num_classes=num_classes,
                                         **(model_opts or {}))).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sched = Schedule(resolution=resolution, batch=batch, alpha=1.0, stage=str(resolution))
    optimizers = model.optimizers(sched)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    gen = torch.Generator(dev).manual_seed(0)
    reals = torch.rand(batch, channels, resolution, resolution, device=dev, generator=gen) * 2 - 1
    labels = torch.randint(0, max(num_classes, 1), (batch,), device=dev, generator=gen)
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def step(i: int) -> None:
        ctx = StepContext(latents=lambda n: model.sample_latents(n, gen, dev), schedule=sched, step=i,
                          images_seen=i * batch, optimizers=optimizers, generator=gen)
        training_step(model, optimizers, scaler, reals, labels, ctx, precision, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in range(warmup):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync()
    seconds = time.perf_counter() - start
    result = dict(model=model_name, resolution=resolution, batch=batch, precision=precision, device=str(dev),
                  steps=steps, img_per_sec=steps * batch / seconds, sec_per_step=seconds / steps)
    if dev.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return result
