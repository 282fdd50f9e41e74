"""Timing full training steps (every phase, penalties included) of a fully grown model, outside a run."""

from __future__ import annotations

import time

import torch

from ganforge.progress import bar_over

from ganforge.models import Schedule, StepContext, build_model
from ganforge.training.loop import check_precision, make_scalers, resolve_device, training_step


def bench_training_step(model_name: str, resolution: int, batch: int, precision: str = "fp32", steps: int = 10,
                        warmup: int = 3, device: str = "auto", channels: int = 3, num_classes: int = 0,
                        model_opts: dict | None = None, channels_last: bool = False, compile: bool = False,
                        count_flops: bool = False) -> dict:
    """img/s of `steps` training steps after `warmup`, with peak GPU memory; random reals (speed only)."""
    dev = resolve_device(device)
    model = build_model(model_name, dict(resolution=resolution, channels=channels, num_classes=num_classes,
                                         **(model_opts or {}))).to(dev)
    check_precision(model, precision)
    notes = []
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        notes += compile_networks(model)
    sched = Schedule(resolution=resolution, batch=batch, alpha=1.0, stage=str(resolution))
    optimizers = model.optimizers(sched)
    scalers = make_scalers(precision, dev)
    gen = torch.Generator(dev).manual_seed(0)
    reals = torch.rand(batch, channels, resolution, resolution, device=dev, generator=gen) * 2 - 1
    if channels_last:
        reals = reals.contiguous(memory_format=torch.channels_last)
    if model_name == "dfgan":  # random sentence vectors stand in for captions: speed only
        model.caption_emb = torch.randn(batch, model.config["text_dim"], device=dev, generator=gen)
        model.caption_start = torch.arange(batch, device=dev)
        model.caption_count = torch.ones(batch, dtype=torch.long, device=dev)
        model.caption_text_id = torch.arange(batch, device=dev)
        model.own_text_ids = torch.arange(batch, device=dev)[:, None]
    labels = torch.randint(0, max(num_classes, 1), (batch,), device=dev, generator=gen)
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

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
    flops = step_flops(model, reals, labels, gen) if count_flops else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for i in bar_over(range(steps), "timed steps", unit="step"):
        step(warmup + i)
    sync()
    seconds = time.perf_counter() - start
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


def step_flops(model, reals: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> float:
    """FLOPs of one training step = n_G x (G forward) + n_D x (D forward), forwards counted by
    torch.utils.flop_counter at this batch size and (n_G, n_D) = model.step_forwards: each forward
    costs 1 and its backward 2 (SPEC.md: about 4 G + 14 D for a WGAN-GP step, 4 G + 9 D without a
    penalty). The whole step cannot be counted directly: the counter does not follow the double
    backward of gradient penalties."""
    import inspect

    from torch.utils.flop_counter import FlopCounterMode

    n = reals.shape[0]
    z = model.sample_latents(n, gen, reals.device)
    cond = labels if model.num_classes else (model.caption_start[:n] if getattr(model, "caption_emb", None) is not None else None)
    with torch.no_grad(), FlopCounterMode(display=False) as g_count:
        fakes = model.generate(z, cond, ema=False)
    d_args = len(inspect.signature(model.D.forward).parameters)
    extra = model.caption_emb[:n] if getattr(model, "caption_emb", None) is not None else (labels if model.num_classes else None)
    with torch.no_grad(), FlopCounterMode(display=False) as d_count:
        model.D(fakes, extra) if d_args > 1 and extra is not None else model.D(fakes)
    n_g, n_d = model.step_forwards
    return n_g * g_count.get_total_flops() + n_d * d_count.get_total_flops()


def compile_networks(model) -> list[str]:
    """torch.compile the forward of G and D, keeping the modules (and their snapshot keys) as they are.

    A network that a gradient penalty differentiates twice (model.double_backward) stays eager:
    compiled graphs do not support double backward. A network whose forward fails to compile
    falls back to eager on its first call, with a warning.
    """
    import warnings

    notes = []
    for name in ("G", "D"):
        if name in model.double_backward:
            notes.append(f"{name} stays eager: its gradient penalty needs double backward, which compile does not support")
            continue
        net = getattr(model, name)
        eager, compiled = net.forward, torch.compile(net.forward)

        def forward(*args, _net=net, _eager=eager, _compiled=compiled, _name=name, **kwargs):
            try:
                return _compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: run eagerly from now on
                warnings.warn(f"torch.compile failed for {_name}; running it eagerly ({type(e).__name__}: {e})",
                              stacklevel=2)
                _net.forward = _eager
                return _eager(*args, **kwargs)

        net.forward = forward
        notes.append(f"{name} compiled")
    return notes
