"""One training step, the same in a run and in bench: `training_step` updates each network in turn
by its phase's loss; `device_step`, what a turn of the loop asks of the device, adds G's EMA and the
augmentation's p."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ganforge.data import to_float
from ganforge.hardware import autocast_for
from ganforge.models.base import GanModel, Schedule, StepContext
from ganforge.training.distributed import Dist, average_gradients, rank_slice, reduce_mean
from ganforge.training.options import accumulation_rounds


@dataclass
class StepResult:
    """What one training step gives back, all on the device (no host read within the step)."""

    losses: dict[str, torch.Tensor]  # each phase's loss by phase name, detached (the mean over micro-batches)
    stats: dict[str, torch.Tensor]   # what the model logs, with the augmentation's (means over micro-batches)
    real_scores: torch.Tensor | None = None  # D's score of each real of the batch (ADA's verdicts)

    def finite(self) -> torch.Tensor:
        """Whether every phase's loss is finite, as a device bool: the host reads it when it must."""
        return torch.stack([loss.float() for loss in self.losses.values()]).isfinite().all()


def device_step(model: GanModel, state, sched: Schedule, opts, ddp: Dist, device: torch.device, real_u8: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor | None, beta: float | torch.Tensor) -> StepResult:
    """What a turn of the loop asks of the device: the training step on this batch, G's EMA with
    decay `beta` (a number, or a device tensor in a CUDA graph), and the augmentation's p after D's
    verdicts. `state` is the run's (its optimizers, loss scalers, generator, augmenter, counters)."""
    world = ddp.world_size
    ctx = StepContext(latents=lambda n: rank_slice(model.sample_latents(n * world, state.generator, device), ddp),
                      reduce_mean=lambda t: reduce_mean(t, world), schedule=sched, step=state.step,
                      images_seen=state.images_seen, generator=state.generator, indices=indices,
                      augment=state.augmenter)
    result = training_step(model, state.optimizers, state.scalers, to_float(real_u8), labels, ctx, opts.precision,
                           device, world, accumulation_rounds(sched.batch, world, opts.batch_gpu))
    update_ema(model.G_ema, model.G, beta)
    augmented = state.augmenter.observe(result.real_scores, sched.batch, ctx.reduce_mean)
    return dataclasses.replace(result, stats={**result.stats, **augmented})


def training_step(model: GanModel, optimizers: dict, scalers: dict, reals: torch.Tensor,
                  labels: torch.Tensor, ctx: StepContext, precision: str, device: torch.device,
                  world_size: int = 1, rounds: int = 1) -> StepResult:
    """One step: each phase of the model updates its network with the other frozen (the NNC sample's
    lesson). With `rounds` > 1 each phase accumulates the gradients of that many consecutive
    micro-batches (--batch-gpu) before its update; the losses and logged statistics are their means."""
    condition = model.training_condition(labels, ctx)
    micro = reals.shape[0] // rounds
    losses, stats, real_scores = {}, {}, []
    for phase in model.phases():
        for net in ("G", "D"):
            getattr(model, net).requires_grad_(net == phase.network)
        for p in model.frozen_parameters:  # --freeze-d: no gradient, so no update (training/finetune.py says why)
            p.requires_grad_(False)
        optimizer = optimizers[phase.optimizer]
        optimizer.zero_grad(set_to_none=True)
        scaler = scalers[phase.network]
        for part in (slice(r * micro, (r + 1) * micro) for r in range(rounds)):
            part_ctx = dataclasses.replace(ctx, indices=ctx.indices[part] if ctx.indices is not None else None)
            with autocast_for(precision, device):
                out = model.loss(phase.name, reals[part], condition[part], part_ctx)
            scaler.scale(out.loss / rounds if rounds > 1 else out.loss).backward()
            add_to_mean(losses, phase.name, out.loss.detach(), rounds)
            for key, value in out.stats.items():
                add_to_mean(stats, key, value, rounds)
            if out.real_scores is not None:
                real_scores.append(out.real_scores)
        average_gradients(getattr(model, phase.network), world_size)
        scaler.step(optimizer)
        scaler.update()
    stats.update(model.after_step(stats, ctx, optimizers))
    return StepResult(losses, stats, torch.cat(real_scores) if real_scores else None)


def add_to_mean(means: dict, key: str, value: torch.Tensor, rounds: int) -> None:
    """A micro-batch's share of the mean over `rounds` of them (the value itself when there is one)."""
    share = value / rounds if rounds > 1 else value
    means[key] = means[key] + share if key in means else share


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float | torch.Tensor) -> None:
    ema_params, params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if isinstance(beta, torch.Tensor):  # ema += (1 - beta) (p - ema): lerp would read a tensor weight on the host
        step = torch._foreach_sub(params, ema_params)
        torch._foreach_mul_(step, 1.0 - beta)
        torch._foreach_add_(ema_params, step)
    else:
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def ema_beta(opts, batch: int, images_seen: int, fixed: float | None = None) -> float:
    """EMA decay per step: from a half-life of --ema-kimg, or a model's fixed beta (PGGAN's 0.999).

    The ramp-up bounds the half-life by a fraction of the images seen, so early samples (and short
    runs) are not dominated by the random initial weights; long runs reach the plain decay.
    """
    beta = fixed if fixed is not None else 0.5 ** (batch / (opts.ema_kimg * 1000))
    if opts.ema_rampup is not None:
        beta = min(beta, 0.5 ** (batch / max(images_seen * opts.ema_rampup, 1e-8)))
    return beta


def step_flops(model, reals: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, batch: int) -> float:
    """FLOPs of one training step = n_G x (G forward) + n_D x (D forward), forwards counted by
    torch.utils.flop_counter at this batch size and (n_G, n_D) = model.step_forwards: each forward
    costs 1 and its backward 2 (about 4 G + 14 D for a WGAN-GP step, 4 G + 9 D without a penalty).
    The whole step cannot be counted directly: the counter does not follow the double backward of
    gradient penalties."""
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
